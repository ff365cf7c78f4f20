"""`bridge run`: the asyncio daemon around the HTTP app, with signal handling.

SIGTERM / SIGINT: stop accepting new calls, let live ones finish (up to
`[daemon] drain_timeout_seconds`), then stop listeners and exit 0.
SIGHUP: reload the directory file (a bad file is refused, the old one kept), and the SIP TLS
certificate and key (for new connections; a bad pair is refused, the old one kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Callable

import structlog
import uvicorn

from bridge.api.app import create_app
from bridge.config import Settings
from bridge.context import AppContext, build_context
from bridge.directory.loader import DirectoryError
from bridge.directory.model import Directory
from bridge.sip.service import MetricsCounters
from bridge.sip.tls import TlsContexts
from bridge.sip.transaction import TimerSettings
from bridge.sip.transport import SipEndpoint

log = structlog.get_logger("bridge")


# The SIP path allocates many short-lived containers per message. At the default (700, 10,
# 10) the collector ran every few messages and full collections came often (9 in 7,000 calls
# of bench/sip_inproc.py, up to 180 ms each); at 50,000 young collections paused up to 110 ms
# (and set the carrier webhooks' p99). 5,000 keeps both pauses and CPU lower (see
# docs/PERFORMANCE.md, "Garbage collector").
GC_THRESHOLDS = (5_000, 10, 10)
# The collector policy (`GarbageCollectorPolicy`): every GC_TICK_SECONDS a collection of the
# young generations, whose survivors move to the old one; every GC_FULL_SECONDS a collection
# of the old generation too (what the daemon made since start and still holds). A full
# collection that finds fewer than GC_FULL_LITTLE objects doubles the interval to the next
# one, up to GC_FULL_MAX_SECONDS; one that finds more brings it back to GC_FULL_SECONDS.
# The interpreter's own full collections are off while the policy runs (GC_OLD_OFF).
# Four ticks a second rather than one: each walks a quarter as much. On the SIP path at
# 500-600 calls/s a one-second tick took up to 24-37 ms (call set-up p99 8-12 ms at 500/s in
# some runs); at 0.25 s, p99 4 ms at 500/s in every run, the same CPU, and the WebSocket
# fan-out and webhook figures unchanged (docs/PERFORMANCE.md).
GC_TICK_SECONDS = 0.25
GC_FULL_SECONDS = 600.0
GC_FULL_MAX_SECONDS = 3600.0
GC_FULL_LITTLE = 10_000
GC_OLD_OFF = 1_000_000_000  # young collections before the interpreter collects the old one


def tune_garbage_collector(
    on_full: Callable[[float], None] | None = None,
) -> GarbageCollectorPolicy | None:
    """Once started: move what start-up built (modules, settings, the directory, the app)
    out of the collector's sight for good with `gc.freeze()`, and collect the young
    generation less often. With a running event loop, also start the policy (returned; the
    daemon stops it on the way out); `on_full` is told each full collection's pause."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return GarbageCollectorPolicy(loop, on_full=on_full).start()


class GarbageCollectorPolicy:
    """Start-up frozen for good; young objects collected on a tick; the rest on a schedule.

    Why: the interpreter's collector walks, at moments set by allocations (so inside offer
    fan-outs and call set-ups), whatever is in the generation it collects. Two things made
    that slow. 10,000 idle app sessions are hundreds of thousands of long-lived objects
    (uvicorn's protocol and parser, the ASGI coroutine waiting in `receive`, the session),
    and every heartbeat replaces a few of them: young collections of 5-30 ms, generation-1
    ones of 60-80 ms every few seconds, full ones of 170-700 ms every minute or so
    (docs/PERFORMANCE.md, "App clients: WebSocket fan-out"), finding next to nothing. And
    start-up leaves about 115,000 objects (modules, classes, functions, the app) that are
    slow to walk (about 300 ns each here, against 50 ns for a small list): a full
    collection of them alone takes 35-50 ms on this machine.

    What:
    - **Start-up is frozen for good** (`tune_garbage_collector`): modules and the app never
      become garbage; what they built and a later change replaces (the first directory,
      after an API change or a reload) is freed by reference counting, and a cycle among it
      would stay (once: its replacements are not frozen).
    - **A tick every `every` seconds**, on the loop (between callbacks, never inside a
      fan-out's writes): `gc.collect(1)`, the young generations, which hold only what was
      allocated since the previous tick (a quarter of a second of heartbeats and calls: a
      few milliseconds). Its survivors move to the old generation, which the interpreter's
      own collections leave alone while the policy runs (its threshold is GC_OLD_OFF), so
      long-lived objects are not walked again and again.
    - **A full collection every `full_every` seconds**: `gc.collect(2)`, the old generation too
      (everything the daemon made since start and still holds: calls, transactions, sessions;
      not start-up), so garbage cycles among long-lived objects are freed. The one long pause,
      logged as `gc_full` with what it found and how long it took: 22-29 ms with a SIP soak's
      state at 150 calls/s (bench/gc_pause.py; the earlier design, which froze everything each
      tick and unfroze everything for this collection, walked start-up too: 74-81 ms, long
      enough to lose calls in bench/soak.py); at most about 0.3-0.45 s with 10,000 app sessions.
      Memory held by garbage cycles is thus at most what became cyclic garbage in one period.
      The period adapts to what these find: one that collects fewer than GC_FULL_LITTLE objects
      (the bridge measured 0-400 at 10,000 app sessions, about 0.2 per SIP call) doubles it, up
      to GC_FULL_MAX_SECONDS; one that collects more sets it back to `full_every`.

    Most objects die by reference counting wherever they are (a closed app session frees
    all of its objects that way under uvloop: tests/ws/test_gc.py).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        every: float = GC_TICK_SECONDS,
        full_every: float = GC_FULL_SECONDS,
        *,
        on_full: Callable[[float], None] | None = None,
    ) -> None:
        self._loop = loop
        self._on_full = on_full
        self._every = every
        self._full_every = full_every
        self.full_interval = full_every  # seconds from one full collection to the next
        self._full_at = loop.time() + full_every
        self._handle: asyncio.TimerHandle | None = None
        self._thresholds = gc.get_threshold()

    def start(self) -> GarbageCollectorPolicy:
        if self._handle is None:
            self._thresholds = gc.get_threshold()
            young, middle, _ = self._thresholds
            gc.set_threshold(young, middle, GC_OLD_OFF)
            self._handle = self._loop.call_later(self._every, self._tick)
        return self

    def stop(self) -> None:
        """Stop ticking; the interpreter's own collections as before, start-up unfrozen."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            gc.set_threshold(*self._thresholds)
            gc.unfreeze()

    def _tick(self) -> None:
        self._handle = self._loop.call_later(self._every, self._tick)
        self.collect(full=self._loop.time() >= self._full_at)

    def collect(self, *, full: bool = False) -> int:
        """One tick (`full`: the old generation too). Returns what it collected."""
        if not full:
            return gc.collect(1)
        started = time.perf_counter()
        collected = gc.collect(2)
        paused = time.perf_counter() - started
        if collected < GC_FULL_LITTLE:
            self.full_interval = min(2 * self.full_interval, GC_FULL_MAX_SECONDS)
        else:
            self.full_interval = self._full_every
        self._full_at = self._loop.time() + self.full_interval
        log.info(
            "gc_full",
            collected=collected,
            frozen=gc.get_freeze_count(),
            seconds=round(paused, 4),
            next_in_seconds=self.full_interval,
        )
        if self._on_full is not None:
            self._on_full(paused)
        return collected


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM/SIGHUP."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]  # uvicorn >= 0.29
        yield


class Daemon:
    def __init__(self, settings: Settings, directory: Directory) -> None:
        self.settings = settings
        self.ctx: AppContext = build_context(settings, directory)
        self.app = create_app(self.ctx)
        self._stop = asyncio.Event()
        self._gc: GarbageCollectorPolicy | None = None

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("shutdown_requested", live_calls=len(self.ctx.calls))
            self._stop.set()

    def reload(self) -> None:
        with contextlib.suppress(DirectoryError):  # logged by reload_directory
            self.ctx.reload_directory()
        sip = self.ctx.sip
        if sip is not None and sip.endpoint is not None:
            sip.endpoint.reload_tls()  # (logged either way)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # all_tasks copies the loop's task set first: safe from the scrape's worker thread.
        self.ctx.metrics.event_loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        config = uvicorn.Config(
            self.app,
            host=self.settings.http.host,
            port=self.settings.http.port,
            ws="websockets-sansio",
            ws_max_size=self.settings.ws.max_frame_bytes,  # bigger frames: close 1009
            ws_ping_interval=None,  # the gateway's own `ping` frames are the heartbeat
            # Frames are small JSON; per-connection zlib state would double the memory of an
            # idle app session (bench/ws_fanout.py --compression: 78 KiB instead of 35).
            ws_per_message_deflate=False,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        if self.ctx.events is not None:  # before any call: their first events are stored
            await self.ctx.events.start()
        if not await self._start_sip():
            if self.ctx.events is not None:
                await self.ctx.events.stop()
            return 1
        serve = asyncio.create_task(self._serve(server), name="http")
        started = asyncio.create_task(self._mark_started(server))
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({serve, stop}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if serve in done:
            # The listener died on its own (port taken, ...): that is a failed start.
            stop.cancel()
            if self.ctx.sip is not None:
                await self.ctx.sip.stop()
            if self.ctx.events is not None:
                await self.ctx.events.stop()
            log.error("http_listener_stopped", host=config.host, port=config.port)
            return 1
        await self._drain()
        server.should_exit = True
        await serve
        if self._gc is not None:
            self._gc.stop()
        if self.ctx.sip is not None:
            await self.ctx.sip.stop()
        if self.ctx.carrier is not None:
            # Conference timers, REST calls in flight and the REST HTTP session.
            await self.ctx.carrier.aclose()
        if self.ctx.events is not None:  # last: the calls' final events are stored
            await self.ctx.events.stop()
        log.info("stopped")
        return 0

    async def _start_sip(self) -> bool:
        sip = self.ctx.sip
        if sip is None:
            return True
        settings = self.settings.sip
        self.ctx.listeners_expected.add("sip")
        endpoint = SipEndpoint(
            settings.host,
            settings.port,
            sip,
            counters=MetricsCounters(self.ctx.metrics),
            udp_buffer_bytes=settings.udp_buffer_bytes,
            timers=TimerSettings(t1=settings.timer_t1_ms / 1000),
            tls=_tls_contexts(self.settings),
            stream_keepalive_seconds=settings.keepalive_seconds,
            max_stream_connections=settings.max_stream_connections,
            max_stream_connections_per_source=settings.max_stream_connections_per_source,
            stream_message_seconds=settings.stream_message_timeout_seconds,
        )
        try:
            await sip.start(endpoint)
        except OSError as exc:
            log.error("sip_listener_failed", host=settings.host, port=settings.port, error=str(exc))
            await sip.stop()
            return False
        self.ctx.listeners_up.add("sip")
        return True

    @staticmethod
    async def _serve(server: uvicorn.Server) -> None:
        # uvicorn exits the process when it cannot bind; we report it and exit 1 instead.
        with contextlib.suppress(SystemExit):
            await server.serve()

    async def _mark_started(self, server: uvicorn.Server) -> None:
        while not server.started:
            await asyncio.sleep(0.02)
        self.ctx.listeners_up.add("http")
        metrics = self.ctx.metrics

        def full_collection(paused: float) -> None:
            metrics.gc_full_collections.inc()
            metrics.gc_full_seconds.set(paused)

        self._gc = tune_garbage_collector(on_full=full_collection)
        log.info(
            "started",
            http=f"{self.settings.http.host}:{self.settings.http.port}",
            directory_version=self.ctx.store.current.version,
            users=len(self.ctx.store.current.users),
        )

    async def _drain(self) -> None:
        self.ctx.draining = True
        self.ctx.metrics.draining.set(1)
        self.ctx.calls.stop_accepting()
        if self.ctx.ws is not None:  # app sessions hear of it now, and close (1001) below
            self.ctx.ws.begin_drain()
        timeout = self.settings.daemon.drain_timeout_seconds
        live = len(self.ctx.calls)
        if live:
            log.info("draining", live_calls=live, timeout_seconds=timeout)
            finished = await self.ctx.calls.wait_empty(timeout)
            if not finished:
                log.warning("drain_timeout", live_calls=len(self.ctx.calls))
        if self.ctx.ws is not None:
            await self.ctx.ws.close_all()


def _tls_contexts(settings: Settings) -> TlsContexts | None:
    """`[sip.tls]`'s contexts (the files were checked with the rest of the config)."""
    tls = settings.sip_tls()
    return TlsContexts(tls) if tls is not None else None


def run_daemon(settings: Settings, directory: Directory) -> int:
    loop_factory = None
    if settings.daemon.event_loop != "asyncio":
        try:
            import uvloop  # installed with uvicorn[standard]; faster sockets and timers
        except ImportError:
            if settings.daemon.event_loop == "uvloop":
                log.error("uvloop_missing")
                return 1
        else:
            loop_factory = uvloop.new_event_loop
    log.info("event_loop", implementation="uvloop" if loop_factory else "asyncio")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(Daemon(settings, directory).run())
