"""The control endpoints: thin routes over the daemon's `ControlService` (control/plugin.py).

    POST   /api/v1/calls/{call_id}/monitor    {"mode": "listen"|"whisper"|"barge", "via": ...}
    PATCH  /api/v1/calls/{call_id}/monitor    {"mode": ...}
    DELETE /api/v1/calls/{call_id}/monitor
    POST   /api/v1/calls/{call_id}/recording  {"action": ..., "pause_behavior": ...}

The caller's token says who acts; the service checks the role and permissions, the call and
its state, audits every attempt, and answers with a `ControlError` value on refusal, whose
kind is mapped here (and only here) to its HTTP status, with the reason as `detail`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response

from bridge.control.errors import ControlError, ControlErrorKind
from bridge.control.schemas import MonitorChange, MonitorRequest, RecordingRequest
from bridge.control.service import ControlService
from bridge.directory.model import User
from bridge.httpauth import HttpAuth

STATUS = {
    ControlErrorKind.INVALID: 422,
    ControlErrorKind.NOT_ALLOWED: 403,
    ControlErrorKind.NOT_FOUND: 404,
    ControlErrorKind.NOT_POSSIBLE: 409,  # not now, or not on this call (a SIP call for now)
    ControlErrorKind.UPSTREAM_FAILED: 502,
    ControlErrorKind.UNAVAILABLE: 503,
}


def _http(error: ControlError) -> HTTPException:
    return HTTPException(status_code=STATUS[error.kind], detail=error.reason)


def routes(service: ControlService, auth: HttpAuth) -> APIRouter:
    """The control routes, bound to the control service and the daemon's token gate."""
    router = APIRouter(prefix="/api/v1/calls", tags=["calls"])

    @router.post(
        "/{call_id}/monitor",
        status_code=201,
        summary="Listen, whisper or barge into a live call (conference mode)",
    )
    async def start_monitor(
        call_id: str,
        body: MonitorRequest,
        user: User = Depends(auth.current_user),
    ) -> dict[str, Any]:
        try:
            return await service.monitor(user, call_id, body.mode, body.via, origin="http")
        except ControlError as exc:
            raise _http(exc) from None

    @router.patch("/{call_id}/monitor", summary="Switch the monitoring mode live")
    async def change_monitor(
        call_id: str, body: MonitorChange, user: User = Depends(auth.current_user)
    ) -> dict[str, Any]:
        try:
            return await service.change_monitor(user, call_id, body.mode, body.via, origin="http")
        except ControlError as exc:
            raise _http(exc) from None

    @router.delete("/{call_id}/monitor", status_code=204, summary="Stop monitoring a call")
    async def stop_monitor(call_id: str, user: User = Depends(auth.current_user)) -> Response:
        try:
            await service.stop_monitor(user, call_id, origin="http")
        except ControlError as exc:
            raise _http(exc) from None
        return Response(status_code=204)

    @router.post(
        "/{call_id}/recording", summary="Start, pause, resume or stop the call's recording"
    )
    async def recording(
        call_id: str,
        body: RecordingRequest,
        user: User = Depends(auth.current_user),
    ) -> dict[str, Any]:
        try:
            return await service.recording(
                user, call_id, body.action, body.pause_behavior, origin="http"
            )
        except ControlError as exc:
            raise _http(exc) from None

    return router
