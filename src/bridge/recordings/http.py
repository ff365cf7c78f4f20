"""The recordings and voicemail routes: thin reads over the `MediaArchive` (store.py).

    GET    /api/v1/recordings               ?call_id= &line= &user= &since= &until= &limit= &before=
    GET    /api/v1/recordings/{id}          metadata
    GET    /api/v1/recordings/{id}/audio    the WAV (audio/wav, Content-Length, Range)
    GET    /api/v1/voicemails               ?call_id= &line= &user= &group= &since= &until= ...
    GET    /api/v1/voicemails/{id}
    GET    /api/v1/voicemails/{id}/audio
    DELETE /api/v1/voicemails/{id}          204

Who sees what follows the `see_live_calls` row of the role matrix (`directory/roles.py`, from
docs/ROLES.md): a recording or a message is a call's record, seen by whoever may see the call.

    scope (role)            recordings         voicemails               DELETE voicemail
    all (admin, supervisor) every one          every one                any
    visibility (agent)      own; every one     for them / their groups; for them / their groups
                            with `everything`  every one w/ `everything`
    own (rep)               own                for them / their groups  for them / their groups
    read_only (reporter)    every one          every one                403 (read-only)
    own_lines (end_client)  of its lines       of its lines             403 (read-only)
    none (billing_admin)    403                403                      403

"Own" recordings are those whose `users` name the caller (the agent who answered, a
supervisor who joined). A message is "for them" when its `user_id` is theirs, "for their ring
groups" when they are a member (any layer) of its `group_id` now. Who may delete is decided by
the role's own cell (`scope(role, see_live_calls)`: `all` deletes any, `read_only` and
`own_lines` none), not the visibility setting: an agent who sees every message deletes only
their own and their groups'.

A recording or message the caller may not see answers 404 like one that does not exist (ids
are not disclosed), and the attempt is audited (`allowed: false`); a refused delete is a 403
with the reason, audited. Audio downloads and deletions are audited when allowed too. A
recording still `in-progress` or `paused` answers its audio with 409 (served once stopped); a
message still being left is not listed, and its audio and delete answer 409. Errors are
`{"detail": "<reason>"}` (FastAPI's own list for invalid query parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from bridge.directory.model import Directory, User, normalize_number
from bridge.directory.roles import Action, Scope, scope
from bridge.httpauth import Grant, HttpAuth, audit_request
from bridge.recordings.store import (
    RECORDING_ID,
    VOICEMAIL_ID,
    ArchiveError,
    MediaArchive,
    RecordingMeta,
    VoicemailMeta,
    as_utc,
)


class CarrierMedia(Protocol):
    """Fetches a carrier-kept recording's audio (`bridge.carriers.twilio.media`)."""

    async def fetch(self, url: str) -> bytes: ...


class Heard(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    heard: bool = True


__all__ = [
    "may_delete_voicemail",
    "recording_visible",
    "routes",
    "voicemail_visible",
]

_SEE = Action.SEE_LIVE_CALLS
_EVERYTHING = (Scope.ALL, Scope.READ_ONLY)
_READ_ONLY_CELLS = (Scope.READ_ONLY, Scope.OWN_LINES)
_AUDIO_HEADERS = {"Cache-Control": "private, no-store"}


def groups_of(directory: Directory, user_id: str) -> frozenset[str]:
    """The ring groups `user_id` is a member of (any layer)."""
    return frozenset(g.id for g in directory.ring_groups if user_id in set(g.member_ids()))


def recording_visible(grant: Grant, meta: RecordingMeta) -> bool:
    """Whether the grant of `see_live_calls` reaches this recording."""
    if grant.scope in _EVERYTHING:
        return True
    if grant.scope is Scope.OWN_LINES:
        return meta.line is not None and meta.line in grant.user.lines
    if grant.scope is Scope.OWN:
        return grant.user.id in meta.users
    return False


def voicemail_visible(grant: Grant, vm: VoicemailMeta, groups: frozenset[str]) -> bool:
    """Whether the grant of `see_live_calls` reaches this message (`groups`: the caller's)."""
    if grant.scope in _EVERYTHING:
        return True
    if grant.scope is Scope.OWN_LINES:
        return vm.line is not None and vm.line in grant.user.lines
    if grant.scope is Scope.OWN:
        return _for_them(grant.user, vm, groups)
    return False


def _for_them(user: User, vm: VoicemailMeta, groups: frozenset[str]) -> bool:
    return vm.user_id == user.id or (vm.group_id is not None and vm.group_id in groups)


def _read_only(user: User) -> str | None:
    cell = scope(user.role, _SEE)
    if cell in _READ_ONLY_CELLS:
        return f"role {user.role.value!r} has read-only access to voicemail"
    return None


def may_delete_voicemail(user: User, vm: VoicemailMeta, groups: frozenset[str]) -> str | None:
    """None when `user` may delete the message, else the reason for a 403."""
    refusal = _read_only(user)
    if refusal is not None:
        return refusal
    cell = scope(user.role, _SEE)
    if cell is Scope.ALL or (cell is not Scope.NONE and _for_them(user, vm, groups)):
        return None
    return "the message was left for another user or group"


def _not_found(kind: str, item_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no {kind} {item_id!r}")


def routes(
    archive: MediaArchive,
    auth: HttpAuth,
    directory_getter: Callable[[], Directory],
    carrier_media: CarrierMedia | None = None,
) -> APIRouter:
    """The routes, bound to the archive, the daemon's token gate and the directory (for ring
    group membership)."""
    router = APIRouter(prefix="/api/v1")
    see = auth.require(_SEE)

    def deny(request: Request, user: User, action: str, target: str, reason: str) -> None:
        audit_request(request, user, action, allowed=False, target=target, reason=reason)

    # -- recordings --------------------------------------------------------------------------
    def recording_for(request: Request, grant: Grant, recording_id: str, action: str) -> Any:
        meta = archive.recording(recording_id)
        if meta is None:
            raise _not_found("recording", recording_id)
        if not recording_visible(grant, meta):
            reason = f"recording outside the caller's scope ({grant.scope.value})"
            deny(request, grant.user, action, f"recording:{recording_id}", reason)
            raise _not_found("recording", recording_id)
        return meta

    @router.get("/recordings", tags=["recordings"], summary="Call recordings, newest first")
    async def list_recordings(
        call_id: str | None = None,
        line: str | None = Query(None, description="a line's number (E.164)"),
        user: str | None = Query(None, description="a user who took part"),
        since: datetime | None = Query(None, description="started at or after (ISO 8601)"),
        until: datetime | None = Query(None, description="started before (ISO 8601)"),
        limit: int = Query(100, ge=1, le=1000),
        before: str | None = Query(
            None, pattern=RECORDING_ID.pattern, description="older than this id (paging)"
        ),
        grant: Grant = Depends(see),
    ) -> list[dict[str, Any]]:
        found = archive.recordings(
            call_id=call_id,
            line=normalize_number(line) if line else None,
            user=user,
            since=_in_utc(since, "since"),
            until=_in_utc(until, "until"),
            limit=limit,
            before=before,
            where=lambda meta: recording_visible(grant, meta),
        )
        return [meta.to_json() for meta in found]

    @router.get("/recordings/{recording_id}", tags=["recordings"], summary="One recording")
    async def get_recording(
        recording_id: str, request: Request, grant: Grant = Depends(see)
    ) -> dict[str, Any]:
        return recording_for(request, grant, recording_id, "read_recording").to_json()

    @router.get(
        "/recordings/{recording_id}/audio",
        tags=["recordings"],
        summary="A recording's audio (WAV, 8 kHz 16-bit, caller left, other side right)",
        response_class=FileResponse,
        responses={200: {"content": {"audio/wav": {}}}, 409: {"description": "still recording"}},
    )
    async def recording_audio(
        recording_id: str, request: Request, grant: Grant = Depends(see)
    ) -> FileResponse:
        meta = recording_for(request, grant, recording_id, "download_recording")
        if meta.live:
            raise HTTPException(
                status_code=409,
                detail=f"the recording is {meta.status}: its audio is served once it has stopped",
            )
        wav = archive.audio_path(recording_id)
        if wav is None:
            why = f" ({meta.error})" if meta.error else ""
            raise HTTPException(
                status_code=404, detail=f"recording {recording_id!r} has no audio{why}"
            )
        audit_request(
            request, grant.user, "download_recording", allowed=True, target=f"recording:{meta.id}"
        )
        return FileResponse(
            wav,
            media_type="audio/wav",
            filename=f"{meta.id}.wav",
            content_disposition_type="inline",
            headers=_AUDIO_HEADERS,
        )

    # -- voicemails --------------------------------------------------------------------------
    def caller_groups(user: User) -> frozenset[str]:
        return groups_of(directory_getter(), user.id)

    def voicemail_for(request: Request, grant: Grant, voicemail_id: str, action: str) -> Any:
        vm = archive.voicemail(voicemail_id)
        if vm is None:
            raise _not_found("voicemail", voicemail_id)
        if not voicemail_visible(grant, vm, caller_groups(grant.user)):
            reason = f"voicemail outside the caller's scope ({grant.scope.value})"
            deny(request, grant.user, action, f"voicemail:{voicemail_id}", reason)
            raise _not_found("voicemail", voicemail_id)
        return vm

    def not_while_left(vm: VoicemailMeta) -> None:
        if vm.pending:
            raise HTTPException(status_code=409, detail="the message is still being left")

    @router.get("/voicemails", tags=["voicemails"], summary="Voicemail messages, newest first")
    async def list_voicemails(
        call_id: str | None = None,
        line: str | None = Query(None, description="a line's number (E.164)"),
        user: str | None = Query(None, description="left for this user"),
        group: str | None = Query(None, description="left for this ring group"),
        since: datetime | None = Query(None, description="left at or after (ISO 8601)"),
        until: datetime | None = Query(None, description="left before (ISO 8601)"),
        limit: int = Query(100, ge=1, le=1000),
        before: str | None = Query(
            None, pattern=VOICEMAIL_ID.pattern, description="older than this id (paging)"
        ),
        grant: Grant = Depends(see),
    ) -> list[dict[str, Any]]:
        groups = caller_groups(grant.user)
        found = archive.voicemails(
            call_id=call_id,
            line=normalize_number(line) if line else None,
            user=user,
            group=group,
            since=_in_utc(since, "since"),
            until=_in_utc(until, "until"),
            limit=limit,
            before=before,
            where=lambda vm: voicemail_visible(grant, vm, groups),
        )
        return [vm.to_json() for vm in found]

    @router.get("/voicemails/{voicemail_id}", tags=["voicemails"], summary="One message")
    async def get_voicemail(
        voicemail_id: str, request: Request, grant: Grant = Depends(see)
    ) -> dict[str, Any]:
        return voicemail_for(request, grant, voicemail_id, "read_voicemail").to_json()

    @router.get(
        "/voicemails/{voicemail_id}/audio",
        tags=["voicemails"],
        summary="A message's audio (WAV, 8 kHz 16-bit mono)",
        response_class=FileResponse,
        responses={200: {"content": {"audio/wav": {}}}, 409: {"description": "still left"}},
    )
    async def voicemail_audio(
        voicemail_id: str, request: Request, grant: Grant = Depends(see)
    ) -> Response:
        vm = voicemail_for(request, grant, voicemail_id, "download_voicemail")
        not_while_left(vm)
        if vm.source == "carrier":  # the carrier keeps it: fetched now, not stored here
            if carrier_media is None or not vm.remote_url:
                raise HTTPException(
                    status_code=503,
                    detail="this message's audio is at the carrier, and the bridge has no "
                    "carrier credentials to fetch it ([twilio] account_sid, auth_token)",
                )
            try:
                audio = await carrier_media.fetch(vm.remote_url)
            except Exception as exc:
                status = getattr(exc, "status", 502)
                detail = getattr(exc, "reason", str(exc))
                raise HTTPException(status_code=status, detail=f"carrier: {detail}") from None
            audit_request(
                request, grant.user, "download_voicemail", allowed=True, target=f"voicemail:{vm.id}"
            )
            return Response(
                audio,
                media_type="audio/wav",
                headers={
                    **_AUDIO_HEADERS,
                    "Content-Disposition": f'inline; filename="{vm.id}.wav"',
                },
            )
        wav = archive.voicemail_audio_path(voicemail_id)
        if wav is None:
            raise HTTPException(status_code=404, detail=f"voicemail {voicemail_id!r} has no audio")
        audit_request(
            request, grant.user, "download_voicemail", allowed=True, target=f"voicemail:{vm.id}"
        )
        return FileResponse(
            wav,
            media_type="audio/wav",
            filename=f"{vm.id}.wav",
            content_disposition_type="inline",
            headers=_AUDIO_HEADERS,
        )

    @router.post(
        "/voicemails/{voicemail_id}/heard",
        tags=["voicemails"],
        summary='Mark a message heard (or new again: {"heard": false})',
    )
    async def mark_heard(
        voicemail_id: str, request: Request, body: Heard | None = None, grant: Grant = Depends(see)
    ) -> dict[str, Any]:
        target = f"voicemail:{voicemail_id}"
        refusal = _read_only(grant.user)
        if refusal is not None:
            deny(request, grant.user, "mark_voicemail_heard", target, refusal)
            raise HTTPException(status_code=403, detail=refusal)
        vm = voicemail_for(request, grant, voicemail_id, "mark_voicemail_heard")
        not_while_left(vm)
        heard = body.heard if body is not None else True
        marked = archive.mark_heard(vm.id, grant.user.id if heard else None, datetime.now(UTC))
        if marked is None:
            raise _not_found("voicemail", voicemail_id)
        audit_request(
            request, grant.user, "mark_voicemail_heard", allowed=True, target=target, heard=heard
        )
        return marked.to_json()

    @router.delete(
        "/voicemails/{voicemail_id}",
        status_code=204,
        tags=["voicemails"],
        summary="Delete a message (its audio and metadata)",
    )
    async def delete_voicemail(
        voicemail_id: str, request: Request, grant: Grant = Depends(see)
    ) -> Response:
        target = f"voicemail:{voicemail_id}"
        # Permission first: a read-only caller learns nothing of which ids exist.
        refusal = _read_only(grant.user)
        if refusal is not None:
            deny(request, grant.user, "delete_voicemail", target, refusal)
            raise HTTPException(status_code=403, detail=refusal)
        vm = voicemail_for(request, grant, voicemail_id, "delete_voicemail")
        refusal = may_delete_voicemail(grant.user, vm, caller_groups(grant.user))
        if refusal is not None:
            deny(request, grant.user, "delete_voicemail", target, refusal)
            raise HTTPException(status_code=403, detail=refusal)
        not_while_left(vm)
        try:
            deleted = archive.delete_voicemail(voicemail_id)
        except ArchiveError as exc:
            raise HTTPException(
                status_code=500, detail=f"the message could not be deleted: {exc.reason}"
            ) from None
        if not deleted:
            raise _not_found("voicemail", voicemail_id)
        audit_request(request, grant.user, "delete_voicemail", allowed=True, target=target)
        return Response(status_code=204)

    return router


def _in_utc(value: datetime | None, name: str) -> datetime | None:
    """A time filter as the archive compares it, in UTC; 422 naming it when it cannot be
    (0001-01-01T00:00+14:00 is before the first time a datetime holds: converting it raised
    OverflowError, a 500)."""
    if value is None:
        return None
    try:
        return as_utc(value)
    except OverflowError:
        raise HTTPException(422, f"{name}: {value.isoformat()} is out of range") from None
