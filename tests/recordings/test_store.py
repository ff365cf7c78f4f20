"""The media archive on disk: metadata round trip, queries, a restart (a recording cut by a
stop comes back failed with its WAV header repaired), bad sidecars, an unwritable root, ids
that try to leave the root."""

from __future__ import annotations

import dataclasses
import json
import os
import wave
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.calls.media import MediaError
from bridge.recordings.store import (
    CRASHED,
    RECORDING_ID,
    VOICEMAIL_ID,
    ArchiveError,
    MediaArchive,
    RecordingMeta,
    repair_wav,
)
from tests.recordings.helpers import (
    MAIN_LINE,
    SUPPORT_LINE,
    T0,
    at,
    crashed_wav,
    record_call,
    record_message,
    tone,
)


@pytest.fixture
def archive(tmp_path: Path) -> MediaArchive:
    return MediaArchive(tmp_path / "media", clock=lambda: at(30), durable=False)


def started(
    archive: MediaArchive, call_id: str, minutes: float, **kw: object
) -> tuple[RecordingMeta, Path]:
    fields: dict[str, object] = {
        "path": "sip",
        "line": MAIN_LINE,
        "caller": "+15557770001",
        "users": ("alice",),
        "pause_behavior": None,
        "now": at(minutes),
        **kw,
    }
    return archive.new_recording(call_id, **fields)  # type: ignore[arg-type]


def completed(archive: MediaArchive, call_id: str, minutes: float, **kw: object) -> RecordingMeta:
    meta, wav = started(archive, call_id, minutes, **kw)
    record_call(wav, 50)
    return archive.update_recording(
        dataclasses.replace(meta, status="completed", ended_at=at(minutes + 1))
    )


# -- recordings -----------------------------------------------------------------------------
def test_a_recording_round_trip(archive: MediaArchive) -> None:
    meta, wav = started(archive, "CA1", 0, users=("alice", "sam", "alice"))
    assert RECORDING_ID.fullmatch(meta.id)
    assert wav == archive.root / "recordings" / "2026" / "11" / "23" / f"{meta.id}.wav"
    assert meta.file == f"recordings/2026/11/23/{meta.id}.wav"
    assert (meta.status, meta.users, meta.started_at) == ("in-progress", ("alice", "sam"), T0)
    assert (meta.channels, meta.sample_rate) == (2, 8000)
    assert wav.with_suffix(".json").is_file() and not wav.exists()  # the writer creates it
    assert archive.recording(meta.id) == meta

    record_call(wav, 50)  # 1 s
    paused = archive.update_recording(
        dataclasses.replace(meta, status="paused", pause_behavior="silence")
    )
    assert (paused.status, paused.pause_behavior) == ("paused", "silence")
    done = archive.update_recording(
        dataclasses.replace(paused, status="completed", pause_behavior=None, ended_at=at(1))
    )
    assert done.size_bytes == wav.stat().st_size == 44 + 8000 * 4
    assert done.duration_seconds == 1.0
    assert archive.recording(meta.id) == done
    assert archive.audio_path(meta.id) == wav

    data = done.to_json()
    assert data["audio_url"] == f"/api/v1/recordings/{meta.id}/audio"
    assert data["started_at"] == "2026-11-23T15:00:00+00:00"
    assert data["ended_at"] == "2026-11-23T15:01:00+00:00"
    assert data["users"] == ["alice", "sam"]
    assert data["status"] == "completed" and data["error"] is None
    on_disk = json.loads(wav.with_suffix(".json").read_text())
    assert on_disk["status"] == "completed" and on_disk["size_bytes"] == done.size_bytes


def test_an_ended_recording_gets_its_end_and_duration_from_the_file(
    archive: MediaArchive,
) -> None:
    meta, wav = started(archive, "CA1", 0, pause_behavior="skip")
    record_call(wav, 25)
    done = archive.update_recording(dataclasses.replace(meta, status="completed"))
    assert done.ended_at == at(30)  # the archive's clock
    assert done.duration_seconds == 0.5
    assert done.pause_behavior is None


def test_a_failed_start_has_no_audio(archive: MediaArchive) -> None:
    meta, _ = started(archive, "CA1", 0)
    failed = archive.update_recording(
        dataclasses.replace(meta, status="failed", error="no port", ended_at=at(0))
    )
    assert (failed.status, failed.error, failed.size_bytes) == ("failed", "no port", 0)
    assert archive.audio_path(meta.id) is None
    assert archive.recordings() == [failed]


def test_queries_newest_first_with_filters_and_paging(archive: MediaArchive) -> None:
    first = completed(archive, "CA1", 0, users=("alice",))
    second = completed(archive, "CA2", 10, users=("bob", "sam"))
    third = completed(archive, "CA3", 20, line=SUPPORT_LINE, users=("frank",))
    fourth, _ = started(archive, "CA3", 25, line=SUPPORT_LINE, users=("frank", "sam"))
    fourth = archive.recording(fourth.id)
    assert fourth is not None
    assert first.id < second.id < third.id < fourth.id  # ids sort by start time

    ids = lambda found: [m.id for m in found]  # noqa: E731
    assert ids(archive.recordings()) == [fourth.id, third.id, second.id, first.id]
    assert ids(archive.recordings(call_id="CA3")) == [fourth.id, third.id]
    assert ids(archive.recordings(line=MAIN_LINE)) == [second.id, first.id]
    assert ids(archive.recordings(user="sam")) == [fourth.id, second.id]
    assert ids(archive.recordings(since=at(10), until=at(25))) == [third.id, second.id]
    assert ids(archive.recordings(limit=2)) == [fourth.id, third.id]
    assert ids(archive.recordings(limit=2, before=third.id)) == [second.id, first.id]
    assert ids(archive.recordings(where=lambda m: "frank" in m.users)) == [fourth.id, third.id]
    assert archive.recordings(limit=0) == []


def test_ids_in_urls_cannot_leave_the_root(archive: MediaArchive, tmp_path: Path) -> None:
    meta = completed(archive, "CA1", 0)
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    for bad in (
        "../secret",
        "../../secret.wav",
        f"../recordings/2026/11/23/{meta.id}",
        f"{meta.id}/../../secret",
        f"{meta.id}\n",
        meta.id.upper(),
        "",
    ):
        assert archive.recording(bad) is None
        assert archive.audio_path(bad) is None
        assert archive.voicemail(bad) is None
        assert archive.voicemail_audio_path(bad) is None
        assert archive.delete_voicemail(bad) is False
    assert archive.audio_path(meta.id) is not None


# -- restart ---------------------------------------------------------------------------------
def test_a_restart_sees_everything(archive: MediaArchive) -> None:
    done = completed(archive, "CA1", 0, users=("alice", "sam"))
    failed, _ = started(archive, "CA2", 5)
    failed = archive.update_recording(dataclasses.replace(failed, status="failed", error="x"))
    vm, vm_wav = archive.new_voicemail(
        "CA3", caller="+15557770003", line=MAIN_LINE, user_id=None, group_id="sales", now=at(7)
    )
    record_message(vm_wav, 100)
    archive.message_recorded(vm.id, 2.0, "pound")
    saved = archive.voicemail(vm.id)

    again = MediaArchive(archive.root, durable=False)
    report = again.load()
    assert (report.recordings, report.voicemails, report.recovered, report.skipped) == (2, 1, 0, 0)
    assert again.recording(done.id) == done
    assert again.recording(failed.id) == failed
    assert again.voicemail(vm.id) == saved
    assert again.recordings() == archive.recordings()
    assert again.voicemails() == archive.voicemails()


def test_a_recording_cut_by_a_stop_comes_back_failed_and_playable(
    archive: MediaArchive,
) -> None:
    meta, wav = started(archive, "CA1", 0)
    archive.update_recording(dataclasses.replace(meta, status="paused", pause_behavior="skip"))
    stereo = b"".join(tone(t) + tone(t) for t in range(10))  # not interleaved: only bytes
    crashed_wav(wav, 2, stereo + b"\x01\x02")  # a partial last frame too
    with wave.open(str(wav), "rb") as w:  # a crashed header: no audio, 3202 bytes follow
        assert w.getnframes() == 0

    again = MediaArchive(archive.root, durable=False)
    with capture_logs() as logs:
        report = again.load()
    assert report.recovered == 1
    back = again.recording(meta.id)
    assert back is not None
    assert (back.status, back.error, back.pause_behavior) == ("failed", CRASHED, None)
    assert back.ended_at is not None and back.ended_at >= back.started_at
    with wave.open(str(wav), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        assert w.getnframes() == len(stereo) // 4
        assert w.readframes(w.getnframes()) == stereo
    assert back.size_bytes == wav.stat().st_size == 44 + len(stereo)
    assert back.duration_seconds == round(len(stereo) / 4 / 8000, 2)
    assert again.audio_path(meta.id) == wav
    assert any(e["event"] == "recording_cut_by_stop" for e in logs)
    # ... and it stays so: the sidecar says failed now.
    third = MediaArchive(archive.root, durable=False)
    assert third.load().recovered == 0
    assert third.recording(meta.id) == back


def test_a_recording_cut_before_any_audio_is_failed_without_audio(
    archive: MediaArchive,
) -> None:
    meta, _ = started(archive, "CA1", 0)
    again = MediaArchive(archive.root, durable=False)
    again.load()
    back = again.recording(meta.id)
    assert back is not None and (back.status, back.size_bytes) == ("failed", 0)
    assert again.audio_path(meta.id) is None


def test_repair_wav_leaves_a_good_file_alone(tmp_path: Path) -> None:
    wav = tmp_path / "good.wav"
    record_call(wav, 10)
    before = wav.read_bytes()
    info = repair_wav(wav)
    assert info is not None and info.frames == 1600 and info.channels == 2
    assert wav.read_bytes() == before
    assert repair_wav(tmp_path / "missing.wav") is None
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all, not at all" * 3)
    assert repair_wav(tmp_path / "junk.wav") is None


def test_bad_sidecars_are_logged_and_skipped(archive: MediaArchive) -> None:
    good = completed(archive, "CA1", 0)
    folder = archive.root / "recordings" / "2026" / "11" / "23"
    other = "RE" + "0" * 31 + "1"
    record = good.to_record()
    bad = {
        "RE" + "0" * 32 + ".json": b"{ not json",
        "RE" + "1" * 32 + ".json": json.dumps({**record, "id": "RE" + "1" * 32, "kind": "x"}),
        "RE" + "2" * 32 + ".json": json.dumps({**record, "id": "RE" + "2" * 32, "status": "odd"}),
        "RE" + "3" * 32 + ".json": json.dumps({**record, "id": other}),  # not its name
        "RE" + "4" * 32 + ".json": json.dumps(
            {k: v for k, v in record.items() if k != "call_id"} | {"id": "RE" + "4" * 32}
        ),
        "RE" + "5" * 32 + ".json": json.dumps([1, 2]),
        "RE" + "6" * 32 + ".json": b"\xff\xfe",
        "RE" + "7" * 32 + ".json": json.dumps(
            {**record, "id": "RE" + "7" * 32, "started_at": "2026-11-23T15:00:00"}
        ),
        "../../../../voicemails/2026/11/23/VM" + "8" * 32 + ".json": b"[]",
    }
    for name, content in bad.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / f".{good.id}.json.1234.tmp").write_text("{}")  # a write cut by a stop

    again = MediaArchive(archive.root, durable=False)
    with capture_logs() as logs:
        report = again.load()
    assert (report.recordings, report.voicemails, report.skipped) == (1, 0, len(bad))
    assert [m.id for m in again.recordings()] == [good.id]
    warned = [e for e in logs if e["event"].endswith("_sidecar_unreadable")]
    assert len(warned) == len(bad)
    assert all(e["log_level"] == "warning" and e["reason"] for e in warned)
    assert not (folder / f".{good.id}.json.1234.tmp").exists()


def test_a_sidecar_cannot_point_the_audio_elsewhere(archive: MediaArchive, tmp_path: Path) -> None:
    meta = completed(archive, "CA1", 0)
    sidecar = (archive.root / meta.file).with_suffix(".json")
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "file": "../../secret.wav"}))
    again = MediaArchive(archive.root, durable=False)
    again.load()
    assert again.audio_path(meta.id) == archive.root / meta.file


# -- cannot write -----------------------------------------------------------------------------
def test_a_root_that_cannot_be_written_is_an_archive_error(tmp_path: Path) -> None:
    # Tests run as root (chmod stops nothing): a root that is a file cannot hold folders.
    root = tmp_path / "media"
    root.write_text("a file, not a folder")
    archive = MediaArchive(root, durable=False)
    assert archive.load().recordings == 0  # reading does not fail start-up
    with pytest.raises(ArchiveError) as caught:
        started(archive, "CA1", 0)
    assert caught.value.reason and str(root) in str(caught.value)
    with pytest.raises(ArchiveError):
        archive.new_voicemail("CA1", caller=None, line=None, user_id="alice", group_id=None, now=T0)
    with pytest.raises(MediaError):  # the SIP path's MessageStore port
        archive.new_message("CA1", caller=None, line=None, user_id="alice", group_id=None)
    assert archive.recordings() == [] and archive.voicemails(include_pending=True) == []


def test_a_sidecar_that_cannot_be_updated_keeps_the_change_in_memory(
    archive: MediaArchive,
) -> None:
    meta, wav = started(archive, "CA1", 0)
    sidecar = wav.with_suffix(".json")
    sidecar.unlink()
    sidecar.mkdir()  # os.replace onto a folder fails
    with capture_logs() as logs:
        paused = archive.update_recording(
            dataclasses.replace(meta, status="paused", pause_behavior="skip")
        )
    assert paused.status == "paused" and archive.recording(meta.id) == paused
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["media_sidecar_unwritten"]
    assert [p.name for p in wav.parent.iterdir()] == [sidecar.name]  # no temporary file left


def test_an_unknown_recording_is_not_stored(archive: MediaArchive) -> None:
    meta, _ = started(archive, "CA1", 0)
    stranger = dataclasses.replace(meta, id="RE" + "f" * 32)
    with capture_logs() as logs:
        archive.update_recording(stranger)
    assert archive.recording(stranger.id) is None
    assert logs[0]["event"] == "recording_unknown"


# -- voicemails ---------------------------------------------------------------------------
def test_a_voicemail_round_trip_through_the_sip_port(archive: MediaArchive) -> None:
    message_id, wav = archive.new_message(
        "CA9", caller="+15557770009", line=SUPPORT_LINE, user_id=None, group_id="support"
    )
    assert VOICEMAIL_ID.fullmatch(message_id)
    assert wav.parent == archive.root / "voicemails" / "2026" / "11" / "23"  # at(30)
    pending = archive.voicemail(message_id)
    assert pending is not None and pending.pending and pending.recorded_at == at(30)
    assert archive.voicemails() == []  # being left: not listed yet
    assert archive.voicemails(include_pending=True) == [pending]

    record_message(wav, 75)  # 1.5 s
    archive.message_recorded(message_id, 1.5, "silence")
    vm = archive.voicemail(message_id)
    assert vm is not None
    assert (vm.ended_by, vm.duration_seconds, vm.group_id) == ("silence", 1.5, "support")
    assert vm.size_bytes == wav.stat().st_size == 44 + 75 * 320
    assert archive.voicemails() == [vm]
    assert archive.voicemails(group="support") == [vm]
    assert archive.voicemails(user="alice") == []
    assert archive.voicemails(line=SUPPORT_LINE, since=at(30), until=at(31)) == [vm]
    data = vm.to_json()
    assert data["audio_url"] == f"/api/v1/voicemails/{message_id}/audio"
    assert (data["channels"], data["sample_rate"], data["ended_by"]) == (1, 8000, "silence")
    assert archive.voicemail_audio_path(message_id) == wav

    assert archive.delete_voicemail(message_id) is True
    assert not wav.exists() and not wav.with_suffix(".json").exists()
    assert archive.voicemail(message_id) is None and archive.voicemails() == []
    assert archive.delete_voicemail(message_id) is False
    again = MediaArchive(archive.root, durable=False)
    assert again.load().voicemails == 0


def test_voicemails_cut_by_a_stop(archive: MediaArchive) -> None:
    with_audio, wav = archive.new_voicemail(
        "CA1", caller=None, line=MAIN_LINE, user_id="alice", group_id=None, now=at(0)
    )
    crashed_wav(wav, 1, b"".join(tone(t) for t in range(25)))
    without, empty_wav = archive.new_voicemail(
        "CA2", caller=None, line=MAIN_LINE, user_id="alice", group_id=None, now=at(1)
    )
    again = MediaArchive(archive.root, durable=False)
    report = again.load()
    assert (report.voicemails, report.recovered) == (1, 1)
    back = again.voicemail(with_audio.id)
    assert back is not None and (back.ended_by, back.duration_seconds) == ("interrupted", 0.5)
    with wave.open(str(wav), "rb") as w:
        assert (w.getnchannels(), w.getnframes()) == (1, 25 * 160)
    assert again.voicemail(without.id) is None  # nothing to hear: dropped, sidecar removed
    assert not empty_wav.with_suffix(".json").exists()


def test_sidecars_are_written_atomically(
    archive: MediaArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta, wav = started(archive, "CA1", 0)
    before = wav.with_suffix(".json").read_bytes()

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    archive.update_recording(dataclasses.replace(meta, status="paused", pause_behavior="skip"))
    assert wav.with_suffix(".json").read_bytes() == before  # the old content, whole
    assert sorted(p.name for p in wav.parent.iterdir()) == [wav.with_suffix(".json").name]


# -- retention --------------------------------------------------------------------------------
def test_prune_deletes_what_started_before_the_cutoff_but_not_what_is_being_written(
    archive: MediaArchive,
) -> None:
    old = completed(archive, "CA-old", 0)
    new = completed(archive, "CA-new", 600)
    live, _ = started(archive, "CA-live", 1)  # still being written
    vm, vm_wav = archive.new_voicemail(
        "CA-vm", caller="+15557770002", line=MAIN_LINE, user_id="alice", group_id=None, now=at(2)
    )
    record_message(vm_wav, 100)
    archive.message_recorded(vm.id, 2.0, "pound")
    assert archive.prune(at(300)) == (1, 1)
    assert archive.recording(old.id) is None and not (archive.root / old.file).exists()
    assert archive.recording(new.id) is not None and archive.recording(live.id) is not None
    assert archive.voicemail(vm.id) is None and not vm_wav.exists()
    assert MediaArchive(archive.root, durable=False).load().recordings == 2  # gone on disk too
