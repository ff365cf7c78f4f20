"""The outbox (bridge.events.outbox): batched, durable, readable after a kill during a batch,
and a disk that fails does not stop whoever appends."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.calls.events import CallAnswered, CallEventRecord
from bridge.events.model import StoredEvent, from_call_record, new_event_id
from bridge.events.outbox import Endpoint, Outbox
from bridge.presence.model import Channel


def event(call_id: str | None = "CA1", n: int = 0, kind: str = "call.test") -> StoredEvent:
    return StoredEvent(
        id=new_event_id(),
        type=kind,
        occurred_at=datetime.now(UTC),
        payload={"n": n, "text": "é" * (n % 3)},
        call_id=call_id,
    )


def test_event_ids_are_uuidv7_in_time_order() -> None:
    ids = [new_event_id(1_700_000_000_000 + i) for i in range(50)]
    assert ids == sorted(ids)
    assert all(i[14] == "7" and i[19] in "89ab" for i in ids)  # version 7, variant 10
    assert len({new_event_id(5) for _ in range(1000)}) == 1000


def test_a_call_event_becomes_a_typed_versioned_payload() -> None:
    at = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    stored = from_call_record(
        CallEventRecord("CA9", "sip", at, CallAnswered("ana", "leg-1", Channel.APPS), "x1")
    )
    assert stored.type == "call.answered" and stored.call_id == "CA9" and stored.version == 1
    assert stored.payload == {
        "path": "sip",
        "user_id": "ana",
        "leg_id": "leg-1",
        "via": "apps",
        "leg_ref": "x1",
    }
    assert stored.to_json()["timestamp"] == "2026-12-06T10:00:00Z"


async def test_appended_events_are_stored_in_batches_in_order(tmp_path: Path) -> None:
    outbox = await Outbox(tmp_path / "events.sqlite").start()
    try:
        sent = [event(f"CA{i % 7}", i) for i in range(5000)]
        for e in sent:
            outbox.append(e)  # returns at once
        await outbox.flush()
        assert outbox.written == 5000 and outbox.dropped == 0
        assert outbox.batches < 100  # batched, not a transaction per event
        stored = await outbox.events(limit=10000)
        assert [e.id for e in stored] == [e.id for e in sent]
        assert stored[3].payload == sent[3].payload and stored[3].call_id == "CA3"
        assert [e.payload["n"] for e in await outbox.events(call_id="CA2", limit=3)] == [2, 9, 16]
    finally:
        await outbox.close()


async def test_events_endpoints_and_deliveries_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    outbox = await Outbox(path).start()
    await outbox.save_endpoint(Endpoint("crm", "http://127.0.0.1:9/h", "whsec_x", ("call.*",)))
    outbox.append(event(kind="call.ended"))
    outbox.append(event(kind="audit.recorded"))
    await outbox.flush()
    await outbox.close()
    again = await Outbox(path).start()
    try:
        assert await again.count() == 2
        assert [e.id for e in again.endpoints()] == ["crm"]
        pending = await again.run(
            lambda db: db.execute("SELECT endpoint_id, state FROM deliveries").fetchall()
        )
        assert pending == [("crm", "pending")]  # only the type the endpoint takes
    finally:
        await again.close()


async def test_an_event_appended_again_is_stored_and_queued_once(tmp_path: Path) -> None:
    """The same id twice in one batch, and again in a later batch (a new events worker is
    sent what it had not reported): one row, one delivery, and the rest of each batch
    stored in order with its `seq` (the batch falls back from one statement to row by row)."""
    outbox = await Outbox(tmp_path / "events.sqlite").start()
    committed: list[StoredEvent] = []
    outbox.on_committed = committed.extend
    try:
        await outbox.save_endpoint(Endpoint("crm", "http://127.0.0.1:9/h", "whsec_x"))
        first = [event("CA1", i) for i in range(5)]
        for e in [*first[:3], first[1], *first[3:]]:
            outbox.append(e)
        await outbox.flush()
        later = [event("CA2", 10), first[4], event("CA2", 11)]
        for e in later:
            outbox.append(e)
        await outbox.flush()
        expected = [*first, later[0], later[2]]
        stored = await outbox.events(limit=100)
        assert [e.id for e in stored] == [e.id for e in expected]
        assert [e.id for e in committed] == [e.id for e in expected]
        assert [e.seq for e in committed] == [e.seq for e in stored]
        assert len({e.seq for e in stored}) == 7
        rows = await outbox.run(
            lambda db: db.execute("SELECT seq FROM deliveries ORDER BY seq").fetchall()
        )
        assert [seq for (seq,) in rows] == [e.seq for e in stored]  # one delivery each
    finally:
        await outbox.close()


async def test_a_full_database_drops_the_batch_reports_it_and_recovers(tmp_path: Path) -> None:
    outbox = await Outbox(tmp_path / "events.sqlite").start()
    try:
        outbox.append(event())
        await outbox.flush()
        pages = await outbox.run(lambda db: db.execute("PRAGMA page_count").fetchone()[0])
        await outbox.run(lambda db: db.execute(f"PRAGMA max_page_count = {pages}"))
        for i in range(500):  # more than the pages left hold
            outbox.append(event(n=i))
        await outbox.flush()  # returns: the caller is never stuck on the disk
        assert not outbox.healthy and "full" in (outbox.problem or "")
        assert outbox.dropped == 500
        await outbox.run(lambda db: db.execute("PRAGMA max_page_count = 1073741823"))
        outbox.append(event(n=1))
        await outbox.flush()
        assert outbox.healthy and outbox.problem is None
        assert await outbox.count() == 2  # the dropped batch left nothing half-written
    finally:
        await outbox.close()


def test_an_outbox_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    async def start() -> None:
        await Outbox(blocker / "events.sqlite").start()

    with pytest.raises((OSError, sqlite3.Error)):
        asyncio.run(start())


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from bridge.events.model import StoredEvent, new_event_id
    from bridge.events.outbox import Outbox

    async def main() -> None:
        outbox = await Outbox(Path(sys.argv[1])).start()
        told = 0
        while True:
            for i in range(1000):
                outbox.append(StoredEvent(new_event_id(), "t", datetime.now(UTC), {"i": i}))
            await outbox.flush()
            told += 1000
            print(told, flush=True)

    asyncio.run(main())
    """
)


def test_kill_during_batches_leaves_a_readable_database_with_whole_batches(
    tmp_path: Path,
) -> None:
    """kill -9 while the writer commits batch after batch: the database opens, passes SQLite's
    integrity check, and holds whole batches only, at least every one the writer reported
    stored (what it never reported may be lost, nothing it did)."""
    path = tmp_path / "events.sqlite"
    for run in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
        )
        told = 0
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while told < 5000 + run * 2000 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            told = int(line)
        time.sleep(0.003 * run)  # somewhere in the next batch
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert told >= 5000, "the child stored too little"
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            count = db.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            db.close()
        assert count % 1000 == 0, count  # whole batches
        assert count >= told, (count, told)
        path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_every_event_type_is_documented_with_an_example() -> None:
    """docs/events.md has a section (`### \\`type\\``) with a JSON example for each type the
    outbox stores."""
    from bridge.control.events import ControlAttempted
    from bridge.events.model import CALL_EVENT_TYPES, _snake

    docs = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    types = set(CALL_EVENT_TYPES.values()) | {
        f"call.{_snake(ControlAttempted.__name__)}",
        "call.received",
        "call.routed",
        "leg.ended",
        "audit.recorded",
        "directory.changed",
    }
    for kind in sorted(types):
        heading = f"### `{kind}`"
        assert heading in docs, kind
        section = docs.split(heading, 1)[1].split("\n### ", 1)[0]
        assert f'"type": "{kind}"' in section, kind
    for kind in ("supervision.started", "recording.started"):  # (derived: one section each)
        assert f'"type": "{kind}"' in docs, kind
    for kind in ("supervision.changed", "supervision.stopped", "recording.paused"):
        assert f"`{kind}`" in docs, kind


async def test_a_calls_record_is_made_from_its_events_even_across_a_restart(
    tmp_path: Path,
) -> None:
    """The record is made from the events the writer kept for the live call; a call that began
    before a restart has its first events read back from the database."""
    from bridge.events import history

    path = tmp_path / "events.sqlite"

    def at(second: int) -> datetime:
        return datetime(2026, 12, 6, 10, 0, second, tzinfo=UTC)

    def stored(kind: str, call_id: str, second: int, **data: object) -> StoredEvent:
        return StoredEvent(new_event_id(), kind, at(second), dict(data), call_id=call_id)

    def opened() -> Outbox:
        return Outbox(path, derive=history.Deriver(), schema=history.SCHEMA)

    outbox = await opened().start()
    outbox.append(stored("call.received", "CA1", 0, path="sip", line="+1555", caller="+1999"))
    outbox.append(stored("call.received", "CA2", 1, path="sip", line="+1555", caller="+1888"))
    outbox.append(stored("call.ended", "CA2", 3, path="sip", outcome="hangup", cause="rejected"))
    await outbox.flush()
    await outbox.close()  # CA1 is still going
    again = await opened().start()
    try:
        again.append(stored("call.answered", "CA1", 5, path="sip", user_id="ana", leg_id="CA1/1"))
        again.append(stored("call.ended", "CA1", 9, path="sip", outcome="answered"))
        await again.flush()
        records = {
            r["call_id"]: r
            for _, r in await again.run(lambda db: history.query_calls(db, limit=10))
        }
        assert records["CA2"]["outcome"] == "hangup" and records["CA2"]["caller"] == "+1888"
        assert records["CA1"]["caller"] == "+1999"  # read back: received before the restart
        assert records["CA1"]["answered_by"] == "ana" and records["CA1"]["outcome"] == "answered"
        assert records["CA1"]["started_at"] == "2026-12-06T10:00:00Z"
    finally:
        await again.close()


async def test_the_pending_gauge_reads_only_pending_deliveries(tmp_path: Path) -> None:
    """`bridge_outbox_pending` and its oldest age, read every few seconds: the count and the
    oldest of the pending deliveries of every endpoint, found through an index (done
    deliveries are kept for the retention's 90 days: a scan of them all would grow with it)."""
    from bridge.events.service import PENDING_SQL, _pending

    outbox = await Outbox(tmp_path / "events.sqlite", wall=lambda: 1000.0).start()
    try:
        await outbox.save_endpoint(Endpoint("crm", "http://127.0.0.1:9/h", "whsec_x"))
        await outbox.save_endpoint(Endpoint("bi", "http://127.0.0.1:9/b", "whsec_y"))
        for i in range(6):
            outbox.append(event("CA1", i))
        await outbox.flush()

        def settle(db: sqlite3.Connection) -> None:  # (as the dispatcher marks them done)
            db.execute(
                "UPDATE deliveries SET state = 'done', first_at = 1.0 WHERE endpoint_id = 'crm'"
            )
            db.execute("UPDATE deliveries SET first_at = 900.0 WHERE seq = 1")

        await outbox.run(settle)
        assert await outbox.run(_pending) == (6, 900.0)  # bi's six; the oldest queued at 900
        plan = await outbox.run(
            lambda db: [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + PENDING_SQL)]
        )
        assert not any(step.startswith("SCAN d") for step in plan), plan
        assert any("deliveries_due" in step for step in plan), plan
    finally:
        await outbox.close()


async def test_text_that_is_not_utf8_is_stored_with_replacement_characters(
    tmp_path: Path,
) -> None:
    """The SIP parser keeps bytes that are not UTF-8 as lone surrogates (to send them back as
    they came); SQLite takes only UTF-8. Such an event is stored with U+FFFD in their place,
    the call's record too, and the writer goes on (it used to die on the first one, and
    nothing was stored after it)."""
    from bridge.events import history

    outbox = await Outbox(
        tmp_path / "events.sqlite", derive=history.Deriver(), schema=history.SCHEMA
    ).start()
    try:
        at = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
        # b"+1555\xff\xfe" and b"CA\xff1" as the parser decodes them
        caller, call_id = b"+1555\xff\xfe".decode("utf-8", "surrogateescape"), "CA\udcff1"
        received = StoredEvent(
            new_event_id(),
            "call.received",
            at,
            {"path": "sip", "line": "+1555\udcff", "caller": caller, "line_name": "Zoë"},
            call_id=call_id,
        )
        ended = StoredEvent(new_event_id(), "call.ended", at, {"outcome": "hangup"}, call_id)
        outbox.append(received)
        outbox.append(ended)
        outbox.append(event("CA2", 7))
        await asyncio.wait_for(outbox.flush(), 10)
        assert (outbox.written, outbox.dropped, outbox.healthy) == (3, 0, True)
        stored = await outbox.events(limit=10)
        assert [e.id for e in stored] == [received.id, ended.id, stored[2].id]
        assert stored[0].call_id == "CA\ufffd1" and stored[1].call_id == "CA\ufffd1"
        assert stored[0].payload["caller"] == "+1555\ufffd\ufffd"
        assert stored[0].payload["line_name"] == "Zoë"  # valid text is left as it is
        assert stored[2].payload["n"] == 7
        records = await outbox.run(lambda db: history.query_calls(db, limit=10))
        record = next(r for _, r in records if r["call_id"] == "CA\ufffd1")
        assert record["line"] == "+1555\ufffd" and record["outcome"] == "hangup"
        # and the writer is still there
        outbox.append(event("CA3", 8))
        await asyncio.wait_for(outbox.flush(), 10)
        assert outbox.written == 4
    finally:
        await outbox.close()


async def test_an_event_that_cannot_be_stored_is_dropped_alone_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    outbox = await Outbox(tmp_path / "events.sqlite").start()
    try:
        good = [event("CA1", n) for n in range(5)]
        bad = StoredEvent(new_event_id(), "call.test", datetime.now(UTC), {"x": {1, 2}}, "CA1")
        for item in (*good[:2], bad, *good[2:]):
            outbox.append(item)
        await asyncio.wait_for(outbox.flush(), 10)
        assert (outbox.written, outbox.dropped, outbox.healthy) == (5, 1, True)
        assert [e.id for e in await outbox.events(limit=10)] == [e.id for e in good]
        outbox.append(event("CA1", 9))
        await asyncio.wait_for(outbox.flush(), 10)
        assert outbox.written == 6
    finally:
        await outbox.close()
