"""The recordings and voicemail API: each role's view (docs/recordings.md), the audio as WAV,
the delete rules, ids that try to leave the archive, and the audit of every refusal.

A minimal app: the feature's router behind the real `HttpAuth`, on the demo directory plus
cleo the end client (tests/api/helpers.py)."""

from __future__ import annotations

import dataclasses
import io
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from bridge.directory.loader import build_directory
from bridge.directory.model import Directory
from bridge.httpauth import HttpAuth
from bridge.observability.metrics import Metrics
from bridge.recordings.http import routes
from bridge.recordings.store import MediaArchive, RecordingMeta, VoicemailMeta
from bridge.tokens import TokenService
from tests.api.helpers import demo_with_end_client
from tests.recordings.helpers import (
    MAIN_LINE,
    SUPPORT_LINE,
    at,
    record_call,
    record_message,
    tone,
)

API = "/api/v1"


@dataclass
class World:
    client: TestClient
    archive: MediaArchive
    tokens: TokenService
    rec: dict[str, RecordingMeta]
    vm: dict[str, VoicemailMeta]

    def get(self, user: str, url: str, **kw: Any) -> Any:
        return self.call(user, "GET", url, **kw)

    def call(self, user: str, method: str, url: str, **kw: Any) -> Any:
        headers = {**kw.pop("headers", {}), "Authorization": f"Bearer {self.tokens.issue(user)}"}
        return self.client.request(method, url, headers=headers, **kw)


def _recording(
    archive: MediaArchive, call_id: str, minutes: float, line: str, users: tuple[str, ...]
) -> RecordingMeta:
    meta, wav = archive.new_recording(
        call_id, path="sip", line=line, caller="+15557770001", users=users, now=at(minutes)
    )
    record_call(wav, 50)
    return archive.update_recording(dataclasses.replace(meta, status="completed"))


def _voicemail(
    archive: MediaArchive,
    minutes: float,
    line: str,
    user_id: str | None = None,
    group_id: str | None = None,
) -> VoicemailMeta:
    vm, wav = archive.new_voicemail(
        f"CV{minutes}", caller="+15557770002", line=line, user_id=user_id, group_id=group_id,
        now=at(minutes),
    )  # fmt: skip
    record_message(wav, 25)
    archive.message_recorded(vm.id, 0.5, "pound")
    saved = archive.voicemail(vm.id)
    assert saved is not None
    return saved


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    archive = MediaArchive(tmp_path / "media", clock=lambda: at(60), durable=False)
    rec = {
        "alice": _recording(archive, "CA1", 0, MAIN_LINE, ("alice",)),
        "bob_sam": _recording(archive, "CA2", 1, MAIN_LINE, ("bob", "sam")),
        "frank": _recording(archive, "CA3", 2, SUPPORT_LINE, ("frank",)),
    }
    live, wav = archive.new_recording(
        "CA4", path="sip", line=SUPPORT_LINE, caller=None, users=("erin",), now=at(3)
    )
    wav.write_bytes(b"")  # the writer has it open
    rec["live"] = live
    vm = {
        "alice": _voicemail(archive, 10, MAIN_LINE, user_id="alice"),
        "sales": _voicemail(archive, 11, MAIN_LINE, group_id="sales"),
        "support": _voicemail(archive, 12, SUPPORT_LINE, group_id="support"),
        "closed": _voicemail(archive, 13, SUPPORT_LINE),  # closed hours: the line's
    }
    directory: Directory = build_directory(demo_with_end_client(), version=1)
    tokens = TokenService("test-secret-" * 4)
    auth = HttpAuth(tokens, lambda: directory, Metrics())
    app = FastAPI()
    app.include_router(routes(archive, auth, lambda: directory))
    with TestClient(app) as client:
        yield World(client, archive, tokens, rec, vm)


def audits(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "audit"]


# -- who sees what ------------------------------------------------------------------------------
ALL_RECORDINGS = {"alice", "bob_sam", "frank", "live"}
ALL_VOICEMAILS = {"alice", "sales", "support", "closed"}
VIEWS = {
    "olivia": (ALL_RECORDINGS, ALL_VOICEMAILS),  # admin
    "sam": (ALL_RECORDINGS, ALL_VOICEMAILS),  # supervisor
    "alice": ({"alice"}, {"alice", "sales"}),  # agent, owned_only; sales member
    "carol": (set(), {"sales", "support"}),  # agent in both groups, in no recording
    "erin": (ALL_RECORDINGS, ALL_VOICEMAILS),  # agent with call_visibility: everything
    "frank": ({"frank"}, {"support"}),  # rep
    "rita": (ALL_RECORDINGS, ALL_VOICEMAILS),  # reporter (read-only)
    "cleo": ({"frank", "live"}, {"support", "closed"}),  # end client of the support line
}


@pytest.mark.parametrize("user", sorted(VIEWS))
def test_each_role_sees_its_recordings_and_voicemails(world: World, user: str) -> None:
    recordings, voicemails = VIEWS[user]
    listed = world.get(user, f"{API}/recordings")
    assert listed.status_code == 200, listed.text
    expected = sorted((world.rec[k] for k in recordings), key=lambda m: m.id, reverse=True)
    assert [r["id"] for r in listed.json()] == [m.id for m in expected]  # newest first
    names = {v.id: k for k, v in world.vm.items()}
    listed = world.get(user, f"{API}/voicemails")
    assert listed.status_code == 200, listed.text
    assert {names[v["id"]] for v in listed.json()} == voicemails

    for key, meta in world.rec.items():
        one = world.get(user, f"{API}/recordings/{meta.id}")
        assert one.status_code == (200 if key in recordings else 404), (key, one.text)
    for key, vm in world.vm.items():
        one = world.get(user, f"{API}/voicemails/{vm.id}")
        assert one.status_code == (200 if key in voicemails else 404), (key, one.text)


def test_billing_admin_is_refused_and_audited(world: World) -> None:
    with capture_logs() as logs:
        for url in (
            f"{API}/recordings",
            f"{API}/recordings/{world.rec['alice'].id}",
            f"{API}/recordings/{world.rec['alice'].id}/audio",
            f"{API}/voicemails",
            f"{API}/voicemails/{world.vm['alice'].id}/audio",
        ):
            answer = world.get("bill", url)
            assert answer.status_code == 403
            assert answer.json() == {"detail": "role 'billing_admin' may not see live calls"}
        refused = world.call("bill", "DELETE", f"{API}/voicemails/{world.vm['alice'].id}")
        assert refused.status_code == 403
    entries = audits(logs)
    assert len(entries) == 6
    assert all(e["actor"] == "bill" and e["allowed"] is False for e in entries)
    assert world.archive.voicemail(world.vm["alice"].id) is not None


def test_a_token_is_needed(world: World) -> None:
    assert world.client.get(f"{API}/recordings").status_code == 401
    assert world.client.get(f"{API}/voicemails/{world.vm['alice'].id}/audio").status_code == 401


def test_a_recording_out_of_sight_is_a_404_audited(world: World) -> None:
    other = world.rec["bob_sam"].id
    with capture_logs() as logs:
        assert world.get("alice", f"{API}/recordings/{other}").status_code == 404
        answer = world.get("alice", f"{API}/recordings/{other}/audio")
        missing = world.get("alice", f"{API}/recordings/RE{'0' * 32}")
    assert answer.status_code == 404
    assert answer.json() == {"detail": f"no recording {other!r}"}
    assert missing.json() == {"detail": f"no recording 'RE{'0' * 32}'"}  # the same answer
    entries = audits(logs)
    assert [(e["action"], e["allowed"], e["target"]) for e in entries] == [
        ("read_recording", False, f"recording:{other}"),
        ("download_recording", False, f"recording:{other}"),
    ]
    assert entries[0]["actor"] == "alice" and entries[0]["path"] == f"{API}/recordings/{other}"
    assert "own" in entries[0]["reason"]


def test_list_filters(world: World) -> None:
    def ids(url: str, user: str = "olivia") -> list[str]:
        answer = world.get(user, url)
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()]

    rec = world.rec
    assert ids(f"{API}/recordings?call_id=CA2") == [rec["bob_sam"].id]
    # "+" in a query is a space unless encoded: either way it is the line.
    for line in ("%2B15550100", "+15550100", "15550100"):
        assert ids(f"{API}/recordings?line={line}") == [rec["bob_sam"].id, rec["alice"].id]
    assert ids(f"{API}/recordings?user=sam") == [rec["bob_sam"].id]
    assert ids(f"{API}/recordings?user=bob", user="alice") == []  # within what alice sees
    since, until = at(1).isoformat(), at(3).isoformat()
    window = f"since={since.replace('+', '%2B')}&until={until.replace('+', '%2B')}"
    assert ids(f"{API}/recordings?{window}") == [rec["frank"].id, rec["bob_sam"].id]
    assert ids(f"{API}/recordings?since=2026-11-23T15:02:00Z") == [rec["live"].id, rec["frank"].id]
    assert ids(f"{API}/recordings?limit=1") == [rec["live"].id]
    assert ids(f"{API}/recordings?limit=2&before={rec['frank'].id}") == [
        rec["bob_sam"].id,
        rec["alice"].id,
    ]
    assert ids(f"{API}/voicemails?group=sales") == [world.vm["sales"].id]
    assert ids(f"{API}/voicemails?user=alice&line=%2B15550100") == [world.vm["alice"].id]
    # (the last two are before/after the times a datetime holds once in UTC: a 500 before)
    edges = ("since=0001-01-01T00:00:00%2B14:00", "until=9999-12-31T23:59:59-14:00")
    for bad in ("limit=0", "limit=5000", "before=../x", "since=yesterday", *edges):
        assert world.get("olivia", f"{API}/recordings?{bad}").status_code == 422, bad
        assert world.get("olivia", f"{API}/voicemails?{bad}").status_code == 422, bad


def test_recording_metadata(world: World) -> None:
    meta = world.rec["alice"]
    data = world.get("alice", f"{API}/recordings/{meta.id}").json()
    assert data == meta.to_json()
    assert data["status"] == "completed" and data["duration_seconds"] == 1.0
    assert data["audio_url"] == f"{API}/recordings/{meta.id}/audio"
    assert data["users"] == ["alice"] and data["line"] == MAIN_LINE


# -- audio -----------------------------------------------------------------------------------
def test_the_audio_is_a_wav_with_the_right_frames(world: World) -> None:
    meta = world.rec["alice"]
    with capture_logs() as logs:
        answer = world.get("alice", f"{API}/recordings/{meta.id}/audio")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "audio/wav"
    assert int(answer.headers["content-length"]) == len(answer.content) == meta.size_bytes
    assert answer.headers["content-disposition"].startswith("inline")
    assert "no-store" in answer.headers["cache-control"]
    with wave.open(io.BytesIO(answer.content), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        assert w.getnframes() == 8000
        frames = w.readframes(8000)
    left = b"".join(frames[i : i + 2] for i in range(0, len(frames), 4))
    right = b"".join(frames[i + 2 : i + 4] for i in range(0, len(frames), 4))
    assert left == b"".join(tone(t) for t in range(50))  # the caller
    assert right == bytes(len(right))  # the other side said nothing
    entries = audits(logs)
    assert [(e["action"], e["allowed"]) for e in entries] == [("download_recording", True)]


def test_the_audio_supports_ranges(world: World) -> None:
    meta = world.rec["frank"]
    whole = world.get("frank", f"{API}/recordings/{meta.id}/audio").content
    part = world.get("frank", f"{API}/recordings/{meta.id}/audio", headers={"Range": "bytes=0-43"})
    assert part.status_code == 206
    assert part.content == whole[:44] and part.content.startswith(b"RIFF")
    assert part.headers["content-range"] == f"bytes 0-43/{len(whole)}"


def test_a_recording_in_progress_answers_409(world: World) -> None:
    live = world.rec["live"]
    answer = world.get("olivia", f"{API}/recordings/{live.id}/audio")
    assert answer.status_code == 409
    assert "in-progress" in answer.json()["detail"]
    paused = world.archive.update_recording(
        dataclasses.replace(live, status="paused", pause_behavior="skip")
    )
    answer = world.get("olivia", f"{API}/recordings/{paused.id}/audio")
    assert answer.status_code == 409 and "paused" in answer.json()["detail"]


def test_a_failed_recording_without_audio_is_a_404_with_the_reason(world: World) -> None:
    meta, _ = world.archive.new_recording(
        "CA5", path="sip", line=MAIN_LINE, caller=None, users=("alice",), now=at(5)
    )
    world.archive.update_recording(dataclasses.replace(meta, status="failed", error="disk full"))
    answer = world.get("alice", f"{API}/recordings/{meta.id}/audio")
    assert answer.status_code == 404 and "disk full" in answer.json()["detail"]


def test_voicemail_audio(world: World) -> None:
    vm = world.vm["sales"]
    answer = world.get("alice", f"{API}/voicemails/{vm.id}/audio")
    assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(answer.content), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (1, 8000, 25 * 160)
        assert w.readframes(25 * 160) == b"".join(tone(t, 440.0) for t in range(25))


def test_ids_that_try_to_leave_the_archive_are_404(world: World, tmp_path: Path) -> None:
    (tmp_path / "secret.wav").write_bytes(b"RIFF secret")
    meta = world.rec["alice"]
    for kind in ("recordings", "voicemails"):
        for bad in (
            "..%2F..%2Fsecret",
            "%2E%2E",
            "..%2Fsecret.wav",
            f"{meta.id}%2F..%2F..%2F..%2F..%2F..%2Fsecret",
            "RE..%2F..%2F..",
            f"{meta.id}%00",
        ):
            for suffix in ("", "/audio"):
                answer = world.get("olivia", f"{API}/{kind}/{bad}{suffix}")
                assert answer.status_code == 404, (kind, bad, suffix, answer.text)
                assert not answer.content.startswith(b"RIFF")
            deleted = world.call("olivia", "DELETE", f"{API}/{kind}/{bad}")
            assert deleted.status_code in (404, 405)
    assert (tmp_path / "secret.wav").exists()


# -- voicemail delete ---------------------------------------------------------------------------
def _delete(world: World, user: str, key: str) -> Any:
    return world.call(user, "DELETE", f"{API}/voicemails/{world.vm[key].id}")


@pytest.mark.parametrize(("user", "key"), [("rita", "alice"), ("cleo", "support")])
def test_read_only_roles_cannot_delete(world: World, user: str, key: str) -> None:
    with capture_logs() as logs:
        answer = _delete(world, user, key)
        unknown = world.call(user, "DELETE", f"{API}/voicemails/VM{'0' * 32}")
    assert answer.status_code == unknown.status_code == 403  # no id is disclosed
    assert "read-only" in answer.json()["detail"]
    entries = audits(logs)
    assert [(e["action"], e["allowed"], e["actor"]) for e in entries] == [
        ("delete_voicemail", False, user),
        ("delete_voicemail", False, user),
    ]
    assert world.archive.voicemail(world.vm[key].id) is not None


def test_a_message_for_someone_else_cannot_be_deleted(world: World) -> None:
    with capture_logs() as logs:
        unseen = _delete(world, "frank", "alice")  # not his: not even visible
        seen = _delete(world, "erin", "alice")  # erin sees every message, deletes her own
        erin_group = _delete(world, "erin", "closed")  # the line's, no group: not hers
    assert unseen.status_code == 404
    assert seen.status_code == erin_group.status_code == 403
    assert seen.json() == {"detail": "the message was left for another user or group"}
    entries = audits(logs)
    assert [(e["actor"], e["action"], e["allowed"]) for e in entries] == [
        ("frank", "delete_voicemail", False),
        ("erin", "delete_voicemail", False),
        ("erin", "delete_voicemail", False),
    ]
    assert all(e["target"].startswith("voicemail:VM") for e in entries)
    assert world.archive.voicemail(world.vm["alice"].id) is not None


@pytest.mark.parametrize(
    ("user", "key"),
    [
        ("alice", "alice"),  # left for her
        ("alice", "sales"),  # for a group she is in
        ("frank", "support"),  # a rep, for his group
        ("sam", "closed"),  # a supervisor: any
        ("olivia", "support"),  # an admin: any
    ],
)
def test_who_may_delete(world: World, user: str, key: str) -> None:
    vm = world.vm[key]
    wav = world.archive.root / vm.file
    with capture_logs() as logs:
        answer = _delete(world, user, key)
    assert answer.status_code == 204 and answer.content == b""
    assert not wav.exists() and not wav.with_suffix(".json").exists()
    assert world.get(user, f"{API}/voicemails/{vm.id}").status_code == 404
    assert vm.id not in [v["id"] for v in world.get("olivia", f"{API}/voicemails").json()]
    assert [(e["action"], e["allowed"], e["target"]) for e in audits(logs)] == [
        ("delete_voicemail", True, f"voicemail:{vm.id}")
    ]
    assert _delete(world, user, key).status_code == 404


def test_a_message_being_left_is_not_listed_and_not_served(world: World) -> None:
    message_id, _ = world.archive.new_message(
        "CA7", caller=None, line=MAIN_LINE, user_id="alice", group_id=None
    )
    listed = [v["id"] for v in world.get("alice", f"{API}/voicemails").json()]
    assert message_id not in listed
    one = world.get("alice", f"{API}/voicemails/{message_id}")
    assert one.status_code == 200 and one.json()["ended_by"] is None
    assert world.get("alice", f"{API}/voicemails/{message_id}/audio").status_code == 409
    assert world.call("alice", "DELETE", f"{API}/voicemails/{message_id}").status_code == 409


# -- voicemail heard ----------------------------------------------------------------------------
def test_a_message_is_marked_heard_by_who_heard_it_and_new_again(world: World) -> None:
    vm = world.vm["sales"]
    assert world.get("alice", f"{API}/voicemails/{vm.id}").json()["heard"] is False
    with capture_logs() as logs:
        marked = world.call("alice", "POST", f"{API}/voicemails/{vm.id}/heard")
    assert marked.status_code == 200, marked.text
    body = marked.json()
    assert body["heard"] is True and body["heard_by"] == "alice" and body["heard_at"]
    [entry] = audits(logs)
    assert (entry["action"], entry["allowed"], entry["target"]) == (
        "mark_voicemail_heard",
        True,
        f"voicemail:{vm.id}",
    )
    # everyone who sees it sees it heard, and it stays so after a restart
    assert world.get("carol", f"{API}/voicemails/{vm.id}").json()["heard_by"] == "alice"
    again = MediaArchive(world.archive.root, durable=False)
    again.load()
    assert again.voicemail(vm.id).heard_by == "alice"  # type: ignore[union-attr]
    unmarked = world.call("carol", "POST", f"{API}/voicemails/{vm.id}/heard", json={"heard": False})
    assert unmarked.json()["heard"] is False and unmarked.json()["heard_by"] is None
    # not theirs: 404 (no id disclosed); read-only roles: 403
    assert world.call("frank", "POST", f"{API}/voicemails/{vm.id}/heard").status_code == 404
    assert world.call("rita", "POST", f"{API}/voicemails/{vm.id}/heard").status_code == 403
    bad = world.call("alice", "POST", f"{API}/voicemails/{vm.id}/heard", json={"heard": "yes"})
    assert bad.status_code == 422


# -- messages the carrier recorded ----------------------------------------------------------------
class StubCarrier:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.asked.append(url)
        if url.endswith("RE-gone"):
            from bridge.carriers.twilio.media import CarrierMediaError

            raise CarrierMediaError("the carrier has no such recording (deleted?)", 404)
        return b"RIFF-carrier-audio"


def test_a_carrier_message_is_listed_like_the_others_and_its_audio_fetched(
    tmp_path: Path,
) -> None:
    archive = MediaArchive(tmp_path / "media", clock=lambda: at(60), durable=False)
    kept = dict(caller="+15557770009", line=MAIN_LINE, user_id=None, group_id="sales", now=at(20))
    vm = archive.carrier_voicemail(
        "CA9", recording_sid="RE1", url="https://carrier/RE1", duration_seconds=9, **kept
    )
    again = archive.carrier_voicemail(
        "CA9", recording_sid="RE1", url="https://carrier/RE1", duration_seconds=9, **kept
    )
    gone = archive.carrier_voicemail(
        "CA8", recording_sid="RE2", url="https://carrier/RE-gone", duration_seconds=3, **kept
    )
    assert again.id == vm.id  # the callback twice: one message
    directory: Directory = build_directory(demo_with_end_client(), version=1)
    tokens = TokenService("test-secret-" * 4)
    auth = HttpAuth(tokens, lambda: directory, Metrics())
    carrier = StubCarrier()
    for media in (carrier, None):
        app = FastAPI()
        app.include_router(routes(archive, auth, lambda: directory, media))
        with TestClient(app) as client:
            world = World(client, archive, tokens, {}, {})
            listed = world.get("alice", f"{API}/voicemails").json()  # alice is in sales
            [shown] = [m for m in listed if m["id"] == vm.id]
            assert (shown["source"], shown["recording_sid"], shown["duration_seconds"]) == (
                "carrier",
                "RE1",
                9.0,
            )
            assert "remote_url" not in shown  # the carrier's URL is not handed out
            audio = world.get("alice", f"{API}/voicemails/{vm.id}/audio")
            if media is None:
                assert audio.status_code == 503 and "carrier" in audio.json()["detail"]
                continue
            assert audio.status_code == 200 and audio.content == b"RIFF-carrier-audio"
            assert audio.headers["content-type"] == "audio/wav"
            missing = world.get("alice", f"{API}/voicemails/{gone.id}/audio")
            assert missing.status_code == 404 and "carrier:" in missing.json()["detail"]
            assert world.get("frank", f"{API}/voicemails/{vm.id}/audio").status_code == 404
    assert carrier.asked == ["https://carrier/RE1", "https://carrier/RE-gone"]
    # it survives a restart, and deleting it removes it from the list (the carrier keeps its own)
    reloaded = MediaArchive(archive.root, durable=False)
    reloaded.load()
    assert reloaded.voicemail(vm.id) == archive.voicemail(vm.id)
    assert archive.delete_voicemail(vm.id) and archive.voicemail(vm.id) is None
