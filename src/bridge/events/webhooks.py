"""Outbound webhooks (Standard Webhooks): each endpoint gets the stored events it takes,
signed, at least once, in order per call (docs/events.md, "Webhooks").

- **The request**: `POST` of the event's JSON (`StoredEvent.to_json`) with `webhook-id` (the
  event's id: the same on every try, so a receiver drops duplicates), `webhook-timestamp`
  (this try's time) and `webhook-signature` (`v1,<base64>`, made by the `standardwebhooks`
  library with the endpoint's `whsec_` secret).
- **Success** is a 2xx. Anything else (a 3xx is not followed, a 4xx, a 5xx, a time-out, a
  refused connection) is tried again after an exponential backoff with jitter, capped at
  `retry_max_seconds` (an endpoint back from an outage gets its backlog within that); a 408
  or 429 waits what its `Retry-After` says (up to an hour). After `max_attempts` tries, or
  `dead_after_seconds` after the first, the delivery is dead-lettered (kept, listed, and
  replayable through the API).
- **Bounded**: a try takes at most `timeout_seconds`, and at most 64 KiB of the answer's body
  is read.
- **Order per call, no head-of-line across calls or endpoints**: each endpoint has its own
  task; it sends up to `concurrency` deliveries at once, never one of a call while an
  earlier one of the same call is still pending. A slow or dead endpoint holds back nothing
  but its own deliveries, and never the calls.
- **Durable**: the delivery state is in the outbox's database, so a restart goes on where it
  stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import structlog
from standardwebhooks import Webhook

from bridge.events.outbox import SELECT_EVENTS, Endpoint, Outbox, compact_json, event_from_row
from bridge.events.stored import StoredEvent
from bridge.text import ascii_digits

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("bridge.events.webhooks")

MAX_BODY_READ = 64 * 1024
MAX_RETRY_AFTER = 3600.0
FIRST_BACKOFF = 0.5


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    retry_max_seconds: float = 60.0
    max_attempts: int = 50
    dead_after_seconds: float = 86400.0
    timeout_seconds: float = 10.0
    concurrency: int = 8
    first_backoff_seconds: float = FIRST_BACKOFF  # doubled per try, up to retry_max_seconds


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one try of one delivery came to."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


class WebhookDispatcher:
    """See the module doc. `wake(endpoint_ids)` after the outbox stored deliveries for them
    (the outbox's `on_stored`)."""

    def __init__(
        self,
        outbox: Outbox,
        policy: DeliveryPolicy | None = None,
        *,
        wall: Callable[[], float] = time.time,
        on_attempt: Callable[[str, str, float | None], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.policy = policy or DeliveryPolicy()
        self._wall = wall
        # (endpoint id, outcome: delivered | retry | dead, seconds from the event to its
        # delivery or None): the metrics.
        self.on_attempt = on_attempt
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self._stopping = False

    async def start(self) -> None:
        self._started = True
        self.refresh()

    def _open_session(self) -> aiohttp.ClientSession:
        # aiohttp is imported with the first endpoint: an outbox without one (most tests,
        # many sites) does not pay for it in the events worker's start-up.
        import aiohttp

        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.policy.timeout_seconds),
            headers={"User-Agent": "bridge-webhooks"},
        )

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def refresh(self) -> None:
        """One task per enabled endpoint (after endpoints were added, changed, removed)."""
        if self._stopping or not self._started:
            return
        wanted = {e.id for e in self.outbox.endpoints() if e.enabled}
        if wanted and self._session is None:
            self._session = self._open_session()
        for endpoint_id in list(self._tasks):
            if endpoint_id not in wanted:
                self._tasks.pop(endpoint_id).cancel()
                self._wakeups.pop(endpoint_id, None)
        for endpoint_id in wanted - self._tasks.keys():
            self._wakeups[endpoint_id] = asyncio.Event()
            self._tasks[endpoint_id] = asyncio.get_running_loop().create_task(
                self._serve(endpoint_id), name=f"webhooks:{endpoint_id}"
            )
        for event in self._wakeups.values():
            event.set()

    def wake(self, endpoint_ids: list[str]) -> None:
        for endpoint_id in endpoint_ids:
            wakeup = self._wakeups.get(endpoint_id)
            if wakeup is not None:
                wakeup.set()

    # -- one endpoint ---------------------------------------------------------------------------
    async def _serve(self, endpoint_id: str) -> None:
        wakeup = self._wakeups[endpoint_id]
        in_flight: dict[int, asyncio.Task[None]] = {}
        while True:
            endpoint = self.outbox.endpoint(endpoint_id)
            if endpoint is None or not endpoint.enabled:
                return
            wakeup.clear()
            room = self.policy.concurrency - len(in_flight)
            ready: list[tuple[int, StoredEvent, int, float]] = []
            next_at: float | None = None
            if room > 0:
                try:
                    busy, now = set(in_flight), self._wall()
                    ready, next_at = await self.outbox.run(
                        lambda db, n=room, b=busy, t=now: _ready(db, endpoint_id, t, n, b)
                    )
                except Exception as exc:  # (the outbox closing, a locked file): try again
                    log.warning("webhook_queue_unreadable", endpoint=endpoint_id, error=str(exc))
                    next_at = self._wall() + 1.0
            for seq, event, attempts, first_at in ready:
                task = asyncio.get_running_loop().create_task(
                    self._deliver(endpoint, seq, event, attempts, first_at)
                )
                in_flight[seq] = task
                task.add_done_callback(lambda _, s=seq: self._finished(in_flight, s, wakeup))
            delay = None if next_at is None else max(0.0, next_at - self._wall())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), delay)

    def _finished(self, in_flight: dict[int, Any], seq: int, wakeup: asyncio.Event) -> None:
        """A delivery is done: look for more once half the endpoint's slots are free (one
        look at the queue for several deliveries, not one each)."""
        in_flight.pop(seq, None)
        if len(in_flight) <= self.policy.concurrency // 2:
            wakeup.set()

    async def _deliver(
        self, endpoint: Endpoint, seq: int, event: StoredEvent, attempts: int, first_at: float
    ) -> None:
        try:
            await self._try(endpoint, seq, event, attempts, first_at)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not stop the endpoint's task (it is tried again)
            log.exception("webhook_delivery_failed", endpoint=endpoint.id, event_id=event.id)
            await asyncio.sleep(1.0)  # (holding its slot: not tried again at once)

    async def _try(
        self, endpoint: Endpoint, seq: int, event: StoredEvent, attempts: int, first_at: float
    ) -> None:
        attempt = await self.send(endpoint, event)
        now = self._wall()
        attempts += 1
        policy = self.policy
        if attempt.ok:
            state, next_at, outcome = "delivered", now, "delivered"
        elif attempts >= policy.max_attempts or now - first_at >= policy.dead_after_seconds:
            state, next_at, outcome = "dead", now, "dead"
        else:
            state, outcome = "pending", "retry"
            if attempt.retry_after is not None:
                wait = min(attempt.retry_after, MAX_RETRY_AFTER)
            else:
                ceiling = min(
                    policy.retry_max_seconds, policy.first_backoff_seconds * 2 ** (attempts - 1)
                )
                wait = random.uniform(ceiling / 2, ceiling)  # jitter: not all at once
            next_at = now + wait
        if outcome == "dead":
            log.warning(
                "webhook_dead_letter",
                endpoint=endpoint.id,
                event_id=event.id,
                attempts=attempts,
                status=attempt.status,
                error=attempt.error,
            )
        elif outcome == "retry" and (attempts in (1, 5, 10) or attempts % 20 == 0):
            log.info(
                "webhook_retry",
                endpoint=endpoint.id,
                event_id=event.id,
                attempts=attempts,
                status=attempt.status,
                error=attempt.error,
            )

        def record(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, last_status = ?,"
                " last_error = ?, done_at = ? WHERE endpoint_id = ? AND seq = ?",
                (
                    state,
                    attempts,
                    next_at,
                    attempt.status,
                    attempt.error,
                    now if state != "pending" else None,
                    endpoint.id,
                    seq,
                ),
            )

        with contextlib.suppress(sqlite3.Error):  # (tried again after a restart)
            await self.outbox.run(record)
        if self.on_attempt is not None:
            latency = now - event.occurred_at.timestamp() if attempt.ok else None
            self.on_attempt(endpoint.id, outcome, latency)

    async def send(self, endpoint: Endpoint, event: StoredEvent) -> Attempt:
        """One signed POST of the event to the endpoint."""
        import aiohttp

        if self._session is None:  # (an endpoint not configured yet: the API's test send)
            self._session = self._open_session()
        body = compact_json(event.to_json())
        now = datetime.fromtimestamp(self._wall(), UTC)
        try:
            signature = Webhook(endpoint.secret).sign(event.id, now, body)
        except Exception as exc:  # a secret that is not whsec_<base64>
            return Attempt(False, error=f"cannot sign with this secret: {exc}")
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        try:
            async with self._session.post(
                endpoint.url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await response.content.read(MAX_BODY_READ)  # bounded: the rest is dropped
                status = response.status
                if 200 <= status < 300:
                    return Attempt(True, status)
                retry_after = (
                    _retry_after(response.headers.get("Retry-After"), self._wall())
                    if status in (408, 429)
                    else None
                )
                return Attempt(False, status, f"HTTP {status}", retry_after)
        except TimeoutError:
            return Attempt(False, error=f"no answer in {self.policy.timeout_seconds:g} s")
        except aiohttp.ClientError as exc:
            return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:300])
        except OSError as exc:
            return Attempt(False, error=str(exc)[:300])
        except ValueError as exc:  # (a URL the HTTP client cannot use: a failed try, counted)
            return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:300])

    # -- the API's questions --------------------------------------------------------------------
    async def stats(self, endpoint_id: str) -> dict[str, Any]:
        def query(db: sqlite3.Connection) -> dict[str, Any]:
            counts = dict(
                db.execute(
                    "SELECT state, count(*) FROM deliveries WHERE endpoint_id = ? GROUP BY state",
                    (endpoint_id,),
                ).fetchall()
            )
            oldest = db.execute(
                "SELECT min(first_at) FROM deliveries WHERE endpoint_id = ? AND state = 'pending'",
                (endpoint_id,),
            ).fetchone()[0]
            return {
                "pending": counts.get("pending", 0),
                "delivered": counts.get("delivered", 0),
                "dead": counts.get("dead", 0),
                "oldest_pending_seconds": None
                if oldest is None
                else round(max(0.0, self._wall() - oldest), 3),
            }

        return await self.outbox.run(query)

    async def deliveries(
        self, endpoint_id: str, *, state: str | None = None, after_seq: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        def query(db: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = (
                "SELECT d.seq, e.id, e.type, e.call_id, d.state, d.attempts, d.first_at,"
                " d.next_at, d.last_status, d.last_error, d.done_at FROM deliveries d"
                " JOIN events e ON e.seq = d.seq WHERE d.endpoint_id = ? AND d.seq > ?"
            )
            args: list[Any] = [endpoint_id, after_seq]
            if state is not None:
                sql += " AND d.state = ?"
                args.append(state)
            sql += " ORDER BY d.seq LIMIT ?"
            args.append(limit)
            return [
                {
                    "seq": row[0],
                    "event_id": row[1],
                    "type": row[2],
                    "call_id": row[3],
                    "state": row[4],
                    "attempts": row[5],
                    "first_at": _iso(row[6]),
                    "next_at": _iso(row[7]) if row[4] == "pending" else None,
                    "last_status": row[8],
                    "last_error": row[9],
                    "done_at": _iso(row[10]) if row[10] is not None else None,
                }
                for row in db.execute(sql, args).fetchall()
            ]

        return await self.outbox.run(query)

    async def replay(
        self,
        endpoint_id: str,
        *,
        event_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """Deliver again (same `webhook-id`): one event, or those that happened in a time range
        (that the endpoint takes). Returns how many were queued."""
        endpoint = self.outbox.endpoint(endpoint_id)
        if endpoint is None:
            return 0
        now = self._wall()

        def queue(db: sqlite3.Connection) -> int:
            if event_id is not None:
                rows = db.execute(
                    "SELECT seq, type, call_id, id FROM events WHERE id = ?", (event_id,)
                ).fetchall()
            else:
                sql, args = "SELECT seq, type, call_id, id FROM events WHERE 1 = 1", []
                if since is not None:
                    sql += " AND occurred_at >= ?"
                    args.append(since.astimezone(UTC).isoformat())
                if until is not None:
                    sql += " AND occurred_at < ?"
                    args.append(until.astimezone(UTC).isoformat())
                rows = db.execute(sql + " ORDER BY seq", args).fetchall()
            count = 0
            db.execute("BEGIN IMMEDIATE")
            for seq, kind, call_id, eid in rows:
                if event_id is None and not endpoint.takes(kind):
                    continue
                db.execute(
                    "INSERT INTO deliveries (endpoint_id, seq, ordering, state, attempts,"
                    " first_at, next_at) VALUES (?, ?, ?, 'pending', 0, ?, ?)"
                    " ON CONFLICT (endpoint_id, seq) DO UPDATE SET state = 'pending',"
                    " attempts = 0, first_at = excluded.first_at, next_at = excluded.next_at,"
                    " done_at = NULL",
                    (endpoint_id, seq, call_id or eid, now, now),
                )
                count += 1
            db.execute("COMMIT")
            return count

        count = await self.outbox.run(queue)
        self.wake([endpoint_id])
        return count


def _ready(
    db: sqlite3.Connection, endpoint_id: str, now: float, limit: int, busy: set[int]
) -> tuple[list[tuple[int, StoredEvent, int, float]], float | None]:
    """The deliveries of the endpoint due now, each the first pending one of its call; and
    when the next one falls due (None: nothing pending). The pending rows are walked in
    `next_at` order on their index, and only the events picked are read."""
    rows = db.execute(
        "SELECT d.seq, d.attempts, d.first_at, d.next_at FROM deliveries d"
        " WHERE d.endpoint_id = ? AND d.state = 'pending' AND NOT EXISTS ("
        "  SELECT 1 FROM deliveries p WHERE p.endpoint_id = d.endpoint_id"
        "  AND p.ordering = d.ordering AND p.state = 'pending' AND p.seq < d.seq)"
        " ORDER BY d.next_at, d.seq LIMIT ?",
        (endpoint_id, limit + len(busy)),
    ).fetchall()
    picked: list[tuple[int, int, float]] = []
    next_at = None
    for seq, attempts, first_at, due in rows:
        if seq in busy:
            continue
        if due <= now and len(picked) < limit:
            picked.append((seq, attempts, first_at))
        elif next_at is None or due < next_at:
            next_at = due
    if not picked:
        return [], next_at
    marks = ", ".join("?" for _ in picked)
    events = {
        row[0]: event_from_row(row)
        for row in db.execute(
            SELECT_EVENTS + f" WHERE seq IN ({marks})",
            [seq for seq, _, _ in picked],
        ).fetchall()
    }
    ready = [(seq, events[seq], a, f) for seq, a, f in picked if seq in events]
    return ready, next_at


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a `Retry-After` (seconds, or an HTTP date), None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if ascii_digits(value):
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
