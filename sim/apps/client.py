"""An app client of the bridge's WebSocket protocol (docs/ws-protocol.md), on `websockets`.

`AppClient` is one session: it authenticates (first frame, subprotocol or query), answers the
server's `ping`s, keeps every frame it receives, and can answer offers by itself with an
`AnswerPolicy` (probability and delay). Tests drive it frame by frame (`send`, `request`,
`expect`); load runs (sim/apps/load.py, bench/ws_fanout.py) start thousands of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

if TYPE_CHECKING:
    from sim.apps.audio import WebRtcPhone

# "none": open without credentials and send no auth frame (tests of the auth timeout).
AuthMode = Literal["frame", "subprotocol", "query", "none"]
Frame = dict[str, Any]


class Closed(Exception):
    """The server closed the connection (`code`, `reason`), or it never opened."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


@dataclass
class AnswerPolicy:
    """How an auto-answering client treats `call.offer`: accept with `probability` after a
    delay drawn from [delay_min, delay_max] seconds; otherwise reject (`reject_others`) or
    let it ring."""

    probability: float = 1.0
    delay_min: float = 0.0
    delay_max: float = 0.0
    reject_others: bool = False
    seed: int | None = None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def decide(self) -> tuple[bool, float]:
        accept = self.rng.random() < self.probability
        return accept, self.rng.uniform(self.delay_min, max(self.delay_min, self.delay_max))


@dataclass
class AppAudio:
    """Answer with audio (the SIP path's WebRTC offers): play `source` (8 kHz 16-bit mono PCM,
    looped) into every call accepted, and write what was heard to `record_dir/<call_id>.wav`
    when the call ends (8 kHz mono)."""

    source: bytes
    record_dir: Path | None = None


@dataclass
class CallStats:
    """What happened to the offers one client (or a whole load run) saw."""

    offers: int = 0
    accepts: int = 0
    rejects: int = 0
    won: int = 0  # call.state answered after our accept
    lost: int = 0  # call.ended after our accept (answered elsewhere, late)
    ended: dict[str, int] = field(default_factory=dict)  # call.ended by reason
    offer_at: dict[str, float] = field(default_factory=dict)  # call id -> monotonic receipt
    accept_rtt: list[float] = field(default_factory=list)  # accept sent -> verdict, seconds

    def merge(self, other: CallStats) -> None:
        self.offers += other.offers
        self.accepts += other.accepts
        self.rejects += other.rejects
        self.won += other.won
        self.lost += other.lost
        for reason, count in other.ended.items():
            self.ended[reason] = self.ended.get(reason, 0) + count
        self.accept_rtt += other.accept_rtt


class AppClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        device: str | None = None,
        auth: AuthMode = "frame",
        auto_pong: bool = True,
        policy: AnswerPolicy | None = None,
        open_timeout: float = 10.0,
        compression: bool = False,
        keep_frames: bool = True,
        audio: AppAudio | None = None,
    ) -> None:
        self.url = url
        self.audio = audio
        self.offers_sdp: dict[str, str] = {}  # the SDP of each offer still ringing
        self.phones: dict[str, WebRtcPhone] = {}  # the audio of each call accepted
        self.token = token
        self.device = device
        self.auth_mode = auth
        self.auto_pong = auto_pong
        self.policy = policy
        self.open_timeout = open_timeout
        self.compression = compression
        self.keep_frames = keep_frames  # False for load runs: no history, no queue
        self.session: Frame | None = None  # the auth.ok frame
        self.frames: list[Frame] = []  # everything received, pings included
        self.stats = CallStats()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.on_frame: Callable[[Frame], None] | None = None  # called for every frame
        self._ws: ClientConnection | None = None
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._accept_sent: dict[str, float] = {}
        self.ringing: set[str] = set()  # call ids offered and not ended
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    # -- connection ------------------------------------------------------------------------
    async def connect(self) -> Frame:
        """Open and authenticate; returns `auth.ok`. Raises `Closed` if the server refuses."""
        await self.open()
        if self.auth_mode == "frame":
            auth: Frame = {"token": self.token}
            if self.device:
                auth["device"] = self.device
            await self.send("auth", **auth)
        first = await self.next(timeout=self.open_timeout)
        if first.get("type") != "auth.ok":
            raise Closed(self.close_code, f"expected auth.ok, got {first}")
        self.session = first
        return first

    async def open(self) -> None:
        """The WebSocket handshake only (with the token when it goes in the URL or the
        subprotocols); `connect()` does the rest."""
        url, subprotocols = self.url, None
        if self.auth_mode == "query":
            url += ("&" if "?" in url else "?") + f"token={self.token}"
        elif self.auth_mode == "subprotocol":
            subprotocols = ["bridge.v1", f"bearer.{self.token}"]
        if self.device and self.auth_mode in ("subprotocol", "query"):
            url += ("&" if "?" in url else "?") + f"device={self.device}"
        try:
            self._ws = await connect(
                url,
                subprotocols=subprotocols,  # type: ignore[arg-type]
                open_timeout=self.open_timeout,
                compression="deflate" if self.compression else None,
                proxy=None,
                # The server's `ping` frames are the heartbeat that matters; leave the
                # protocol-level pings to the server too.
                ping_interval=None,
                max_size=2**20,
            )
        except InvalidStatus as exc:
            raise Closed(None, f"handshake refused: HTTP {exc.response.status_code}") from None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def close(self, code: int = 1000) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(code)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        for task in list(self._tasks):
            task.cancel()
        for call_id in list(self.phones):  # calls still up: keep what was heard so far
            phone = self.phones.pop(call_id)
            if self.audio is not None and self.audio.record_dir is not None:
                phone.write_wav(self.audio.record_dir / f"{call_id}.wav")
            with contextlib.suppress(Exception):
                await phone.close()

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (a crashed client)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.close_code, self.close_reason

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    # -- sending ---------------------------------------------------------------------------
    async def send(self, type_: str, *, id: str | int | None = None, **fields: Any) -> str | int:
        """Send one frame; returns its id (a new one unless given)."""
        frame_id = id if id is not None else f"c{next(self._ids)}"
        await self.send_raw(json.dumps({"v": 1, "type": type_, "id": frame_id, **fields}))
        return frame_id

    async def send_raw(self, data: str | bytes) -> None:
        assert self._ws is not None, "connect() first"
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise Closed(rcvd.code if rcvd else 1006, rcvd.reason if rcvd else "") from None

    async def request(self, type_: str, timeout: float = 10.0, **fields: Any) -> Frame:
        """Send a frame and return the first frame that answers it (same `id`)."""
        frame_id = await self.send(type_, **fields)
        return await self.expect(id=frame_id, timeout=timeout)

    async def accept(self, call_id: str, sdp: str | None = None) -> str | int:
        self._accept_sent[call_id] = time.monotonic()
        self.stats.accepts += 1
        extra = {"sdp": sdp} if sdp is not None else {}
        return await self.send("call.accept", call_id=call_id, **extra)

    async def reject(self, call_id: str) -> str | int:
        self.stats.rejects += 1
        return await self.send("call.reject", call_id=call_id)

    # -- receiving -------------------------------------------------------------------------
    async def next(self, timeout: float = 10.0) -> Frame:
        """The next frame other than `ping`. Raises `Closed` once the connection is closed."""
        frame = await asyncio.wait_for(self._queue.get(), timeout)
        if frame is None:
            self._queue.put_nowait(None)  # stay closed for the next reader
            raise Closed(self.close_code, self.close_reason)
        return frame

    async def expect(self, type_: str | None = None, timeout: float = 10.0, **match: Any) -> Frame:
        """Skip frames until one has this type and these field values."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next(timeout=max(0.0, deadline - time.monotonic()))
            if type_ is not None and frame.get("type") != type_:
                continue
            if all(frame.get(k) == v for k, v in match.items()):
                return frame

    def received(self, type_: str) -> list[Frame]:
        return [f for f in self.frames if f.get("type") == type_]

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for data in self._ws:
                frame = json.loads(data)
                if self.keep_frames:
                    self.frames.append(frame)
                if self.on_frame is not None:
                    self.on_frame(frame)
                kind = frame.get("type")
                if kind == "ping":
                    if self.auto_pong:
                        await self._ws.send('{"v":1,"type":"pong"}')
                    continue
                self._track(frame)
                if self.keep_frames or kind in ("auth.ok", "error"):
                    self._queue.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self._ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else 1006
            self.close_reason = rcvd.reason if rcvd is not None else ""
            self._closed.set()
            self._queue.put_nowait(None)

    def _track(self, frame: Frame) -> None:
        kind, call_id = frame.get("type"), frame.get("call_id")
        if kind == "call.offer" and isinstance(call_id, str):
            self.stats.offers += 1
            self.stats.offer_at[call_id] = time.monotonic()
            self.ringing.add(call_id)
            if isinstance(frame.get("sdp"), str):
                self.offers_sdp[call_id] = frame["sdp"]
            if self.policy is not None:
                self._spawn(self._answer(call_id))
        elif kind == "call.state" and frame.get("state") == "answered":
            self.ringing.discard(call_id or "")
            sent = self._accept_sent.pop(call_id or "", None)
            if sent is not None:
                self.stats.won += 1
                self.stats.accept_rtt.append(time.monotonic() - sent)
        elif kind == "call.state" and frame.get("state") == "ended":
            self._hang_up(call_id or "")
        elif kind == "call.ended":
            reason = str(frame.get("reason"))
            self.ringing.discard(call_id or "")
            self.offers_sdp.pop(call_id or "", None)
            self._hang_up(call_id or "")
            self.stats.ended[reason] = self.stats.ended.get(reason, 0) + 1
            if self._accept_sent.pop(call_id or "", None) is not None:
                self.stats.lost += 1

    async def _answer_with_audio(self, call_id: str) -> str:
        from sim.apps.audio import WebRtcPhone  # aiortc: only for clients that answer with audio

        assert self.audio is not None
        phone = self.phones[call_id] = WebRtcPhone(self.audio.source)
        return await phone.answer(self.offers_sdp.pop(call_id))

    def _hang_up(self, call_id: str) -> None:
        phone = self.phones.pop(call_id, None)
        if phone is None:
            return
        if self.audio is not None and self.audio.record_dir is not None:
            phone.write_wav(self.audio.record_dir / f"{call_id}.wav")
        self._spawn(phone.close())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, call_id: str) -> None:
        assert self.policy is not None
        accept, delay = self.policy.decide()
        if delay > 0:
            await asyncio.sleep(delay)
        if call_id not in self.ringing:  # ended (or answered elsewhere) while we waited
            return
        with contextlib.suppress(ConnectionClosed):
            if accept and self.audio is not None and call_id in self.offers_sdp:
                await self.accept(call_id, sdp=await self._answer_with_audio(call_id))
            elif accept:
                await self.accept(call_id)
            elif self.policy.reject_others:
                await self.reject(call_id)
