"""The audio the media engine plays (prompts and the beep) and the silence detector of voicemail.

Everything here is the mixer's format: 16-bit signed little-endian linear PCM, 8 kHz, mono, cut
into 20 ms frames (160 samples, 320 bytes) by `Prompt.frames`.

Where a prompt comes from (the product's `voicemail_prompt` setting, `resolve_prompt`):

- a WAV file (the setting ends in `.wav`, relative to the config directory): `load_wav` takes
  whatever the stdlib `wave` module reads (any rate, mono or stereo or more, 8 to 32-bit PCM)
  and converts it with `audioop`;
- text: `speak` renders it with espeak-ng, once: the 8 kHz result is cached on disk under a
  hash of (text, voice, speed, espeak-ng version), so a restart or a second call with the same
  setting plays the file, and an espeak-ng upgrade renders it again;
- otherwise, and whenever the setting cannot be used (a missing or broken file, text without
  espeak-ng installed, espeak-ng failing), a stock prompt shipped in the package (`stock/`, read
  through importlib.resources so it works from a wheel too). A bad setting is a warning in the
  log and the stock prompt, never silence and never a failed call.

Down-sampling needs a low-pass filter first: `audioop.ratecv` only interpolates linearly, so on
its own a 6 kHz component of a 48 kHz file comes out at 2 kHz at full level (espeak-ng's
sibilants, at 22.05 kHz, fold into the voice band the same way). `load_wav` therefore filters
with a windowed-sinc FIR (cut-off 4 kHz, >50 dB down from 4.6 kHz, so nothing folds into the
300-3400 Hz telephone band) before it decimates, computing only the output samples it keeps;
the taps are `audioop.mul`/`add` over strided slices, so it stays in C without numpy (about
0.1 s for a 10 s file at 48 kHz).

`speak` runs a subprocess: the daemon uses `speak_async` / `resolve_prompt_async` (an asyncio
subprocess with a timeout, file work in a thread) so that the event loop never blocks; the
synchronous ones are for tests and the CLI. No clock is read anywhere here: `SilenceDetector`
counts the frames it is fed.

The stock WAV files are rendered from `STOCK_TEXT` with `python -m bridge.media.prompts`
(espeak-ng needed) and committed; the daemon never renders them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Final

import structlog

from bridge.media.g711 import FRAME_BYTES, SAMPLE_RATE, audioop

__all__ = [
    "ESPEAK",
    "MAX_SECONDS",
    "STOCK_TEXT",
    "Prompt",
    "PromptError",
    "SilenceDetector",
    "beep",
    "load_wav",
    "resolve_prompt",
    "resolve_prompt_async",
    "speak",
    "speak_async",
    "stock",
]

log = structlog.get_logger("bridge.media")

MAX_SECONDS: Final = 120.0
"""The longest prompt file accepted (checked from the header, before the audio is read)."""
ESPEAK: Final = "espeak-ng"
SPEAK_TIMEOUT: Final = 30.0
"""Seconds espeak-ng may take for one prompt (it renders a minute of speech in well under 1 s)."""

STOCK_TEXT: Final[Mapping[str, str]] = {
    "voicemail": (
        "The person you are calling is not available. Please leave a message after the tone. "
        "Press the pound key when you are done."
    ),
    "confirm": "You have a call from the bridge. Press 1 to accept, or hang up to decline.",
    "unavailable": "Sorry, nobody can take your call right now. Goodbye.",
}
"""The stock prompts' words: the files in `stock/` are these, rendered by espeak-ng."""

_WIDTH: Final = 2
# Cut-off and transition band of the anti-aliasing filter: a Hamming-windowed sinc is ~53 dB
# down beyond `_CUTOFF + _TRANSITION / 2`, and what lies between 4 and 4.6 kHz folds onto
# 3.4-4 kHz, above the telephone band.
_CUTOFF: Final = 4000.0
_TRANSITION: Final = 1200.0
_CHUNK: Final = 8192  # output samples filtered per pass: stays in cache, lets threads take turns
_CACHE_FORMAT: Final = 1  # bump when the cached files' processing changes


class PromptError(Exception):
    """A prompt that cannot be used: a missing, unreadable, not-WAV or too long file, or a
    text espeak-ng failed to render (`path` is then the espeak-ng binary)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"prompt {os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Prompt:
    """Audio to play: 8 kHz 16-bit mono linear PCM and a name for the log."""

    pcm: bytes = field(repr=False)
    name: str

    def __post_init__(self) -> None:
        if len(self.pcm) % _WIDTH:
            raise ValueError(f"prompt {self.name}: {len(self.pcm)} bytes, not whole samples")

    @property
    def seconds(self) -> float:
        return len(self.pcm) / _WIDTH / SAMPLE_RATE

    def frames(self) -> Iterator[bytes]:
        """The 20 ms frames to play, one per mixer tick; the last one padded with silence."""
        pcm = self.pcm
        for start in range(0, len(pcm), FRAME_BYTES):
            frame = pcm[start : start + FRAME_BYTES]
            yield frame if len(frame) == FRAME_BYTES else frame.ljust(FRAME_BYTES, b"\x00")


# --- WAV files -----------------------------------------------------------------------------


def load_wav(
    path: str | os.PathLike[str], *, name: str | None = None, max_seconds: float = MAX_SECONDS
) -> Prompt:
    """The WAV file at `path` as a prompt (8 kHz 16-bit mono); PromptError if it is missing,
    unreadable, not a PCM WAV, empty, or longer than `max_seconds`."""
    try:
        with open(path, "rb") as f:
            pcm = _decode_wav(f, path, max_seconds)
    except OSError as e:
        raise PromptError(path, e.strerror or str(e)) from e
    return Prompt(pcm, os.fspath(path) if name is None else name)


def _decode_wav(f: IO[bytes], source: str | os.PathLike[str], max_seconds: float) -> bytes:
    try:
        with wave.open(f, "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            count = w.getnframes()
            if rate <= 0:
                raise PromptError(source, f"sample rate {rate}")
            if count / rate > max_seconds:
                raise PromptError(
                    source, f"{count / rate:.1f} s long, the limit is {max_seconds:g} s"
                )
            data = w.readframes(count)
    except (wave.Error, EOFError) as e:
        raise PromptError(source, f"not a PCM WAV file ({e or 'truncated'})") from e
    if width not in (1, 2, 3, 4):
        raise PromptError(source, f"{width * 8}-bit samples")
    data = data[: len(data) - len(data) % (width * channels)]  # a truncated last frame
    if not data:
        raise PromptError(source, "no audio in it")
    return _to_8k_mono16(data, width, channels, rate)


def _to_8k_mono16(data: bytes, width: int, channels: int, rate: int) -> bytes:
    """Any PCM layout to 8 kHz 16-bit mono. The work is done on 32-bit samples at a quarter of
    full scale, so the filter's sums neither overflow nor lose the low bits, and brought back to
    16 bits (saturating, as a louder-than-full-scale peak must) at the end."""
    if width == 1:
        data = audioop.bias(data, 1, -128)  # WAV's 8-bit samples are unsigned
    if width == _WIDTH and channels == 1 and rate == SAMPLE_RATE:
        return data  # already the mixer's format: bit for bit
    x = audioop.mul(audioop.lin2lin(data, width, 4), 4, 0.25)
    if channels > 1:
        samples = memoryview(x).cast("i")
        mixed = bytes(len(x) // channels)
        for c in range(channels):
            mixed = audioop.add(
                mixed, audioop.mul(samples[c::channels].tobytes(), 4, 1 / channels), 4
            )
        x = mixed
    if rate > SAMPLE_RATE:
        # Decimate by a whole factor while filtering (only the kept samples are computed): to
        # 8 kHz itself when the rate is a multiple of it, else to at least 16 kHz, where
        # ratecv's linear interpolation of a signal already limited to 4 kHz is near-transparent
        # (-0.4 dB at 3.4 kHz from 22.05 kHz).
        if rate % SAMPLE_RATE == 0:
            step = rate // SAMPLE_RATE
        else:
            step = next(d for d in range(max(1, rate // 16000), 0, -1) if rate % d == 0)
        x = _fir_decimate(x, _lowpass_taps(rate), step)
        rate //= step
    if rate != SAMPLE_RATE:
        x, _ = audioop.ratecv(x, 4, 1, rate, SAMPLE_RATE, None)
    return audioop.lin2lin(audioop.mul(x, 4, 4.0), 4, _WIDTH)


@functools.lru_cache(maxsize=16)
def _lowpass_taps(rate: int) -> tuple[float, ...]:
    """A Hamming-windowed sinc low-pass for `rate`: cut-off `_CUTOFF`, unity gain at DC."""
    n = math.ceil(3.3 * rate / _TRANSITION) | 1  # Hamming: transition width ~3.3 fs / N
    mid = n // 2
    fc = _CUTOFF / rate
    taps = []
    for k in range(n):
        t = k - mid
        sinc = 2 * fc if t == 0 else math.sin(2 * math.pi * fc * t) / (math.pi * t)
        taps.append(sinc * (0.54 - 0.46 * math.cos(2 * math.pi * k / (n - 1))))
    total = sum(taps)
    return tuple(h / total for h in taps)


def _fir_decimate(x: bytes, taps: tuple[float, ...], step: int) -> bytes:
    """`x` (32-bit mono) through the FIR `taps`, centred (no delay, same duration), keeping
    every `step`-th output sample: out[n] = sum_k taps[k] * x[n * step + k - len(taps) // 2].

    One tap at a time over a strided slice: each is three C loops (slice, mul, add) over the
    output samples, so the cost is len(taps) x output samples, not x input samples."""
    half = len(taps) // 2
    count = -(-(len(x) // 4) // step)
    padded = memoryview(bytes(4 * half) + x + bytes(4 * (half + step))).cast("i")
    out = bytearray()
    for first in range(0, count, _CHUNK):
        n = min(_CHUNK, count - first)
        acc = bytes(4 * n)
        base = first * step
        for k, h in enumerate(taps):
            start = base + k
            tap = padded[start : start + n * step : step].tobytes()
            acc = audioop.add(acc, audioop.mul(tap, 4, h), 4)
        out += acc
    return bytes(out)


def _write_wav(prompt: Prompt, path: Path) -> None:
    """Write `prompt` as an 8 kHz 16-bit mono WAV, atomically (a temporary file renamed)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".wav.tmp")
    try:
        with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(_WIDTH)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(prompt.pcm)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a reader of another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- stock prompts and the beep ------------------------------------------------------------


@functools.cache
def stock(name: str) -> Prompt:
    """A stock prompt shipped in the package: one of `STOCK_TEXT`'s names."""
    if name not in STOCK_TEXT:
        raise ValueError(f"stock prompt {name!r}: one of {', '.join(sorted(STOCK_TEXT))}")
    resource = resources.files(__package__).joinpath("stock", f"{name}.wav")
    try:
        with resource.open("rb") as f:
            pcm = _decode_wav(f, f"stock/{name}.wav", MAX_SECONDS)
    except OSError as e:
        raise PromptError(f"stock/{name}.wav", e.strerror or str(e)) from e
    return Prompt(pcm, f"stock:{name}")


def beep(freq: float = 1000.0, seconds: float = 0.25, *, level_db: float = -10.0) -> Prompt:
    """A sine of `freq` Hz, peak `level_db` dBFS, with 10 ms raised-cosine fades in and out so
    that it starts and stops without a click (a hard edge splatters over the whole band)."""
    if not 0 < freq < SAMPLE_RATE / 2:
        raise ValueError(f"beep of {freq} Hz: must be between 0 and {SAMPLE_RATE // 2} Hz")
    if seconds <= 0 or level_db > 0:
        raise ValueError("a beep needs a positive length and a level at or below 0 dBFS")
    n = round(seconds * SAMPLE_RATE)
    peak = 32767 * 10 ** (level_db / 20)
    fade = min(round(0.010 * SAMPLE_RATE), n // 2)
    out = array("h", bytes(_WIDTH * n))
    for i in range(n):
        edge = min(i, n - 1 - i)
        gain = 0.5 - 0.5 * math.cos(math.pi * edge / fade) if edge < fade else 1.0
        out[i] = round(peak * gain * math.sin(2 * math.pi * freq * i / SAMPLE_RATE))
    if sys.byteorder != "little":
        out.byteswap()
    return Prompt(out.tobytes(), f"beep:{freq:g}Hz")


# --- text to speech ------------------------------------------------------------------------

_versions: dict[tuple[str, int, int], str] = {}
"""espeak-ng's version per binary (path, mtime, size): asked once, asked again if replaced."""


def _binary_key(exe: str) -> tuple[str, int, int]:
    try:
        st = os.stat(exe)
    except OSError as e:
        raise PromptError(exe, e.strerror or str(e)) from e
    return exe, st.st_mtime_ns, st.st_size


def _remember_version(key: tuple[str, int, int], output: bytes) -> str:
    text = output.decode("utf-8", "replace")
    match = re.search(r"text-to-speech:\s*(\S+)", text)
    version = match.group(1) if match else (text.strip().splitlines() or ["?"])[0]
    _versions[key] = version
    return version


def _render_command(exe: str, out: Path, voice: str, speed: int) -> list[str]:
    # The text goes on stdin: no length limit, and a text starting with "-" is not an option.
    return [exe, "--stdin", "-w", str(out), "-s", str(speed), "-v", voice]


def _clean_text(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise ValueError("nothing to say: the text is blank")
    return text


def _cache_path(
    cache_dir: str | os.PathLike[str], text: str, voice: str, speed: int, version: str
) -> Path:
    key = json.dumps([_CACHE_FORMAT, text, voice, speed, version], ensure_ascii=False)
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return Path(cache_dir) / f"tts-{digest}.wav"


def _tts_name(text: str) -> str:
    return f"tts:{text if len(text) <= 40 else text[:39] + '…'}"


def _load_cached(path: Path, text: str) -> Prompt | None:
    """The cached rendering, or None to render (none yet, or a damaged one, which is replaced)."""
    if not path.is_file():
        return None
    try:
        return load_wav(path, name=_tts_name(text))
    except PromptError as e:
        log.warning("prompt_cache_unreadable", path=str(path), reason=e.reason)
        return None


def _store(raw: Path, path: Path, text: str) -> Prompt:
    """espeak-ng's output converted and kept in the cache. A cache that cannot be written costs
    a rendering next time, not this prompt: the warning is logged and the prompt returned."""
    prompt = load_wav(raw, name=_tts_name(text))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_wav(prompt, path)
    except OSError as e:
        log.warning("prompt_cache_unwritable", path=str(path), reason=e.strerror or str(e))
    return prompt


def _check(exe: str, returncode: int, stderr: bytes) -> None:
    if returncode:
        lines = stderr.decode("utf-8", "replace").strip().splitlines()
        raise PromptError(exe, f"exited {returncode}" + (f": {lines[-1]}" if lines else ""))


def _run(cmd: list[str], stdin: bytes | None, timeout: float) -> bytes:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise PromptError(cmd[0], f"timed out after {timeout:g} s") from e
    except OSError as e:
        raise PromptError(cmd[0], e.strerror or str(e)) from e
    _check(cmd[0], done.returncode, done.stderr)
    return done.stdout


async def _run_async(cmd: list[str], stdin: bytes | None, timeout: float) -> bytes:
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as e:
        raise PromptError(cmd[0], e.strerror or str(e)) from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError as e:
        raise PromptError(cmd[0], f"timed out after {timeout:g} s") from e
    finally:
        if proc.returncode is None:  # timed out or cancelled: no stray espeak-ng left running
            proc.kill()
            await proc.wait()
    _check(cmd[0], proc.returncode or 0, err)
    return out


def speak(
    text: str,
    cache_dir: str | os.PathLike[str],
    *,
    voice: str = "en",
    speed: int = 150,
    timeout: float = SPEAK_TIMEOUT,
) -> Prompt | None:
    """`text` spoken by espeak-ng (`voice`, `speed` words a minute) at 8 kHz, rendered once and
    then served from `cache_dir`; None when espeak-ng is not installed (the caller plays a stock
    prompt). PromptError when espeak-ng fails (an unknown voice) or takes over `timeout`.

    Blocks on the subprocess: the daemon uses `speak_async`."""
    text = _clean_text(text)
    exe = shutil.which(ESPEAK)
    if exe is None:
        return None
    key = _binary_key(exe)
    version = _versions.get(key) or _remember_version(key, _run([exe, "--version"], None, timeout))
    path = _cache_path(cache_dir, text, voice, speed, version)
    cached = _load_cached(path, text)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="bridge-tts-") as tmp:
        raw = Path(tmp) / "speech.wav"
        _run(_render_command(exe, raw, voice, speed), text.encode(), timeout)
        return _store(raw, path, text)


async def speak_async(
    text: str,
    cache_dir: str | os.PathLike[str],
    *,
    voice: str = "en",
    speed: int = 150,
    timeout: float = SPEAK_TIMEOUT,
) -> Prompt | None:
    """`speak` for the event loop: espeak-ng as an asyncio subprocess (killed after `timeout`
    or when the caller is cancelled), the file reading and converting in a worker thread."""
    text = _clean_text(text)
    exe = shutil.which(ESPEAK)
    if exe is None:
        return None
    key = _binary_key(exe)
    version = _versions.get(key)
    if version is None:
        version = _remember_version(key, await _run_async([exe, "--version"], None, timeout))
    path = _cache_path(cache_dir, text, voice, speed, version)
    cached = await asyncio.to_thread(_load_cached, path, text)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="bridge-tts-") as tmp:
        raw = Path(tmp) / "speech.wav"
        await _run_async(_render_command(exe, raw, voice, speed), text.encode(), timeout)
        return await asyncio.to_thread(_store, raw, path, text)


# --- the product setting -------------------------------------------------------------------


def _is_wav(spec: str) -> bool:
    return spec.lower().endswith(".wav")


def _wav_path(spec: str, config_dir: str | os.PathLike[str]) -> Path:
    return Path(config_dir) / spec  # an absolute spec stays as it is


def _fallback(spec: str, default: str, reason: str) -> Prompt:
    log.warning("prompt_fallback", setting=spec, reason=reason, fallback=default)
    return stock(default)


def resolve_prompt(
    spec: str | None,
    *,
    config_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    default: str,
) -> Prompt:
    """The prompt a setting such as `voicemail_prompt` names: a `.wav` path (relative to
    `config_dir`), text to speak, or None / blank for the stock prompt `default`. Whatever goes
    wrong with the setting is a warning and the stock prompt: never silence, never an error.

    Blocks (file conversion, espeak-ng): the daemon uses `resolve_prompt_async`."""
    fallback = stock(default)  # an unknown default is a bug in the caller: fail now, always
    spec = (spec or "").strip()
    if not spec:
        return fallback
    try:
        if _is_wav(spec):
            return load_wav(_wav_path(spec, config_dir))
        spoken = speak(spec, cache_dir)
    except (PromptError, OSError, ValueError) as e:  # ValueError: text espeak-ng cannot take
        return _fallback(spec, default, str(e))
    if spoken is None:
        return _fallback(spec, default, f"{ESPEAK} is not installed")
    return spoken


async def resolve_prompt_async(
    spec: str | None,
    *,
    config_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    default: str,
) -> Prompt:
    """`resolve_prompt` for the event loop (the file work in a thread, `speak_async`)."""
    fallback = stock(default)
    spec = (spec or "").strip()
    if not spec:
        return fallback
    try:
        if _is_wav(spec):
            return await asyncio.to_thread(load_wav, _wav_path(spec, config_dir))
        spoken = await speak_async(spec, cache_dir)
    except (PromptError, OSError, ValueError) as e:  # ValueError: text espeak-ng cannot take
        return _fallback(spec, default, str(e))
    if spoken is None:
        return _fallback(spec, default, f"{ESPEAK} is not installed")
    return spoken


# --- silence detection ---------------------------------------------------------------------


class SilenceDetector:
    """Tells voicemail when the caller has stopped talking: fed the caller's 20 ms linear frames,
    `feed` is True while the audio has been below `threshold_db` dBFS for `hold_seconds` in a row,
    and (with `require_speech`, the default) only after some frame was above it, so that a
    caller who has not started talking yet is not cut off.

    Levels are RMS in dBFS with a full-scale sine at 0 dB (the tests' `rms_db`): -45 dBFS is
    well above a quiet line's noise (G.711 idle noise is below -60) and well below speech
    (-30 to -15). Time is counted in samples fed, not read from a clock.
    """

    __slots__ = ("_heard", "_hold", "_quiet", "_require", "_threshold")

    def __init__(
        self,
        *,
        threshold_db: float = -45.0,
        hold_seconds: float = 3.0,
        require_speech: bool = True,
    ) -> None:
        if hold_seconds <= 0:
            raise ValueError(f"hold_seconds {hold_seconds}: must be positive")
        if threshold_db >= 0:
            raise ValueError(f"threshold_db {threshold_db}: must be below 0 dBFS")
        self._threshold = 32768 * 10 ** (threshold_db / 20) / math.sqrt(2)  # as an RMS value
        self._hold = round(hold_seconds * SAMPLE_RATE)  # in samples
        self._require = require_speech
        self._heard = False
        self._quiet = 0  # samples of silence in a row

    @property
    def heard_speech(self) -> bool:
        return self._heard

    @property
    def silent_seconds(self) -> float:
        """How long the audio has been silent, up to the last frame fed."""
        return self._quiet / SAMPLE_RATE

    def feed(self, frame: bytes) -> bool:
        """One frame of 16-bit linear audio (any length); True once the silence has lasted."""
        if audioop.rms(frame, _WIDTH) > self._threshold:
            self._heard = True
            self._quiet = 0
            return False
        self._quiet += len(frame) // _WIDTH
        return self._quiet >= self._hold and (self._heard or not self._require)

    def reset(self) -> None:
        """Start again, as if nothing had been fed."""
        self._heard = False
        self._quiet = 0


# --- rendering the stock prompts -----------------------------------------------------------


def _render_stock(dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bridge-stock-") as cache:
        for name, text in STOCK_TEXT.items():
            prompt = speak(text, cache)
            if prompt is None:
                raise SystemExit(f"{ESPEAK} is not installed (Debian: apt-get install espeak-ng)")
            _write_wav(prompt, dest / f"{name}.wav")
            print(f"{dest / name}.wav: {prompt.seconds:.2f} s")


if __name__ == "__main__":
    _render_stock(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "stock")
