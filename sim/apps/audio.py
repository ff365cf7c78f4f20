"""Audio for simulated apps: a WebRTC peer (aiortc) that plays a WAV into a call and keeps what it
heard, as a browser does with the microphone and the speaker.

`WebRtcPhone.answer(offer)` takes the bridge's `call.offer` SDP and returns the answer for
`call.accept`; the phone then sends `source` (looped) as 20 ms frames paced in real time and
collects every frame the bridge sends as 8 kHz 16-bit mono PCM (`heard`, `write_wav`).
aiortc decodes and encodes every frame here: fine for a simulator and for tests, and the very
cost the bridge's own engine avoids (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
import wave
from pathlib import Path

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
_TIME_BASE = fractions.Fraction(1, RATE)


def load_pcm(path: Path | str) -> bytes:
    """A WAV file as 8 kHz 16-bit mono PCM (any rate or channel count is converted)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit WAV files are supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype("<i2")
    if rate != RATE and len(data):
        positions = np.arange(0, len(data) * RATE / rate) * rate / RATE
        data = np.interp(positions, np.arange(len(data)), data).astype("<i2")
    return data.tobytes()


class PcmSource(MediaStreamTrack):
    """An audio track playing PCM (looped), paced in real time: the phone's microphone."""

    kind = "audio"

    def __init__(self, pcm: bytes, *, loop: bool = True) -> None:
        super().__init__()
        if not pcm:
            pcm = bytes(FRAME_SAMPLES * 2)
        self._pcm = pcm
        self._loop = loop
        self._position = 0
        self._timestamp = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._timestamp / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        size = FRAME_SAMPLES * 2
        chunk = self._pcm[self._position : self._position + size]
        self._position += size
        if len(chunk) < size:
            if self._loop:
                self._position = size - len(chunk)
                chunk += self._pcm[: self._position]
            chunk = chunk.ljust(size, b"\0")
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(chunk)
        frame.sample_rate = RATE
        frame.pts = self._timestamp
        frame.time_base = _TIME_BASE
        self._timestamp += FRAME_SAMPLES
        return frame


class WebRtcPhone:
    """One call's WebRTC peer: answers the bridge's offer, plays `source`, records what it hears."""

    def __init__(self, source: bytes) -> None:
        self.pc = RTCPeerConnection()
        self.source = PcmSource(source)
        self.pc.addTrack(self.source)
        self._heard = bytearray()
        self._resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        self._reader: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(self._read(track))

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()
            elif self.pc.connectionState == "failed":
                self.failed.set()

    async def answer(self, offer: str) -> str:
        """The answer SDP for `call.accept` (candidates gathered in it: no trickle)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                for out in self._resampler.resample(frame):
                    self._heard += out.to_ndarray().tobytes()

    @property
    def heard(self) -> bytes:
        """Everything heard so far: 8 kHz 16-bit mono PCM."""
        return bytes(self._heard)

    def mark(self) -> int:
        """A position in `heard`, to take what comes after it."""
        return len(self._heard)

    def write_wav(self, path: Path | str) -> None:
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(self.heard)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.pc.close()
