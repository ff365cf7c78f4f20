"""The events worker: the outbox's writer and the webhook deliveries in a child process of
their own (`[events] writer = "process"`, the default; docs/events.md, "Where the work runs").

Why: storing an event (its JSON, its SQLite rows, the call's record) and delivering it (HTTP,
signatures) is Python work, and in the daemon's process it takes the interpreter lock from the
call path, even in a thread. In a child process it runs on another core: the call path only
hands each event over (a tuple in a pickled frame on a pipe, a few microseconds).

- **The daemon's side** is `WorkerOutbox`, an `Outbox` whose `append` sends instead of
  writing, and `WorkerDispatcher`, whose `refresh`/`wake` are told to the worker. The API's
  reads (history, audit, deliveries) and its few writes (endpoints, replay, retention) use the
  daemon's own connection to the same database (SQLite's WAL: readers never wait for the
  writer; writers of two processes take turns).
- **The worker** (`python -m bridge.events.worker '<settings as JSON>'`) runs an `Outbox` and a
  `WebhookDispatcher` as the daemon would in-process, and reports each batch once settled (in
  the order sent: how many, their `seq`, committed or dropped, the outbox's health) and each
  delivery's outcome (the metrics).
- **Frames** both ways: a 4-byte big-endian length, then a pickle (our own two processes, on
  a pipe nobody else holds).
- **Priority**: the worker runs `WORKER_NICE` steps below the daemon: calls before records.
- **Failures**: the worker ignores SIGINT/SIGTERM (a service manager signals the whole group;
  the daemon drains and then closes it) and leaves when its stdin closes, after writing what it
  has: a daemon killed with `kill -9` loses nothing it had handed over. If the worker dies, the
  daemon logs it, reports the outbox unhealthy, starts a new one after a second and sends it
  again every event it had not heard back about (stored by id: `INSERT OR IGNORE` keeps an
  event that was stored already from being stored twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from bridge.events.outbox import Outbox
from bridge.events.stored import StoredEvent
from bridge.events.webhooks import DeliveryPolicy, WebhookDispatcher

log = structlog.get_logger("bridge.events")

FRAME_EVENTS_MAX = 2000  # events per frame the daemon sends
# Events are handed to the worker at most this long after they were appended: one pipe write
# and one pickle per window, not per turn of the event loop (a busy loop turns thousands of
# times a second; at 300 calls/s the per-turn writes were 4% of the daemon's CPU).
HANDOVER_SECONDS = 0.005
RESTART_AFTER = 1.0  # seconds after the worker died before a new one is started
CLOSE_TIMEOUT = 30.0  # seconds the worker gets to write what it has when the daemon stops
# The worker's scheduling priority below the daemon's: where it shares a core with the calls
# (one core, or a busy machine) the calls get the core first and the events are written in
# the gaps, in bigger batches; a backlog is metered (`bridge_outbox_queued`).
WORKER_NICE = 10

Message = tuple[Any, ...]


def frame(message: Message) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(4, "big") + body


async def read_frame(reader: asyncio.StreamReader) -> Message:
    """The next message; `asyncio.IncompleteReadError` at the end of the stream."""
    size = int.from_bytes(await reader.readexactly(4), "big")
    message: Message = pickle.loads(await reader.readexactly(size))
    return message


def _as_tuple(event: StoredEvent) -> tuple[Any, ...]:
    return (event.id, event.type, event.version, event.occurred_at, event.call_id, event.payload)


def _from_tuple(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(
        id=row[0], type=row[1], version=row[2], occurred_at=row[3], call_id=row[4], payload=row[5]
    )


# -- the daemon's side ---------------------------------------------------------------------------
class WorkerOutbox(Outbox):
    """The outbox as the daemon sees it when the worker writes (see the module doc): `append`,
    `flush`, the counters and `healthy` behave as `Outbox`'s; `run` works on the daemon's own
    connection."""

    def __init__(
        self,
        path: Path,
        *,
        policy: DeliveryPolicy,
        batch_max: int = 2000,
        queue_max: int = 200_000,
        wall: Callable[[], float] = time.time,
        log_level: str = "info",
        log_format: str = "json",
        schema: str = "",
    ) -> None:
        super().__init__(path, batch_max=batch_max, queue_max=queue_max, wall=wall, schema=schema)
        self.policy = policy
        self.log_level = log_level
        self.log_format = log_format
        # Told each delivery's outcome (endpoint id, outcome, latency): the metrics.
        self.on_attempt: Callable[[str, str, float | None], None] | None = None
        # Whether anyone reads `on_committed` now (the live feed): the `seq` of each event
        # is put on it only then.
        self.want_committed: Callable[[], bool] = lambda: True
        self.pid: int | None = None
        self.restarts = 0
        self._inflight: deque[StoredEvent] = deque()  # sent, not reported settled yet
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._respawn: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None  # the hand-over pending, if any
        self._ready: asyncio.Future[int] | None = None

    async def wait_ready(self) -> int:
        """The worker's pid once it has opened the outbox (`start` does not wait for it: the
        events handed over meanwhile wait in the pipe)."""
        assert self._ready is not None
        return await asyncio.shield(self._ready)

    async def start(self) -> WorkerOutbox:
        self._on_loop()
        await self.run(self._open)  # the daemon's connection (and the schema, made once)
        await self._spawn()
        return self

    async def _spawn(self) -> None:
        settings = {
            "path": str(self.path),
            "batch_max": self.batch_max,
            "policy": dataclasses.asdict(self.policy),
            "log_level": self.log_level,
            "log_format": self.log_format,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.events.worker",
            json.dumps(settings),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,
        )
        self._process, self.pid = process, process.pid
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(
            self._read(process), name="events-worker"
        )
        # After a restart: what the worker that died never reported, first, in order.
        if self._inflight:
            self._queue.extendleft(reversed(self._inflight))
            self._inflight.clear()
        self._send()

    def append(self, event: StoredEvent) -> None:
        if self._from_thread(event):
            return
        self._appended += 1
        if len(self._queue) + len(self._inflight) >= self.queue_max:
            self.dropped += 1
            self._settle(1)
            log.warning("outbox_full", dropped=self.dropped, queued=self.queued)
            return
        self._queue.append(event)
        if self._send_timer is None:  # one frame per HANDOVER_SECONDS, whatever was appended
            assert self._loop is not None
            self._send_timer = self._loop.call_later(HANDOVER_SECONDS, self._send)
        elif len(self._queue) >= FRAME_EVENTS_MAX:
            self._send()

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._inflight)

    def _send(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()  # (when sent early: a full frame, a message, closing)
            self._send_timer = None
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return  # (kept until a worker is there)
        while self._queue:
            count = min(len(self._queue), FRAME_EVENTS_MAX)
            batch = [self._queue.popleft() for _ in range(count)]
            self._inflight.extend(batch)
            process.stdin.write(frame(("events", [_as_tuple(e) for e in batch])))

    def tell(self, message: Message) -> None:
        """A message for the worker, after the events appended before it."""
        self._send()
        process = self._process
        if process is not None and process.stdin is not None and not process.stdin.is_closing():
            process.stdin.write(frame(message))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                message = await read_frame(process.stdout)
                if message[0] == "batch":
                    self._settled_batch(*message[1:])
                elif message[0] == "ready":
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(process.pid)
                elif message[0] == "attempts" and self.on_attempt is not None:
                    for attempt in message[1]:
                        self.on_attempt(*attempt)
                elif message[0] == "closed":
                    break
        code = await process.wait()
        if self._closing or self._process is not process:
            return
        self._process = None
        self.healthy, self.problem = False, f"the events worker exited (code {code})"
        log.error(
            "events_worker_exited", code=code, unreported=len(self._inflight), pid=process.pid
        )
        self.restarts += 1
        self._respawn = asyncio.get_running_loop().call_later(RESTART_AFTER, self._restart)

    def _restart(self) -> None:
        self._respawn = None
        if not self._closing:
            asyncio.get_running_loop().create_task(self._spawn_logged())

    async def _spawn_logged(self) -> None:
        try:
            await self._spawn()
        except OSError as exc:
            log.error("events_worker_not_started", reason=str(exc))
            self._respawn = asyncio.get_running_loop().call_later(RESTART_AFTER, self._restart)
        else:
            log.info("events_worker_restarted", pid=self.pid, resent=len(self._inflight))

    def _settled_batch(
        self,
        count: int,
        seqs: list[int | None],
        committed: bool,
        healthy: bool,
        problem: str | None,
        refused: int = 0,
    ) -> None:
        batch = [self._inflight.popleft() for _ in range(min(count, len(self._inflight)))]
        if committed:
            self.written += count - refused
            self.dropped += refused
            self.batches += 1
            if self.on_committed is not None and self.want_committed():
                stored = [
                    event.with_seq(seq)
                    for event, seq in zip(batch, seqs, strict=False)
                    if seq is not None
                ]
                if stored:
                    self.on_committed(stored)
        else:
            self.dropped += count
        self.healthy, self.problem = healthy, problem
        self._settle(count)

    async def close(self) -> None:
        self._closing = True
        if self._respawn is not None:
            self._respawn.cancel()
        process = self._process
        if process is not None:
            self.tell(("close",))
            try:
                await asyncio.wait_for(asyncio.shield(self._reader_done()), CLOSE_TIMEOUT)
            except TimeoutError:
                log.error("events_worker_stuck", pid=process.pid, unreported=len(self._inflight))
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
            if process.stdin is not None:
                process.stdin.close()
            self._process = None
        # What was never reported stored is not: `flush` waiters are let go.
        if self._inflight or self._queue:
            left = len(self._inflight) + len(self._queue)
            self.dropped += left
            self._inflight.clear()
            self._queue.clear()
            self._settle(left)
        if self._db is not None:
            await self.run(lambda db: db.close())
            self._db = None
        self._thread.shutdown(wait=True)

    async def _reader_done(self) -> None:
        if self._reader is not None:
            await self._reader


class WorkerDispatcher(WebhookDispatcher):
    """The dispatcher as the daemon sees it when the worker delivers: the API's questions
    (`stats`, `deliveries`, `replay`'s rows) are answered on the daemon's connection;
    `refresh` (endpoints changed) and `wake` (deliveries queued) are told to the worker."""

    outbox: WorkerOutbox

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def refresh(self) -> None:
        self.outbox.tell(("refresh",))

    def wake(self, endpoint_ids: list[str]) -> None:
        self.outbox.tell(("wake", list(endpoint_ids)))


# -- the worker's side -----------------------------------------------------------------------------
class _Worker:
    def __init__(self, settings: dict[str, Any], out: asyncio.WriteTransport) -> None:
        from bridge.events import history

        self.out = out
        self.outbox = Outbox(
            Path(settings["path"]),
            batch_max=int(settings["batch_max"]),
            queue_max=1 << 62,  # (the daemon bounds what it sends)
            derive=history.Deriver(),
            schema=history.SCHEMA,
        )
        self.dispatcher = WebhookDispatcher(
            self.outbox, DeliveryPolicy(**settings["policy"]), on_attempt=self._attempted
        )
        self.outbox.on_stored = self.dispatcher.wake
        self.outbox.on_settled = self._settled
        self._attempts: list[tuple[str, str, float | None]] = []
        self._dropped = 0  # the outbox's `dropped` as last reported

    def _settled(self, batch: list[StoredEvent], committed: list[StoredEvent], ok: bool) -> None:
        seq_of = {event.id: event.seq for event in committed}
        seqs = [seq_of.get(event.id) for event in batch]
        outbox = self.outbox
        # Of a committed batch, the events it could not store (outbox_event_refused).
        refused = outbox.dropped - self._dropped if ok else 0
        self._dropped = outbox.dropped
        self._tell(("batch", len(batch), seqs, ok, outbox.healthy, outbox.problem, refused))

    def _tell(self, message: Message) -> None:
        """A report to the daemon; once it is gone, nobody hears (and the work goes on)."""
        if self.out.is_closing():
            return
        try:
            self.out.write(frame(message))
        except (OSError, RuntimeError):
            self.out.close()

    def _attempted(self, endpoint_id: str, outcome: str, latency: float | None) -> None:
        if not self._attempts:  # one report per turn of the loop
            asyncio.get_running_loop().call_soon(self._report_attempts)
        self._attempts.append((endpoint_id, outcome, latency))

    def _report_attempts(self) -> None:
        attempts, self._attempts = self._attempts, []
        if attempts:
            self._tell(("attempts", attempts))

    async def serve(self, reader: asyncio.StreamReader) -> None:
        await self.outbox.start()
        await self.dispatcher.start()
        self._tell(("ready",))
        try:
            while True:
                try:
                    message = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break  # the daemon is gone: write what was handed over, and leave
                kind = message[0]
                if kind == "events":
                    for row in message[1]:
                        self.outbox.append(_from_tuple(row))
                elif kind == "refresh":
                    await self.outbox.run(self.outbox._load_endpoints)
                    self.dispatcher.refresh()
                elif kind == "wake":
                    self.dispatcher.wake(message[1])
                elif kind == "close":
                    break
        finally:
            await self.outbox.flush()
            await self.dispatcher.stop()
            await self.outbox.close()
            self._report_attempts()
            self._tell(("closed",))


async def _main(settings: dict[str, Any], channel_in: int, channel_out: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(channel_in, "rb", 0)
    )
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(channel_out, "wb", 0))
    worker = _Worker(settings, out)  # type: ignore[arg-type]
    await worker.serve(reader)
    with contextlib.suppress(Exception):
        out.close()
        await asyncio.sleep(0)


def main(argv: list[str] | None = None) -> None:
    # The daemon stops it (its stdin closes); a signal to the whole group must not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = json.loads((argv or sys.argv[1:])[0])
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    # The pipes are the channel; a stray print must not get into it.
    channel_in, channel_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    from bridge.observability.logging import configure_logging

    configure_logging(settings["log_level"], settings["log_format"], cache=True)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(settings, channel_in, channel_out))
    else:
        uvloop.run(_main(settings, channel_in, channel_out))


if __name__ == "__main__":
    main()
