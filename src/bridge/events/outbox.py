"""The durable outbox: every stored event, the webhook endpoints and their deliveries, in one
SQLite database (`[events] outbox_path`; docs/events.md).

- **Never on the call path's clock.** `append` puts the event in memory and returns; one
  writer task commits what has accumulated as one transaction (a batch), in one thread of its
  own (SQLite's calls block), so the event loop never waits on the disk. While a batch is
  being written the next one accumulates: the busier, the bigger the batches.
- **Durable once committed.** WAL journal, `synchronous=NORMAL`: a committed batch survives
  the process being killed (`kill -9`); a batch being written when it dies is rolled back by
  SQLite at the next open, and nobody was told it was stored (`flush` returns after the
  commit). The database stays readable.
- **Deliveries with the events.** The batch that stores an event also queues its delivery to
  every enabled endpoint whose `types` take it, in the same transaction: an event is never
  stored without its deliveries, nor delivered twice under two ids.
- **A disk that fails** (full, read-only, gone) does not stop calls: the batch is counted as
  dropped and logged, `healthy` turns false with the reason (`/readyz`, an alert metric), and
  the next batch tries again.
- **An event that cannot be stored** does not stop the writer, nor take the rest of its batch
  with it: the batch is stored again one event at a time. Text that is not UTF-8 (a lone
  surrogate: what the SIP parser makes of bytes that are not UTF-8, kept to be sent back as
  they came) is stored with U+FFFD in its place (`outbox_text_replaced`); an event that still
  fails is dropped, counted and logged with its id (`outbox_event_refused`). Before this, one
  such event ended the writer: nothing more was stored, `flush` never returned, and an events
  worker whose daemon was gone never left.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from bridge.events.stored import StoredEvent
from bridge.text import valid_utf8

log = structlog.get_logger("bridge.events")

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    occurred_at TEXT NOT NULL,
    call_id TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_call ON events (call_id, seq);
CREATE INDEX IF NOT EXISTS events_by_time ON events (occurred_at);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, seq);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    types TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    endpoint_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ordering TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_at REAL NOT NULL,
    next_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    done_at REAL,
    PRIMARY KEY (endpoint_id, seq)
);
-- (deliveries_pending (endpoint_id, state, seq) served no query deliveries_due does not: one
-- b-tree fewer to update per delivery queued)
DROP INDEX IF EXISTS deliveries_pending;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (endpoint_id, state, next_at, seq);
CREATE INDEX IF NOT EXISTS deliveries_ordering ON deliveries (endpoint_id, ordering, seq);
"""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A webhook endpoint: where events are POSTed, signed with its secret."""

    id: str
    url: str
    secret: str  # whsec_<base64>
    types: tuple[str, ...] = ()  # () : every type; "call.*" : a prefix
    enabled: bool = True
    source: str = "api"  # "config" ([[events.endpoints]]) or "api"
    created_at: str = ""

    def takes(self, event_type: str) -> bool:
        if not self.types:
            return True
        return any(
            event_type == t or (t.endswith(".*") and event_type.startswith(t[:-1]))
            for t in self.types
        )

    def public(self) -> dict[str, Any]:
        """As the API shows it: never the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "types": list(self.types),
            "enabled": self.enabled,
            "source": self.source,
            "created_at": self.created_at,
        }


class Outbox:
    """See the module doc. `start` opens (and creates) the database, `append` stores an event
    in the background, `flush` waits until everything appended so far is committed, `run`
    does any other database work in the outbox's thread, `close` writes what is left."""

    def __init__(
        self,
        path: Path,
        *,
        batch_max: int = 2000,
        queue_max: int = 200_000,
        wall: Callable[[], float] = time.time,
        on_stored: Callable[[list[str]], None] | None = None,
        derive: Callable[[sqlite3.Connection, list[StoredEvent]], None] | None = None,
        schema: str = "",
    ) -> None:
        self.path = path
        self.batch_max = batch_max
        self.queue_max = queue_max
        self._wall = wall
        # Tables made from the events, in the transaction that stores them (call history).
        self._derive = derive
        self._extra_schema = schema
        # Told the endpoints that got new deliveries after each commit (the dispatcher).
        self.on_stored = on_stored
        # Told the events of each commit, with their `seq` (the live feed).
        self.on_committed: Callable[[list[StoredEvent]], None] | None = None
        # Told each batch once it is settled, in the order appended: the batch, the events
        # of it stored (with their `seq`; those stored before are left out), and whether it
        # was committed (False: dropped). The events worker reports each batch with it.
        self.on_settled: Callable[[list[StoredEvent], list[StoredEvent], bool], None] | None = None
        self._queue: collections.deque[StoredEvent] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._endpoints_lock = threading.Lock()
        self._appended = 0  # events handed to `append`
        self._settled = 0  # of those, stored or dropped
        self._settled_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.written = 0
        self.dropped = 0
        self.batches = 0
        self.healthy = True
        self.problem: str | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    # -- life ----------------------------------------------------------------------------------
    async def start(self) -> Outbox:
        self._on_loop()
        self._wakeup = asyncio.Event()
        await self.run(self._open)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="outbox")
        return self

    def _on_loop(self) -> None:
        # Where `append` must run: an audit record can come from a thread (a synchronous
        # route of the API runs in one), and an asyncio event is not thread-safe.
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def _from_thread(self, event: StoredEvent) -> bool:
        """True when `event` was handed to the loop's thread, which appends it."""
        if self._loop is None or threading.get_ident() == self._loop_thread:
            return False
        self._loop.call_soon_threadsafe(self.append, event)
        return True

    def _open(self, _: sqlite3.Connection | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA + self._extra_schema)
        self._db = db
        self._load_endpoints(db)

    async def close(self) -> None:
        """Write what is queued, stop the writer, close the database."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._db is not None:
            await self.run(lambda db: db.close())
            self._db = None
        self._thread.shutdown(wait=True)

    # -- writing ---------------------------------------------------------------------------------
    def append(self, event: StoredEvent) -> None:
        """Store `event` in the background (see the module doc); never blocks."""
        if self._from_thread(event):
            return
        self._appended += 1
        if len(self._queue) >= self.queue_max:
            self.dropped += 1
            self._settle(1)
            log.warning("outbox_full", dropped=self.dropped, queued=len(self._queue))
            return
        self._queue.append(event)
        if self._wakeup is not None:
            self._wakeup.set()

    async def flush(self) -> None:
        """Return once every event appended before this call is stored (or dropped)."""
        target = self._appended
        if self._settled >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settled_waiters.append((target, future))
        await future

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.batch_max))]
            await self._write(batch)
            self._settle(len(batch))

    async def _write(self, batch: list[StoredEvent]) -> None:
        """One batch in one transaction; if an event of it cannot be stored, one event at a
        time (see the module doc). Never raises: the writer goes on with the next batch."""
        refused: list[tuple[StoredEvent, str]] = []
        try:
            try:
                endpoints, committed = await self.run(lambda db, b=batch: self._store(db, b))
            except sqlite3.Error:
                raise
            except Exception as exc:  # an event of the batch, not the disk
                log.warning("outbox_batch_failed", events=len(batch), reason=repr(exc))
                self._forget(batch)
                endpoints, committed, refused = await self.run(
                    lambda db, b=batch: self._store_each(db, b)
                )
        except sqlite3.Error as exc:  # a full disk, a read-only file: calls go on
            self._forget(batch)
            self.dropped += len(batch)
            self._fail(str(exc), len(batch))
            self._notify([], [], batch, stored=False)
            return
        for event, reason in refused:
            log.error(
                "outbox_event_refused",
                event_id=event.id,
                event_type=event.type,
                call_id=event.call_id,
                reason=reason,
            )
        self.dropped += len(refused)
        self.written += len(batch) - len(refused)
        self.batches += 1
        if not self.healthy:
            log.info("outbox_writable_again", path=str(self.path))
        self.healthy, self.problem = True, None
        self._notify(endpoints, committed, batch)

    def _store_each(
        self, db: sqlite3.Connection, batch: list[StoredEvent]
    ) -> tuple[list[str], list[StoredEvent], list[tuple[StoredEvent, str]]]:
        """`_store` one event at a time: what it stored, and the events it could not store
        with why. A disk error still raises (the batch is then dropped as a whole)."""
        touched: set[str] = set()
        committed: list[StoredEvent] = []
        refused: list[tuple[StoredEvent, str]] = []
        for event in batch:
            try:
                endpoints, stored = self._store(db, [event])
            except sqlite3.Error:
                raise
            except Exception as exc:
                refused.append((event, repr(exc)))
                continue
            touched.update(endpoints)
            committed.extend(stored)
        return sorted(touched), committed, refused

    def _forget(self, batch: list[StoredEvent]) -> None:
        """A batch was rolled back: what the derived tables keep in memory of its calls is
        forgotten (they read the stored events back when they need them)."""
        forget = getattr(self._derive, "forget", None)
        if forget is not None:
            forget({event.call_id for event in batch if event.call_id is not None})

    def _notify(
        self,
        endpoints: list[str],
        committed: list[StoredEvent],
        batch: list[StoredEvent],
        *,
        stored: bool = True,
    ) -> None:
        """The listeners, after a batch. One that fails is logged: the writer goes on."""
        try:
            if endpoints and self.on_stored is not None:
                self.on_stored(endpoints)
            if committed and self.on_committed is not None:
                self.on_committed(committed)
            if self.on_settled is not None:
                self.on_settled(batch, committed, stored)
        except Exception:
            log.exception("outbox_listener_failed")

    def _fail(self, reason: str, count: int) -> None:
        if self.healthy:
            log.error("outbox_write_failed", path=str(self.path), reason=reason, dropped=count)
        else:
            log.warning("outbox_events_dropped", reason=reason, dropped=count)
        self.healthy, self.problem = False, reason

    def _settle(self, count: int) -> None:
        self._settled += count
        waiting = []
        for target, future in self._settled_waiters:
            if self._settled >= target:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._settled_waiters = waiting

    def _store(
        self, db: sqlite3.Connection, batch: list[StoredEvent]
    ) -> tuple[list[str], list[StoredEvent]]:
        """One transaction: the events and their deliveries. The endpoints that got some, and
        the events stored (with their `seq`)."""
        now = self._wall()
        with self._endpoints_lock:
            endpoints = [e for e in self._endpoints.values() if e.enabled]
        db.execute("BEGIN IMMEDIATE")
        try:
            committed = self._insert_events(db, batch)
            touched: set[str] = set()
            deliveries = []
            for endpoint in endpoints:
                for event in committed:
                    if endpoint.takes(event.type):
                        deliveries.append(
                            (endpoint.id, event.seq, event.call_id or event.id, now, now)
                        )
                        touched.add(endpoint.id)
            db.executemany(
                "INSERT INTO deliveries (endpoint_id, seq, ordering, state, first_at, next_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?)",
                deliveries,
            )
            if self._derive is not None and committed:
                self._derive(db, committed)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return sorted(touched), committed

    @staticmethod
    def _insert_events(db: sqlite3.Connection, batch: list[StoredEvent]) -> list[StoredEvent]:
        """The batch's events, in the open transaction, with their `seq`: those not stored
        already (an event appended twice, or sent again to a new events worker, is kept
        once: its id is unique).

        One `executemany` with the `seq`s given (this transaction holds the write lock, so
        the next `seq` is ours to give); only when some id was stored already (the changes
        fall short) is the batch rolled back to the savepoint and inserted row by row, to
        learn which. Row by row costs a statement's round trip per event: about a fifth of
        what storing an event costs."""
        rows = []
        for index, event in enumerate(batch):
            payload = compact_json(event.payload)
            if "\\ud" in payload or not (event.call_id or "").isascii():
                # (JSON escapes every surrogate: the search is cheap, and rarely true)
                clean = valid_text(event)
                if clean != event:
                    log.warning("outbox_text_replaced", event_id=clean.id, event_type=event.type)
                    event = batch[index] = clean
                    payload = compact_json(event.payload)
            rows.append(
                (
                    event.id,
                    event.type,
                    event.version,
                    event.occurred_at.isoformat(),
                    event.call_id,
                    payload,
                )
            )
        (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        db.execute("SAVEPOINT batch")
        before = db.total_changes
        db.executemany(_INSERT_EVENT, [(last + 1 + index, *row) for index, row in enumerate(rows)])
        if db.total_changes - before == len(rows):
            db.execute("RELEASE batch")
            return [event.with_seq(last + 1 + index) for index, event in enumerate(batch)]
        db.execute("ROLLBACK TO batch")
        db.execute("RELEASE batch")
        committed: list[StoredEvent] = []
        seq = last + 1
        for event, row in zip(batch, rows, strict=True):
            if db.execute(_INSERT_EVENT, (seq, *row)).rowcount:  # 0: stored already
                committed.append(event.with_seq(seq))
                seq += 1
        return committed

    # -- the database, off the loop --------------------------------------------------------------
    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(db)` in the outbox's thread (one at a time, with the writer's batches)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            return work(None)  # type: ignore[arg-type]  # (opening)
        return work(self._db)

    # -- endpoints -------------------------------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        with self._endpoints_lock:
            return sorted(self._endpoints.values(), key=lambda e: e.id)

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        with self._endpoints_lock:
            return self._endpoints.get(endpoint_id)

    def _load_endpoints(self, db: sqlite3.Connection) -> None:
        rows = db.execute(
            "SELECT id, url, secret, types, enabled, source, created_at FROM endpoints"
        ).fetchall()
        with self._endpoints_lock:
            self._endpoints = {
                row[0]: Endpoint(
                    id=row[0],
                    url=row[1],
                    secret=row[2],
                    types=tuple(json.loads(row[3])),
                    enabled=bool(row[4]),
                    source=row[5],
                    created_at=row[6],
                )
                for row in rows
            }

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        def save(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO endpoints (id, url, secret, types, enabled, source, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET url=excluded.url,"
                " secret=excluded.secret, types=excluded.types, enabled=excluded.enabled,"
                " source=excluded.source",
                (
                    endpoint.id,
                    endpoint.url,
                    endpoint.secret,
                    json.dumps(list(endpoint.types)),
                    int(endpoint.enabled),
                    endpoint.source,
                    endpoint.created_at,
                ),
            )
            with self._endpoints_lock:
                self._endpoints[endpoint.id] = endpoint

        await self.run(save)

    async def delete_endpoint(self, endpoint_id: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM deliveries WHERE endpoint_id = ?", (endpoint_id,))
            db.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))
            db.execute("COMMIT")
            with self._endpoints_lock:
                self._endpoints.pop(endpoint_id, None)

        await self.run(delete)

    async def sync_config_endpoints(self, configured: Iterable[Endpoint]) -> None:
        """The endpoints of the settings (`source="config"`): added or updated; those no
        longer configured are deleted, with their deliveries."""
        wanted = {e.id: e for e in configured}
        for endpoint in self.endpoints():
            if endpoint.source == "config" and endpoint.id not in wanted:
                await self.delete_endpoint(endpoint.id)
        for endpoint in wanted.values():
            old = self.endpoint(endpoint.id)
            created = old.created_at if old is not None else endpoint.created_at
            await self.save_endpoint(
                Endpoint(
                    endpoint.id,
                    endpoint.url,
                    endpoint.secret,
                    endpoint.types,
                    endpoint.enabled,
                    "config",
                    created or datetime.now().astimezone().isoformat(),
                )
            )

    # -- reading ---------------------------------------------------------------------------------
    async def event(self, event_id: str) -> StoredEvent | None:
        rows = await self.run(
            lambda db: db.execute(SELECT_EVENTS + " WHERE id = ?", (event_id,)).fetchall()
        )
        return event_from_row(rows[0]) if rows else None

    async def events(
        self, *, after_seq: int = 0, call_id: str | None = None, limit: int = 100
    ) -> list[StoredEvent]:
        query = SELECT_EVENTS + " WHERE seq > ?"
        args: list[Any] = [after_seq]
        if call_id is not None:
            query += " AND call_id = ?"
            args.append(call_id)
        query += " ORDER BY seq LIMIT ?"
        args.append(limit)
        rows = await self.run(lambda db: db.execute(query, args).fetchall())
        return [event_from_row(row) for row in rows]

    async def query(
        self,
        *,
        types: tuple[str, ...] = (),
        call_id: str | None = None,
        fields: dict[str, Any] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[StoredEvent]:
        """Stored events by type, call, payload fields (`{"actor": "sam"}`), time range; a
        page before (or after) a `seq` cursor."""
        sql = SELECT_EVENTS + " WHERE 1 = 1"
        args: list[Any] = []
        if types:
            sql += f" AND type IN ({', '.join('?' for _ in types)})"
            args += list(types)
        if call_id is not None:
            sql += " AND call_id = ?"
            args.append(call_id)
        for name, value in (fields or {}).items():
            sql += " AND json_extract(payload, ?) = ?"
            args += [f"$.{name}", value]
        if since is not None:
            sql += " AND occurred_at >= ?"
            args.append(since.astimezone(UTC).isoformat())
        if until is not None:
            sql += " AND occurred_at < ?"
            args.append(until.astimezone(UTC).isoformat())
        if before_seq is not None:
            sql += " AND seq < ?"
            args.append(before_seq)
        if after_seq is not None:
            sql += " AND seq > ?"
            args.append(after_seq)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(limit)
        rows = await self.run(lambda db: db.execute(sql, args).fetchall())
        return [event_from_row(row) for row in rows]

    async def prune(self, before: datetime, *, batch: int = 5000) -> int:
        """Delete the events that happened before `before`, with their deliveries and the
        call records of calls that ended before it, a batch per transaction (the writer's
        batches go on between them). Returns how many events went."""
        cutoff = before.astimezone(UTC).isoformat()
        total = 0

        def one_batch(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                seqs = [
                    row[0]
                    for row in db.execute(
                        "SELECT seq FROM events WHERE occurred_at < ? ORDER BY seq LIMIT ?",
                        (cutoff, batch),
                    ).fetchall()
                ]
                if seqs:
                    top = seqs[-1]
                    db.execute(
                        "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM events"
                        " WHERE occurred_at < ? AND seq <= ?)",
                        (cutoff, top),
                    )
                    db.execute(
                        "DELETE FROM events WHERE occurred_at < ? AND seq <= ?", (cutoff, top)
                    )
                    if _has_table(db, "calls"):  # (call history: bridge.events.history)
                        ended = cutoff.replace("+00:00", "Z")
                        db.execute("DELETE FROM calls WHERE ended_at < ?", (ended,))
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            return len(seqs)

        while True:
            removed = await self.run(one_batch)
            total += removed
            if removed < batch:
                return total

    async def seq_of(self, event_id: str) -> int | None:
        row = await self.run(
            lambda db: db.execute("SELECT seq FROM events WHERE id = ?", (event_id,)).fetchone()
        )
        return int(row[0]) if row else None

    async def count(self) -> int:
        row = await self.run(lambda db: db.execute("SELECT count(*) FROM events").fetchone())
        return int(row[0])

    def size_bytes(self) -> int:
        """The database and its WAL on disk."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total


_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (seq, id, type, version, occurred_at, call_id, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# json.dumps with arguments makes a new encoder per call: a fifth of encoding a small payload.
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def valid_text(event: StoredEvent) -> StoredEvent:
    """`event` with every text in it valid UTF-8: lone surrogates (bytes that were not UTF-8,
    as the SIP parser keeps them) become U+FFFD."""
    return StoredEvent(
        _valid(event.id),
        _valid(event.type),
        event.occurred_at,
        _valid(event.payload),
        _valid(event.call_id),
        event.version,
        event.seq,
    )


def _valid(value: Any) -> Any:
    if isinstance(value, str):
        return valid_utf8(value)
    if isinstance(value, dict):
        return {_valid(key): _valid(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_valid(item) for item in value]
    return value


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


SELECT_EVENTS = "SELECT seq, id, type, version, occurred_at, call_id, payload FROM events"


def event_from_row(row: tuple[Any, ...]) -> StoredEvent:
    """A row of `SELECT_EVENTS` as the event it stores."""
    return StoredEvent(
        seq=row[0],
        id=row[1],
        type=row[2],
        version=row[3],
        occurred_at=datetime.fromisoformat(row[4]),
        call_id=row[5],
        payload=json.loads(row[6]),
    )
