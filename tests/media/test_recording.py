"""Recording and voicemail files, read back with `wave` and heard by FFT: the caller's tone on
the left, the other side's on the right; `skip` makes the file shorter by the paused time,
`silence` keeps its length with silence there; a file that cannot be made is a RecordingError."""

from __future__ import annotations

import errno
import os
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.media.mixer import TAP_LEFT, TAP_RIGHT, Mixer, plan_for
from bridge.media.recording import RecordingError, RecordingWriter, VoicemailWriter

from .audio import FRAME_BYTES, frames, read_wav, samples, tone, tones_in

CALLER_HZ, AGENT_HZ, SUP_HZ = 440, 1000, 2000
TICK = 0.02


def record(writer: RecordingWriter, left: bytes, right: bytes) -> None:
    for lf, rf in zip(frames(left), frames(right), strict=True):
        writer.write(lf, rf)


def test_caller_left_other_side_right(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    caller, agent = tone(CALLER_HZ, 1.0), tone(AGENT_HZ, 1.0)
    with RecordingWriter(path) as writer:
        record(writer, caller, agent)
        assert writer.duration == pytest.approx(1.0)
    info, (left, right) = read_wav(path)
    assert (info.channels, info.sampwidth, info.rate, info.seconds) == (2, 2, 8000, 1.0)
    assert tones_in(left) == {CALLER_HZ}
    assert tones_in(right) == {AGENT_HZ}
    assert left == caller and right == agent  # plain 16-bit PCM, sample for sample


def test_the_mixer_tap_records_what_the_caller_hears_on_the_right(tmp_path: Path) -> None:
    path = tmp_path / "barge.wav"
    mixer = Mixer(plan_for("c", "a", {"s": "barge", "w": "whisper"}, record=True))
    inputs = {
        "c": list(frames(tone(CALLER_HZ, 1.0))),
        "a": list(frames(tone(AGENT_HZ, 1.0))),
        "s": list(frames(tone(SUP_HZ, 1.0))),
        "w": list(frames(tone(3000, 1.0))),
    }
    with RecordingWriter(path) as writer:
        for i in range(50):
            out = mixer.mix({p: f[i] for p, f in inputs.items()})
            writer.write(out[TAP_LEFT], out[TAP_RIGHT])
    _, (left, right) = read_wav(path)
    candidates = (CALLER_HZ, AGENT_HZ, SUP_HZ, 3000)
    assert tones_in(left, candidates) == {CALLER_HZ}
    assert tones_in(right, candidates) == {AGENT_HZ, SUP_HZ}  # the whisper is not recorded


def _paused_call(path: Path, behavior: str) -> RecordingWriter:
    """1 s of call, 0.5 s paused (the caller reads a card number: 3 kHz), 1 s of call."""
    writer = RecordingWriter(path)
    record(writer, tone(CALLER_HZ, 1.0), tone(AGENT_HZ, 1.0))
    writer.pause(behavior)  # type: ignore[arg-type]
    assert writer.paused == behavior
    record(writer, tone(3000, 0.5), tone(3000, 0.5))
    writer.resume()
    assert writer.paused is None
    record(writer, tone(CALLER_HZ, 1.0), tone(AGENT_HZ, 1.0))
    writer.close()
    return writer


def test_skip_leaves_the_paused_time_out(tmp_path: Path) -> None:
    writer = _paused_call(tmp_path / "skip.wav", "skip")
    info, (left, right) = read_wav(writer.path)
    assert info.seconds == pytest.approx(2.0) == writer.duration
    candidates = (CALLER_HZ, AGENT_HZ, 3000)
    assert tones_in(left, candidates) == {CALLER_HZ}
    assert tones_in(right, candidates) == {AGENT_HZ}


def test_silence_keeps_the_length_with_silence_there(tmp_path: Path) -> None:
    writer = _paused_call(tmp_path / "silence.wav", "silence")
    info, (left, right) = read_wav(writer.path)
    assert info.seconds == pytest.approx(2.5) == writer.duration
    for channel, hz in ((left, CALLER_HZ), (right, AGENT_HZ)):
        x = samples(channel)
        paused = x[8000:12000]
        assert not paused.any()  # digital silence, both channels, for exactly the 0.5 s
        assert x[:8000].any() and x[12000:].any()
        assert x[7990:8000].any() and x[12000:12010].any()  # the call right up to the pause
        before = channel[: 8000 * 2]
        after = channel[12000 * 2 :]
        assert tones_in(before, (CALLER_HZ, AGENT_HZ, 3000)) == {hz}
        assert tones_in(after, (CALLER_HZ, AGENT_HZ, 3000)) == {hz}


def test_a_missing_side_is_silence(tmp_path: Path) -> None:
    path = tmp_path / "one-sided.wav"
    with RecordingWriter(path) as writer:
        for frame in frames(tone(CALLER_HZ, 0.5)):
            writer.write(frame, None)
        writer.write(None, None)
    info, (left, right) = read_wav(path)
    assert info.seconds == pytest.approx(0.52)
    assert tones_in(left) == {CALLER_HZ}
    assert not samples(right).any()


def test_the_file_is_a_valid_wav_while_recording(tmp_path: Path) -> None:
    path = tmp_path / "live.wav"
    writer = RecordingWriter(path, flush_every=1.0)
    info, _ = read_wav(path)
    assert info.frames == 0  # created with its header, readable from the start
    record(writer, tone(CALLER_HZ, 1.5), tone(AGENT_HZ, 1.5))
    info, (left, _) = read_wav(path)
    assert 1.0 <= info.seconds < 1.5  # at most the last second is still in memory
    assert tones_in(left) == {CALLER_HZ}
    writer.close()
    writer.close()  # harmless
    assert read_wav(path)[0].seconds == pytest.approx(1.5)
    with pytest.raises(RecordingError, match="closed"):
        writer.write(bytes(FRAME_BYTES), bytes(FRAME_BYTES))


def test_an_empty_recording_is_a_valid_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    RecordingWriter(path).close()
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (
            2,
            2,
            8000,
            0,
        )


def test_missing_directories_are_made(tmp_path: Path) -> None:
    path = tmp_path / "recordings" / "2026" / "05" / "call.wav"
    RecordingWriter(path).close()
    assert read_wav(path)[0].channels == 2


def test_a_directory_that_cannot_hold_the_file_is_a_recording_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(RecordingError) as refused:
        RecordingWriter(not_a_dir / "call.wav")
    assert refused.value.path == not_a_dir / "call.wav"
    assert not isinstance(refused.value, OSError)
    assert isinstance(refused.value.__cause__, OSError)
    with pytest.raises(RecordingError):
        VoicemailWriter(not_a_dir / "sub" / "vm.wav", max_seconds=10)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_a_recording_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(RecordingError, match="ermission"):
            RecordingWriter(locked / "call.wav")
    finally:
        locked.chmod(0o700)


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    path.write_bytes(b"an earlier recording")
    with pytest.raises(RecordingError, match="exists"):
        RecordingWriter(path)
    assert path.read_bytes() == b"an earlier recording"


def test_a_full_disk_is_a_recording_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = RecordingWriter(tmp_path / "call.wav", flush_every=0.1)
    record(writer, tone(CALLER_HZ, 0.2), tone(AGENT_HZ, 0.2))

    def full(_data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer._file._wav, "writeframes", full)
    with pytest.raises(RecordingError, match="No space left"):
        record(writer, tone(CALLER_HZ, 0.2), tone(AGENT_HZ, 0.2))
    assert writer.closed
    # what was written before the disk filled up is still a readable recording
    monkeypatch.undo()
    info, (left, _) = read_wav(writer.path)
    assert info.seconds == pytest.approx(0.2)
    assert tones_in(left) == {CALLER_HZ}


def test_pause_behaviors_are_checked(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "call.wav") as writer:
        with pytest.raises(ValueError, match="skip, silence"):
            writer.pause("mute")  # type: ignore[arg-type]
        assert writer.paused is None
        writer.pause("silence")
        writer.pause("skip")  # pausing again changes the behavior
        assert writer.paused == "skip"


def test_voicemail_is_the_callers_audio_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "vm" / "message.wav"
    writer = VoicemailWriter(path, max_seconds=2.01)
    accepted = [writer.write(f) for f in frames(tone(CALLER_HZ, 3.0))]
    assert accepted[:100] == [True] * 100
    assert accepted[100] is False and writer.full  # the 101st frame reached 2.01 s (cut)
    assert not any(accepted[101:])
    assert writer.duration == pytest.approx(2.01)
    writer.close()
    info, (mono,) = read_wav(path)
    assert (info.channels, info.sampwidth, info.rate) == (1, 2, 8000)
    assert info.seconds == pytest.approx(2.01)
    assert tones_in(mono) == {CALLER_HZ}
    assert np.array_equal(samples(mono), samples(tone(CALLER_HZ, 3.0))[: round(2.01 * 8000)])


def test_voicemail_ticks_without_audio_are_silence(tmp_path: Path) -> None:
    with VoicemailWriter(tmp_path / "vm.wav", max_seconds=60) as writer:
        assert writer.write(None)
        assert writer.write(tone(CALLER_HZ, TICK))
    info, (mono,) = read_wav(tmp_path / "vm.wav")
    assert info.seconds == pytest.approx(0.04)
    assert not samples(mono)[:160].any() and samples(mono)[160:].any()
    with pytest.raises(ValueError):
        VoicemailWriter(tmp_path / "vm2.wav", max_seconds=0)
