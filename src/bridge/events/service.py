"""The events feature's wiring (like the other features' `plugin.py`): what it listens to,
what it stores, where it pushes (docs/events.md).

- **In**: every call event of the call runner (both paths), every audit record
  (`bridge.observability.audit`), every directory change. Appended to the outbox at once (the
  listeners never wait on the disk).
- **Out**: the outbox's SQLite database, and the webhook endpoints (`[[events.endpoints]]`
  and the API's, `/api/v1/webhooks`).
- **Health**: `/readyz` says whether the outbox can be written; the metrics say how much was
  written and dropped, how deep and how old the queue of deliveries is, and what came of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from bridge.calls.events import CallAnswered, CallEnded, CallEventRecord, LegState
from bridge.calls.runner import CallRunner, RunningCall
from bridge.config import Settings
from bridge.directory.model import Directory
from bridge.directory.store import DirectoryStore
from bridge.events import history
from bridge.events.model import (
    StoredEvent,
    audit_event,
    call_event,
    directory_event,
    from_call_record,
    routed_payload,
)
from bridge.events.outbox import Endpoint, Outbox
from bridge.events.webhooks import DeliveryPolicy, WebhookDispatcher
from bridge.events.worker import WorkerDispatcher, WorkerOutbox
from bridge.observability.audit import add_audit_sink, remove_audit_sink
from bridge.observability.metrics import Metrics

log = structlog.get_logger("bridge.events")


class Presence(Protocol):
    """Who is in wrap-up until when (`bridge.presence.service.PresenceService`)."""

    def presence_of(self, user_id: str) -> Any: ...


class Archive(Protocol):
    """The recordings and voicemails (`bridge.recordings.store.MediaArchive`), for retention."""

    def prune(self, before: datetime) -> tuple[int, int]: ...


GAUGES_EVERY = 5.0  # seconds between reads of the queue's depth and age (never per scrape)
RETENTION_FIRST = 60.0  # seconds after start, then every RETENTION_EVERY
RETENTION_EVERY = 3600.0
READ_WAIT_SECONDS = 2.0  # the longest a read of records waits for what came just before it
_ENDED = (LegState.CANCELLED, LegState.FAILED, LegState.HUNG_UP, LegState.ENDED)


class _Tracked:
    """What the outbox notes of a live call: when it came and was answered (the durations
    of its `call.ended`), and which of its legs' ends were stored."""

    __slots__ = ("answered_at", "answered_by", "legs_ended", "path", "received_at")

    def __init__(self, path: str, received_at: datetime) -> None:
        self.path = path
        self.received_at = received_at
        self.answered_at: datetime | None = None
        self.answered_by: str | None = None
        self.legs_ended: set[str] = set()


class EventsService:
    def __init__(
        self,
        settings: Settings,
        *,
        runner: CallRunner,
        store: DirectoryStore,
        metrics: Metrics,
        wall: Callable[[], float] = time.time,
        archive: Archive | None = None,
        presence: Presence | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.presence = presence
        self.metrics = metrics
        self._wall = wall
        events = settings.events
        policy = DeliveryPolicy(
            retry_max_seconds=events.retry_max_seconds,
            max_attempts=events.max_attempts,
            dead_after_seconds=events.dead_after_seconds,
            timeout_seconds=events.timeout_seconds,
            concurrency=events.concurrency,
        )
        self.outbox: Outbox
        self.dispatcher: WebhookDispatcher
        if events.writer == "process":  # (bridge.events.worker: on a core of its own)
            outbox = WorkerOutbox(
                settings.outbox_file,
                policy=policy,
                wall=wall,
                schema=history.SCHEMA,
                log_level=settings.log.level,
                log_format=settings.log.format,
            )
            outbox.on_attempt = self._attempted
            outbox.want_committed = lambda: bool(self._feeds)
            self.outbox = outbox
            self.dispatcher = WorkerDispatcher(outbox, policy, wall=wall)
        else:
            self.outbox = Outbox(
                settings.outbox_file, wall=wall, derive=history.Deriver(), schema=history.SCHEMA
            )
            self.dispatcher = WebhookDispatcher(
                self.outbox, policy, wall=wall, on_attempt=self._attempted
            )
            self.outbox.on_stored = self.dispatcher.wake
        self.outbox.on_committed = self._committed
        # The live feed's subscribers (`/api/v1/events/stream`): each a bounded queue.
        self._feeds: set[asyncio.Queue[StoredEvent | None]] = set()
        self._runner = runner
        self._tracked: dict[str, _Tracked] = {}
        self.running = False
        self.started = False  # `start` was called (by the daemon): `/readyz` reports it
        self._gauges: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        runner.subscribe(self._call_event)
        runner.watch(self._call_applied)
        store.subscribe(self._directory_changed)

    # -- life ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the outbox and start delivering. A database that cannot be opened (a
        read-only folder) is logged and reported (`/readyz`); calls go on without it."""
        self.started = True
        try:
            await self.outbox.start()
            await self.outbox.sync_config_endpoints(self._configured())
        except (sqlite3.Error, OSError) as exc:
            self.outbox.healthy, self.outbox.problem = False, f"cannot open the outbox: {exc}"
            log.error("outbox_unavailable", path=str(self.outbox.path), reason=str(exc))
            self.metrics.outbox_healthy.set(0)
            return
        await self.dispatcher.start()
        self.dispatcher.refresh()  # (the endpoints of the settings, just saved)
        add_audit_sink(self._audited)
        self.running = True
        self._gauges = asyncio.get_running_loop().create_task(self._gauge_loop())
        self._retention = asyncio.get_running_loop().create_task(self._retention_loop())
        log.info(
            "outbox_started",
            path=str(self.outbox.path),
            endpoints=[e.id for e in self.outbox.endpoints() if e.enabled],
        )

    async def caught_up(self, within: float = READ_WAIT_SECONDS) -> None:
        """Wait (at most `within`) until what was appended before is stored: the API's reads
        of records (audit, call history) then see the actions that came just before them.
        The events reach the writer in batches (`worker.HANDOVER_SECONDS` with the worker)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outbox.flush(), within)

    async def stop(self) -> None:
        """Store what is queued (the last events of the drain), stop delivering."""
        remove_audit_sink(self._audited)
        for task in (self._gauges, self._retention):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.running:
            self.running = False
            await self.dispatcher.stop()
            await self.outbox.close()

    def ready(self) -> tuple[bool, str]:
        if self.outbox.healthy:
            return True, "ok"
        return False, self.outbox.problem or "not writable"

    # -- in ----------------------------------------------------------------------------------------
    def append(self, event: StoredEvent) -> None:
        if not self.running:
            return  # (a context built without the daemon, in tests: nothing is stored)
        self.outbox.append(event)

    def _call_event(self, record: CallEventRecord) -> None:
        if not self.running:
            return
        call = self._runner.get(record.call_id)
        tracked = self._tracked.get(record.call_id)
        if tracked is None:  # its first event: where it came from, and the plan it got
            tracked = self._track(record, call)
        event = record.event
        if isinstance(event, CallEnded):
            if call is not None:
                self._legs_ended(tracked, call, record.at)  # (before the call's own end)
            self._tracked.pop(record.call_id, None)
        stored = from_call_record(record)
        if isinstance(event, CallAnswered):
            tracked.answered_at = record.at
            tracked.answered_by = event.user_id
        elif isinstance(event, CallEnded):
            answered = tracked.answered_at
            waited = (answered or record.at) - tracked.received_at
            talked = record.at - answered if answered is not None else None
            stored.payload["wait_seconds"] = round(waited.total_seconds(), 3)
            stored.payload["talk_seconds"] = (
                round(talked.total_seconds(), 3) if talked is not None else None
            )
            stored.payload["wrap_up_seconds"] = self._wrap_up(tracked, record.at)
        self.append(stored)
        derived = _control_done(stored)
        if derived is not None:  # a done control as the state change it made
            self.append(derived)

    def _wrap_up(self, tracked: _Tracked, ended: datetime) -> float | None:
        """The wrap-up the answering user got at the end (their presence says until when)."""
        if self.presence is None or tracked.answered_by is None:
            return None
        until = self.presence.presence_of(tracked.answered_by).wrap_up_until
        if until is None:
            return 0.0
        return round(max(0.0, (until - ended).total_seconds()), 3)

    def _track(self, record: CallEventRecord, call: RunningCall | None) -> _Tracked:
        tracked = self._tracked[record.call_id] = _Tracked(record.path, record.at)
        if call is not None:
            plan = call.machine.plan
            self.append(
                call_event(
                    "call.received",
                    record.call_id,
                    record.at,
                    {
                        "path": call.path,
                        "line": plan.line,
                        "line_name": plan.line_name,
                        "caller": call.live.caller,
                    },
                )
            )
            self.append(call_event("call.routed", record.call_id, record.at, routed_payload(plan)))
        return tracked

    def _call_applied(self, call: RunningCall) -> None:
        tracked = self._tracked.get(call.call_id)
        if tracked is not None and self.running:
            self._legs_ended(tracked, call, datetime.fromtimestamp(self._wall(), UTC))

    def _legs_ended(self, tracked: _Tracked, call: RunningCall, at: datetime) -> None:
        """`leg.ended` for each leg that ended since the last look: who, how, and why."""
        for leg in call.machine.legs():
            if leg.state in _ENDED and leg.leg_id not in tracked.legs_ended:
                tracked.legs_ended.add(leg.leg_id)
                payload = {"path": tracked.path, **leg.to_dict()}
                self.append(call_event("leg.ended", call.call_id, at, payload))

    def _audited(self, fields: dict[str, Any]) -> None:
        self.append(audit_event(fields, datetime.fromtimestamp(self._wall(), UTC)))

    def _directory_changed(self, new: Directory, old: Directory | None) -> None:
        if old is not None and new.version != old.version:
            at = datetime.fromtimestamp(self._wall(), UTC)
            self.append(directory_event(new.version, old.version, at))

    # -- the live feed -----------------------------------------------------------------------------
    def follow(self, size: int = 2000) -> asyncio.Queue[StoredEvent | None]:
        """A queue of the events stored from now on; None in it means it overflowed (the
        reader was too slow) and ends: it resumes from the outbox by its last id."""
        queue: asyncio.Queue[StoredEvent | None] = asyncio.Queue(size)
        self._feeds.add(queue)
        return queue

    def unfollow(self, queue: asyncio.Queue[StoredEvent | None]) -> None:
        self._feeds.discard(queue)

    def _committed(self, events: list[StoredEvent]) -> None:
        for queue in list(self._feeds):
            for event in events:
                if queue.qsize() >= queue.maxsize - 1:
                    self._feeds.discard(queue)
                    queue.put_nowait(None)  # (the one slot kept for it)
                    log.info("event_feed_overflow")
                    break
                queue.put_nowait(event)

    # -- endpoints ---------------------------------------------------------------------------------
    def _configured(self) -> list[Endpoint]:
        return [
            Endpoint(
                id=f"config:{e.name}",
                url=e.url,
                secret=e.secret,
                types=tuple(e.types),
                enabled=e.enabled,
                source="config",
            )
            for e in self.settings.events.endpoints
        ]

    # -- retention -------------------------------------------------------------------------------
    async def prune(self) -> dict[str, int]:
        """Delete what is older than the retention settings (logged with the counts)."""
        now = datetime.fromtimestamp(self._wall(), UTC)
        pruned = {"events": 0, "recordings": 0, "voicemails": 0}
        cutoff = now - timedelta(days=self.settings.events.retention_days)
        try:
            pruned["events"] = await self.outbox.prune(cutoff)
        except sqlite3.Error as exc:
            log.error("retention_failed", what="events", reason=str(exc))
        days = self.settings.media.recordings_retention_days
        if days > 0 and self.archive is not None:
            archive, before = self.archive, now - timedelta(days=days)
            recordings, voicemails = await asyncio.to_thread(archive.prune, before)
            pruned["recordings"], pruned["voicemails"] = recordings, voicemails
        if any(pruned.values()):
            log.info("retention_pruned", **pruned)
        return pruned

    async def _retention_loop(self) -> None:
        await asyncio.sleep(RETENTION_FIRST)
        while True:
            try:
                await self.prune()
            except Exception:  # never let the schedule die on one bad file
                log.exception("retention_failed")
            await asyncio.sleep(RETENTION_EVERY)

    # -- metrics -----------------------------------------------------------------------------------
    def _attempted(self, endpoint_id: str, outcome: str, latency: float | None) -> None:
        m = self.metrics
        m.webhook_deliveries.labels(endpoint=endpoint_id, outcome=outcome).inc()
        if outcome == "dead":
            m.webhook_dead_letters.labels(endpoint=endpoint_id).inc()
        if latency is not None:
            m.webhook_delivery_seconds.observe(max(0.0, latency))

    async def _gauge_loop(self) -> None:
        m = self.metrics
        written = dropped = 0
        while True:
            outbox = self.outbox
            m.events_written.inc(outbox.written - written)
            m.events_dropped.inc(outbox.dropped - dropped)
            written, dropped = outbox.written, outbox.dropped
            m.outbox_healthy.set(1 if outbox.healthy else 0)
            m.outbox_queued.set(outbox.queued)
            try:
                m.outbox_bytes.set(outbox.size_bytes())
                depth, oldest = await outbox.run(_pending)
                m.outbox_pending.set(depth)
                m.outbox_oldest_pending_seconds.set(
                    0.0 if oldest is None else max(0.0, self._wall() - oldest)
                )
            except sqlite3.Error:
                pass  # (the outbox's health says why)
            except Exception:  # a bug must not stop the gauges for good: the next round
                log.exception("outbox_gauges_failed")
            await asyncio.sleep(GAUGES_EVERY)


_CONTROL_TYPES = {
    "monitor": "supervision.started",
    "monitor_change": "supervision.changed",
    "monitor_stop": "supervision.stopped",
}
_RECORDING_TYPES = {
    "start": "recording.started",
    "pause": "recording.paused",
    "resume": "recording.resumed",
    "stop": "recording.stopped",
}


def _control_done(stored: StoredEvent) -> StoredEvent | None:
    """`supervision.*` / `recording.*` for a control that was carried out."""
    data = stored.payload
    if stored.type != "call.control_attempted" or data.get("outcome") != "done":
        return None
    control, detail = data.get("control"), data.get("detail")
    if control == "recording":
        kind = _RECORDING_TYPES.get(str(detail))
        payload = {"path": data.get("path"), "actor": data.get("actor"), "action": detail}
    else:
        kind = _CONTROL_TYPES.get(str(control))
        payload = {"path": data.get("path"), "supervisor": data.get("actor"), "mode": detail}
    if kind is None or stored.call_id is None:
        return None
    return call_event(kind, stored.call_id, stored.occurred_at, payload)


# The deliveries waiting, and when the oldest was queued. Endpoint by endpoint, through
# `deliveries_due`: it reads the pending rows only. (`WHERE state = 'pending'` alone read the
# whole table, every delivery done in the retention's 90 days, every GAUGES_EVERY; CROSS JOIN
# keeps SQLite from choosing that scan.)
PENDING_SQL = (
    "SELECT count(*), min(d.first_at) FROM endpoints e CROSS JOIN deliveries d"
    " WHERE d.endpoint_id = e.id AND d.state = 'pending'"
)


def _pending(db: sqlite3.Connection) -> tuple[int, float | None]:
    row = db.execute(PENDING_SQL).fetchone()
    return int(row[0]), row[1]
