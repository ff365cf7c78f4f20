"""Call history: one finished call's record, made from its stored events (docs/events.md,
"Call history").

`summarize` is a pure function of a call's events (in order): where it came from, the plan,
the layers and legs rung (who, how, when, how each ended and why), who answered, the
durations, the supervision sessions and recording controls, the voicemail left. The outbox
writes it to its `calls` table in the transaction that stores the call's `call.ended`
(`derive`), so the list of finished calls is one indexed query, and it is never out of step
with the events.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from bridge.events.outbox import SELECT_EVENTS, compact_json, event_from_row
from bridge.events.stored import StoredEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    ended_seq INTEGER NOT NULL,
    started_at TEXT,
    ended_at TEXT NOT NULL,
    path TEXT,
    line TEXT,
    outcome TEXT,
    answered_by TEXT,
    ring_group TEXT,
    users TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_end ON calls (ended_seq);
CREATE INDEX IF NOT EXISTS calls_by_line ON calls (line, ended_seq);
"""

CSV_COLUMNS = (
    "call_id",
    "path",
    "line",
    "caller",
    "started_at",
    "answered_at",
    "ended_at",
    "outcome",
    "cause",
    "answered_by",
    "answered_via",
    "ring_group",
    "wait_seconds",
    "talk_seconds",
    "users",
    "voicemail_id",
)


def _iso(event: StoredEvent) -> str:
    return event.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def summarize(call_id: str, events: list[StoredEvent]) -> dict[str, Any]:
    """The record of a call from its events (those stored so far, for a live call)."""
    record: dict[str, Any] = {
        "call_id": call_id,
        "state": "live",
        "path": None,
        "line": None,
        "line_name": None,
        "caller": None,
        "started_at": None,
        "answered_at": None,
        "ended_at": None,
        "outcome": None,
        "cause": None,
        "answered_by": None,
        "answered_via": None,
        "target": None,
        "ring_group": None,
        "wait_seconds": None,
        "talk_seconds": None,
        "wrap_up_seconds": None,
        "layers": [],
        "legs": [],
        "fallbacks": [],
        "supervision": [],
        "recording_controls": [],
        "voicemail": None,
        "users": [],
    }
    legs: dict[str, dict[str, Any]] = {}
    users: list[str] = []

    def leg(leg_id: str) -> dict[str, Any]:
        if leg_id not in legs:
            legs[leg_id] = {
                "leg_id": leg_id,
                "user_id": None,
                "via": None,
                "number": None,
                "layer_index": None,
                "ringing_at": None,
                "answered_at": None,
                "ended_at": None,
                "state": None,
                "reason": None,
                "failure": None,
            }
        return legs[leg_id]

    def user(user_id: Any) -> None:
        if isinstance(user_id, str) and user_id not in users:
            users.append(user_id)

    for event in events:
        data, kind, at = event.payload, event.type, _iso(event)
        record["path"] = record["path"] or data.get("path")
        if kind == "call.received":
            record.update(
                started_at=at,
                line=data.get("line"),
                line_name=data.get("line_name"),
                caller=data.get("caller"),
            )
        elif kind == "call.routed":
            target = data.get("target") or {}
            record["target"] = target
            if target.get("kind") == "ring_group":
                record["ring_group"] = target.get("id")
            record["plan_outcome"] = data.get("outcome")
        elif kind == "call.layer_ringing":
            record["layers"].append(
                {
                    "layer_index": data.get("layer_index"),
                    "fallback_depth": data.get("fallback_depth"),
                    "user_ids": data.get("user_ids", []),
                    "at": at,
                }
            )
            for uid in data.get("user_ids", []):
                user(uid)
        elif kind == "leg.ringing":
            entry = leg(data["leg_id"])
            entry["user_id"] = entry["user_id"] or data.get("user_id")
            entry["ringing_at"] = entry["ringing_at"] or at
            user(data.get("user_id"))
        elif kind == "call.answered":
            entry = leg(data["leg_id"])
            entry.update(user_id=data.get("user_id"), via=data.get("via"), answered_at=at)
            record.update(answered_at=at, answered_by=data.get("user_id"))
            record["answered_via"] = data.get("via")
            user(data.get("user_id"))
        elif kind == "leg.ended":
            entry = leg(data["leg_id"])
            for name in ("user_id", "via", "number", "layer_index", "state", "reason", "failure"):
                if data.get(name) is not None:
                    entry[name] = data[name]
            entry["ended_at"] = at
            user(data.get("user_id"))
        elif kind == "leg.declined":
            leg(data["leg_id"])["declined_digits"] = data.get("digits")
        elif kind == "call.fallback_started":
            record["fallbacks"].append({"action": data.get("action"), "why": data.get("why")})
        elif kind == "voicemail.left":
            record["voicemail"] = {
                "voicemail_id": data.get("voicemail_id"),
                "recording_sid": data.get("recording_sid"),
                "duration_seconds": data.get("duration_seconds"),
                "ended_by": data.get("ended_by"),
                "at": at,
            }
        elif kind == "call.control_attempted":
            entry = {
                "actor": data.get("actor"),
                "control": data.get("control"),
                "detail": data.get("detail"),
                "allowed": data.get("allowed"),
                "outcome": data.get("outcome"),
                "reason": data.get("reason"),
                "at": at,
            }
            if data.get("control") == "recording":
                record["recording_controls"].append(entry)
            else:
                record["supervision"].append(entry)
        elif kind == "call.ended":
            record.update(
                state="ended",
                ended_at=at,
                outcome=data.get("outcome"),
                cause=data.get("cause"),
                wait_seconds=data.get("wait_seconds"),
                talk_seconds=data.get("talk_seconds"),
                wrap_up_seconds=data.get("wrap_up_seconds"),
            )
    record["legs"] = list(legs.values())
    record["users"] = users
    return record


class Deriver:
    """`derive`, in the outbox's transaction: the `calls` row of each call that ended in the
    batch. The events of live calls are kept as they are stored, so a call's record is made
    without reading its events back (read back only for a call whose start this process did
    not see: one that began before a restart)."""

    def __init__(self, max_calls: int = 50_000) -> None:
        self.max_calls = max_calls
        self._live: dict[str, list[StoredEvent]] = {}

    def forget(self, call_ids: set[str]) -> None:
        """A batch with events of these calls was rolled back: their records are made from
        the stored events when they end."""
        for call_id in call_ids:
            self._live.pop(call_id, None)

    def __call__(self, db: sqlite3.Connection, committed: list[StoredEvent]) -> None:
        live = self._live
        for event in committed:
            call_id = event.call_id
            if call_id is None:
                continue
            events = live.get(call_id)
            if events is None:
                if len(live) >= self.max_calls:  # calls that never ended: forget the oldest
                    del live[next(iter(live))]
                events = live[call_id] = []
            events.append(event)
            if event.type == "call.ended":
                del live[call_id]
                if events[0].type != "call.received":
                    events = events_of(db, call_id)
                _store_record(db, event, summarize(call_id, events))


def derive(db: sqlite3.Connection, committed: list[StoredEvent]) -> None:
    """The `calls` row of each call that ended in this batch, from its stored events."""
    for event in committed:
        if event.type != "call.ended" or event.call_id is None:
            continue
        _store_record(db, event, summarize(event.call_id, events_of(db, event.call_id)))


def _store_record(db: sqlite3.Connection, event: StoredEvent, record: dict[str, Any]) -> None:
    db.execute(
        "INSERT OR REPLACE INTO calls (call_id, ended_seq, started_at, ended_at, path, line,"
        " outcome, answered_by, ring_group, users, summary)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.call_id,
            event.seq,
            record["started_at"],
            record["ended_at"],
            record["path"],
            record["line"],
            record["outcome"],
            record["answered_by"],
            record["ring_group"],
            json.dumps(record["users"]),
            compact_json(record),
        ),
    )


def csv_row(record: dict[str, Any]) -> list[str]:
    voicemail = record.get("voicemail") or {}
    values = {
        **record,
        "users": " ".join(record.get("users") or []),
        "voicemail_id": voicemail.get("voicemail_id") or voicemail.get("recording_sid"),
    }
    return ["" if values.get(c) is None else str(values.get(c)) for c in CSV_COLUMNS]


def query_calls(
    db: sqlite3.Connection,
    *,
    line: str | None = None,
    user: str | None = None,
    group: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: int | None = None,
    limit: int = 100,
    lines: tuple[str, ...] | None = None,
    involving: str | None = None,
) -> list[tuple[int, dict[str, Any]]]:
    """Finished calls, newest first: (their `ended_seq`, the record). `lines` / `involving`
    narrow them to what the asker may see (their lines; calls they were rung for or took)."""
    sql = "SELECT ended_seq, summary FROM calls WHERE 1 = 1"
    args: list[Any] = []
    for column, value in (("line", line), ("outcome", outcome), ("ring_group", group)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    for who in (user, involving):
        if who is not None:
            sql += " AND EXISTS (SELECT 1 FROM json_each(calls.users) WHERE value = ?)"
            args.append(who)
    if lines is not None:
        sql += f" AND line IN ({', '.join('?' for _ in lines) or 'NULL'})"
        args += list(lines)
    if since is not None:
        sql += " AND ended_at >= ?"
        args.append(since.astimezone(UTC).isoformat().replace("+00:00", "Z"))
    if until is not None:
        sql += " AND started_at < ?"
        args.append(until.astimezone(UTC).isoformat().replace("+00:00", "Z"))
    if before is not None:
        sql += " AND ended_seq < ?"
        args.append(before)
    sql += " ORDER BY ended_seq DESC LIMIT ?"
    args.append(limit)
    return [(row[0], json.loads(row[1])) for row in db.execute(sql, args).fetchall()]


def finished_call(db: sqlite3.Connection, call_id: str) -> dict[str, Any] | None:
    row = db.execute("SELECT summary FROM calls WHERE call_id = ?", (call_id,)).fetchone()
    return json.loads(row[0]) if row else None


def events_of(db: sqlite3.Connection, call_id: str) -> list[StoredEvent]:
    rows = db.execute(SELECT_EVENTS + " WHERE call_id = ? ORDER BY seq", (call_id,))
    return [event_from_row(row) for row in rows.fetchall()]
