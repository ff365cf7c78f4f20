"""Prompts heard as audio: a WAV of any rate and layout comes out as 8 kHz mono holding the same
tones for the same time (and nothing folded into the voice band); a bad file is a PromptError
and, as a setting, the stock prompt with a warning; espeak-ng speech is audible voice, rendered
once and then served from the cache; the stock prompts ship in the package; the beep is its
tone without clipping; the silence detector ends a message only after speech then silence."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import wave
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from bridge.media import prompts
from bridge.media.prompts import (
    STOCK_TEXT,
    Prompt,
    PromptError,
    SilenceDetector,
    beep,
    load_wav,
    resolve_prompt,
    resolve_prompt_async,
    speak,
    speak_async,
    stock,
)

from .audio import (
    AMPLITUDE,
    FRAME_BYTES,
    SILENT,
    dominant,
    frames,
    level_at,
    read_wav,
    rms_db,
    samples,
    silence,
    tone,
    tones_in,
)

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(
    ESPEAK is None and os.environ.get("CI") != "true",
    reason="espeak-ng (Debian espeak-ng) is not installed",
)
TONE_DB = -12.0  # the level of a default `tone`
SAID = "Please leave a message after the tone."


def write_wav(path: Path, pcm: bytes, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def stereo(left: bytes, right: bytes) -> bytes:
    both = np.empty(2 * (len(left) // 2), dtype="<i2")
    both[0::2] = np.frombuffer(left, dtype="<i2")
    both[1::2] = np.frombuffer(right, dtype="<i2")
    return both.tobytes()


def band_fraction(pcm: bytes, low: float, high: float) -> float:
    """The share of the signal's energy between `low` and `high` Hz (at 8 kHz)."""
    power = np.abs(np.fft.rfft(samples(pcm))) ** 2
    freqs = np.fft.rfftfreq(len(pcm) // 2, 1 / 8000)
    return float(power[(freqs >= low) & (freqs <= high)].sum() / power.sum())


# --- Prompt --------------------------------------------------------------------------------


def test_frames_are_20ms_and_the_last_is_padded_with_silence() -> None:
    pcm = tone(1000, 0.05)  # 400 samples: two whole frames and 80 samples
    prompt = Prompt(pcm, "t")
    out = list(prompt.frames())
    assert [len(f) for f in out] == [FRAME_BYTES] * 3
    assert b"".join(out)[: len(pcm)] == pcm
    assert out[-1][len(pcm) - 2 * FRAME_BYTES :] == bytes(3 * FRAME_BYTES - len(pcm))
    assert prompt.seconds == pytest.approx(0.05)
    assert list(Prompt(tone(1000, 0.04), "t").frames()) == list(frames(tone(1000, 0.04)))
    assert list(Prompt(b"", "empty").frames()) == []
    with pytest.raises(ValueError):
        Prompt(b"\x00\x00\x00", "odd")


# --- WAV files -----------------------------------------------------------------------------


def test_48k_stereo_comes_out_8k_mono_with_the_same_tone_and_duration(tmp_path: Path) -> None:
    one_k = tone(1000, 2.0, rate=48000)
    path = write_wav(tmp_path / "hd.wav", stereo(one_k, one_k), 48000, channels=2)
    prompt = load_wav(path)
    assert prompt.seconds == pytest.approx(2.0)
    assert tones_in(prompt.pcm) == {1000}
    assert dominant(prompt.pcm, threshold=-60) == {1000}
    assert level_at(prompt.pcm, 1000) == pytest.approx(TONE_DB, abs=0.5)
    assert prompt.name == str(path)


def test_stereo_channels_are_mixed(tmp_path: Path) -> None:
    left, right = tone(440, 1.0, rate=44100), tone(2000, 1.0, rate=44100)
    prompt = load_wav(write_wav(tmp_path / "two.wav", stereo(left, right), 44100, channels=2))
    assert tones_in(prompt.pcm) == {440, 2000}
    assert level_at(prompt.pcm, 440) == pytest.approx(TONE_DB - 6, abs=1.0)  # each at half


def test_nothing_above_4khz_folds_into_the_voice_band(tmp_path: Path) -> None:
    """Plain linear interpolation (audioop.ratecv alone) would put a 6 kHz tone of a 48 kHz
    file at 2 kHz at full level; the anti-aliasing filter takes it out first."""
    high = tone(6000, 1.0, rate=48000)
    prompt = load_wav(write_wav(tmp_path / "hiss.wav", high, 48000))
    assert level_at(prompt.pcm, 2000) < SILENT
    assert rms_db(prompt.pcm) < SILENT
    sibilant = tone(5000, 1.0, rate=22050)  # folds to 3050 Hz at 8 kHz
    prompt = load_wav(write_wav(tmp_path / "s.wav", sibilant, 22050))
    assert rms_db(prompt.pcm) < SILENT
    # while the top of the telephone band passes
    upper = load_wav(write_wav(tmp_path / "3k.wav", tone(3000, 1.0, rate=48000), 48000))
    assert level_at(upper.pcm, 3000) == pytest.approx(TONE_DB, abs=1.0)


def test_22050_hz_mono(tmp_path: Path) -> None:
    prompt = load_wav(write_wav(tmp_path / "tts.wav", tone(1000, 1.5, rate=22050), 22050))
    assert prompt.seconds == pytest.approx(1.5, abs=0.001)
    assert tones_in(prompt.pcm) == {1000}
    assert level_at(prompt.pcm, 1000) == pytest.approx(TONE_DB, abs=0.5)


def test_8_bit_unsigned(tmp_path: Path) -> None:
    x = samples(tone(440, 1.0))
    unsigned = (np.round(x / 256) + 128).astype(np.uint8).tobytes()
    prompt = load_wav(write_wav(tmp_path / "old.wav", unsigned, 8000, width=1))
    assert prompt.seconds == pytest.approx(1.0)
    assert tones_in(prompt.pcm, (440, 1000, 2000)) == {440}
    assert level_at(prompt.pcm, 440) == pytest.approx(TONE_DB, abs=0.5)
    assert abs(samples(prompt.pcm).mean()) < 200  # 128 is the zero of 8-bit: no DC offset


def test_8k_16bit_mono_is_taken_as_it_is(tmp_path: Path) -> None:
    pcm = tone(440, 1.0) + tone(2000, 0.5)
    assert load_wav(write_wav(tmp_path / "tel.wav", pcm, 8000)).pcm == pcm


def test_lower_rates_are_raised_to_8k(tmp_path: Path) -> None:
    prompt = load_wav(write_wav(tmp_path / "low.wav", tone(440, 1.0, rate=6000), 6000))
    assert prompt.seconds == pytest.approx(1.0, abs=0.001)
    assert level_at(prompt.pcm, 440) == pytest.approx(TONE_DB, abs=1.0)


def test_too_long_is_refused_from_the_header(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "long.wav", silence(3.0), 8000)
    with pytest.raises(PromptError, match=r"3\.0 s long"):
        load_wav(path, max_seconds=2.0)
    assert load_wav(path, max_seconds=3.0).seconds == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p, "No such file"),
        (lambda p: (p.mkdir(), p)[1], "Is a directory"),
        (lambda p: (p.write_text("hello, not audio\n"), p)[1], "not a PCM WAV"),
        (lambda p: (p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt "), p)[1], "not a PCM WAV"),
        (lambda p: write_wav(p, b"", 8000), "no audio"),
    ],
    ids=["missing", "directory", "text", "truncated", "empty"],
)
def test_bad_files_are_prompt_errors(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path / "bad.wav")
    with pytest.raises(PromptError, match=reason) as caught:
        load_wav(path)
    assert caught.value.path == str(path)


# --- the setting ---------------------------------------------------------------------------


def test_resolve_a_wav_relative_to_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    write_wav(tmp_path / "prompts" / "vm.wav", tone(440, 1.0, rate=16000), 16000)
    got = resolve_prompt(
        "prompts/vm.wav", config_dir=tmp_path, cache_dir=tmp_path / "c", default="voicemail"
    )
    assert tones_in(got.pcm) == {440}
    absolute = str(tmp_path / "prompts" / "vm.wav")
    got = resolve_prompt(absolute, config_dir="/nowhere", cache_dir=tmp_path, default="voicemail")
    assert tones_in(got.pcm) == {440}


@pytest.mark.parametrize("spec", [None, "", "   "])
def test_resolve_nothing_is_the_stock_prompt(tmp_path: Path, spec: str | None) -> None:
    got = resolve_prompt(spec, config_dir=tmp_path, cache_dir=tmp_path, default="confirm")
    assert got == stock("confirm")


@pytest.mark.parametrize("name", ["missing.wav", "broken.WAV"])
def test_resolve_a_bad_wav_falls_back_to_stock_and_warns(tmp_path: Path, name: str) -> None:
    (tmp_path / "broken.WAV").write_bytes(b"not a wav at all")
    with capture_logs() as logs:
        got = resolve_prompt(name, config_dir=tmp_path, cache_dir=tmp_path, default="voicemail")
    assert got == stock("voicemail")
    (warning,) = [e for e in logs if e["event"] == "prompt_fallback"]
    assert warning["log_level"] == "warning"
    assert warning["setting"] == name and warning["fallback"] == "voicemail"
    assert name in warning["reason"]


async def test_resolve_async_a_bad_wav_falls_back_too(tmp_path: Path) -> None:
    write_wav(tmp_path / "ok.wav", tone(2000, 0.5), 8000)
    with capture_logs() as logs:
        bad = await resolve_prompt_async(
            "gone.wav", config_dir=tmp_path, cache_dir=tmp_path, default="unavailable"
        )
        ok = await resolve_prompt_async(
            "ok.wav", config_dir=tmp_path, cache_dir=tmp_path, default="unavailable"
        )
    assert bad == stock("unavailable")
    assert tones_in(ok.pcm) == {2000}
    assert [e["event"] for e in logs] == ["prompt_fallback"]


async def test_resolve_text_without_espeak_is_the_stock_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompts.shutil, "which", lambda name: None)
    with capture_logs() as logs:
        got = resolve_prompt(SAID, config_dir=tmp_path, cache_dir=tmp_path, default="voicemail")
        got_async = await resolve_prompt_async(
            SAID, config_dir=tmp_path, cache_dir=tmp_path, default="voicemail"
        )
    assert got == got_async == stock("voicemail")
    assert [e["reason"] for e in logs] == ["espeak-ng is not installed"] * 2


def test_resolve_with_an_unknown_default_is_a_bug_said_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stock prompt 'nope'"):
        resolve_prompt(None, config_dir=tmp_path, cache_dir=tmp_path, default="nope")


# --- espeak-ng -----------------------------------------------------------------------------


def fake_espeak(tmp_path: Path, body: str) -> Path:
    """An `espeak-ng` stand-in: answers --version, runs `body` for a rendering."""
    path = tmp_path / "bin" / "espeak-ng"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "eSpeak NG text-to-speech: 0.fake"; exit 0; fi\n'
        f"{body}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def counting_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real espeak-ng behind a wrapper that logs every run to the returned file."""
    calls = tmp_path / "calls.log"
    calls.touch()
    wrapper = fake_espeak(tmp_path, "")
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {ESPEAK} "$@"\n')
    monkeypatch.setattr(prompts.shutil, "which", lambda name: str(wrapper))
    return calls


def runs(calls: Path) -> list[str]:
    return ["render" if " -w " in line else line for line in calls.read_text().splitlines()]


@needs_espeak
def test_speak_is_audible_voice_at_8k(tmp_path: Path) -> None:
    prompt = speak(SAID, tmp_path)
    assert prompt is not None
    assert 1.0 < prompt.seconds < 6.0
    assert rms_db(prompt.pcm) > -40
    assert band_fraction(prompt.pcm, 100, 3500) > 0.9
    (cached,) = tmp_path.iterdir()
    info, _ = read_wav(cached)
    assert (info.channels, info.sampwidth, info.rate) == (1, 2, 8000)


@needs_espeak
def test_speak_renders_once_then_serves_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_espeak(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    first = speak(SAID, cache)
    assert runs(calls) == ["--version", "render"]
    again = speak(SAID, cache)
    assert runs(calls) == ["--version", "render"]  # espeak-ng not run at all
    assert again == first
    monkeypatch.setattr(prompts, "_versions", {})  # as after a restart
    assert speak(f"  {SAID}\n", cache) == first  # the same words, the same rendering
    assert runs(calls) == ["--version", "render", "--version"]
    speak(SAID, cache, voice="en-us")  # another voice is another rendering
    assert runs(calls)[-1] == "render"
    assert len(list(cache.iterdir())) == 2


@needs_espeak
async def test_speak_async_renders_once_then_serves_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_espeak(tmp_path, monkeypatch)
    first = await speak_async(SAID, tmp_path / "cache")
    assert first is not None and rms_db(first.pcm) > -40
    assert await speak_async(SAID, tmp_path / "cache") == first
    assert speak(SAID, tmp_path / "cache") == first  # one cache for both
    assert runs(calls) == ["--version", "render"]


@needs_espeak
async def test_resolve_text_is_spoken(tmp_path: Path) -> None:
    got = await resolve_prompt_async(
        SAID, config_dir=tmp_path, cache_dir=tmp_path, default="voicemail"
    )
    assert got.name.startswith("tts:") and rms_db(got.pcm) > -40
    assert resolve_prompt(SAID, config_dir=tmp_path, cache_dir=tmp_path, default="voicemail") == got


@needs_espeak
def test_speak_with_an_unwritable_cache_still_speaks(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with capture_logs() as logs:
        prompt = speak(SAID, not_a_dir / "cache")
    assert prompt is not None and rms_db(prompt.pcm) > -40
    assert [e["event"] for e in logs] == ["prompt_cache_unwritable"]


@needs_espeak
def test_speak_with_an_unknown_voice_is_a_prompt_error(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=r"exited 1: .*voice does not exist"):
        speak(SAID, tmp_path, voice="nosuchvoice")


async def test_speak_returns_none_without_espeak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompts.shutil, "which", lambda name: None)
    assert speak(SAID, tmp_path) is None
    assert await speak_async(SAID, tmp_path) is None
    assert list(tmp_path.iterdir()) == []


async def test_a_hung_espeak_is_killed_and_the_setting_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    exe = fake_espeak(tmp_path, f"echo $$ > {pid_file}\nexec sleep 30")
    monkeypatch.setattr(prompts.shutil, "which", lambda name: str(exe))
    with pytest.raises(PromptError, match=r"timed out after 0\.5 s"):
        await speak_async(SAID, tmp_path / "cache", timeout=0.5)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left behind
    with pytest.raises(PromptError, match="timed out"):
        speak(SAID, tmp_path / "cache", timeout=0.5)


async def test_a_failing_espeak_falls_back_to_stock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = fake_espeak(tmp_path, "echo 'no sound today' >&2; exit 3")
    monkeypatch.setattr(prompts.shutil, "which", lambda name: str(exe))
    with capture_logs() as logs:
        got = await resolve_prompt_async(
            SAID, config_dir=tmp_path, cache_dir=tmp_path, default="voicemail"
        )
    assert got == stock("voicemail")
    (warning,) = logs
    assert "exited 3: no sound today" in warning["reason"]


async def test_speak_async_cancelled_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    exe = fake_espeak(tmp_path, f"echo $$ > {pid_file}\nexec sleep 30")
    monkeypatch.setattr(prompts.shutil, "which", lambda name: str(exe))
    task = asyncio.create_task(speak_async(SAID, tmp_path / "cache"))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# --- stock prompts and the beep ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STOCK_TEXT))
def test_stock_prompts_ship_as_8k_mono_speech(name: str) -> None:
    resource = resources.files("bridge.media").joinpath("stock", f"{name}.wav")
    with resources.as_file(resource) as path:
        info, _ = read_wav(path)
    assert (info.channels, info.sampwidth, info.rate) == (1, 2, 8000)
    prompt = stock(name)
    assert 2.0 < prompt.seconds < 12.0
    assert prompt.seconds == pytest.approx(info.seconds)
    assert rms_db(prompt.pcm) > -30
    assert band_fraction(prompt.pcm, 100, 3500) > 0.9
    assert stock(name) is prompt  # read once


def test_unknown_stock_prompt() -> None:
    with pytest.raises(ValueError, match="one of confirm, unavailable, voicemail"):
        stock("greeting")


@pytest.mark.parametrize("freq", [440, 1000, 2000])
def test_beep_is_its_tone_and_does_not_clip(freq: int) -> None:
    b = beep(freq)
    assert b.seconds == pytest.approx(0.25)
    assert dominant(b.pcm, threshold=-50) == {freq}
    assert level_at(b.pcm, freq) == pytest.approx(-10.0, abs=1.5)  # the window's own loss
    x = samples(b.pcm)
    assert np.abs(x).max() < 32767 * 10 ** (-10 / 20) + 1
    assert abs(x[0]) < 100 and abs(x[-1]) < 100  # faded: no click at either end
    assert dominant(beep(1000, level_db=-3).pcm, threshold=-50) == {1000}  # loud, still clean


def test_beep_limits() -> None:
    for bad in ({"freq": 4000}, {"freq": 0}, {"seconds": 0}, {"level_db": 1}):
        with pytest.raises(ValueError):
            beep(**bad)  # type: ignore[arg-type]


# --- silence detection ---------------------------------------------------------------------

SPEECH = tone(440, 1.0)
QUIET = tone(440, 1.0, amplitude=AMPLITUDE / 100)  # -52 dBFS: line noise, not speech


def fed(detector: SilenceDetector, pcm: bytes) -> list[bool]:
    return [detector.feed(f) for f in frames(pcm)]


def test_silence_after_speech_ends_after_the_hold() -> None:
    detector = SilenceDetector(hold_seconds=2.0)
    assert not any(fed(detector, SPEECH))
    assert detector.heard_speech
    after = fed(detector, silence(1.0) + QUIET + silence(0.5))
    assert after.index(True) == 99  # the 100th 20 ms frame: 2.0 s of silence
    assert all(after[99:])
    assert detector.silent_seconds == pytest.approx(2.5)


def test_speech_starts_the_hold_again() -> None:
    detector = SilenceDetector(hold_seconds=1.0)
    out = fed(detector, SPEECH + silence(0.8) + SPEECH + silence(0.8) + SPEECH)
    assert not any(out)
    assert fed(detector, silence(1.0))[-1]


def test_speech_alone_never_ends() -> None:
    detector = SilenceDetector(hold_seconds=0.5)
    assert not any(fed(detector, SPEECH * 5))


def test_silence_from_the_start_waits_for_speech_unless_told_not_to() -> None:
    waiting = SilenceDetector(hold_seconds=1.0)
    assert not any(fed(waiting, silence(5.0) + QUIET))
    assert not waiting.heard_speech
    impatient = SilenceDetector(hold_seconds=1.0, require_speech=False)
    out = fed(impatient, silence(2.0))
    assert out.index(True) == 49
    impatient.reset()
    assert not impatient.feed(bytes(FRAME_BYTES)) and impatient.silent_seconds == 0.02


def test_threshold_is_in_dbfs() -> None:
    detector = SilenceDetector(threshold_db=-60.0, hold_seconds=0.2, require_speech=False)
    assert not any(fed(detector, QUIET))  # -52 dBFS is above -60: not silence here
    with pytest.raises(ValueError):
        SilenceDetector(hold_seconds=0)
