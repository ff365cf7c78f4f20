"""The events worker (`[events] writer = "process"`, the default): the outbox's writer and the
webhook deliveries in a child process. What the daemon hands over is stored once, in order,
whatever happens to either process; the live feed and the counters behave as in-process."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.config import Settings
from bridge.events.model import StoredEvent, new_event_id
from bridge.events.outbox import Outbox
from bridge.events.service import EventsService
from bridge.events.worker import WorkerOutbox
from bridge.observability.metrics import Metrics
from tests.events.test_retention import Hooks

SRC = Path(__file__).resolve().parents[2] / "src"


def event(index: int, call_id: str | None = None) -> StoredEvent:
    at = datetime.now(UTC)
    call = call_id or f"CA{index % 7}"
    payload = {"n": index, "path": "sip"}
    return StoredEvent(new_event_id(), "call.test", at, payload, call_id=call)


def service(tmp_path: Path, **events: object) -> EventsService:
    settings = Settings(config_dir=tmp_path, events={"outbox_path": "o.sqlite", **events})
    return EventsService(settings, runner=Hooks(), store=Hooks(), metrics=Metrics())  # type: ignore[arg-type]


def rows(path: Path) -> list[tuple[str, int]]:
    db = sqlite3.connect(path, timeout=10)
    try:
        return db.execute(
            "SELECT id, json_extract(payload, '$.n') FROM events ORDER BY seq"
        ).fetchall()
    finally:
        db.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # (a zombie still answers: it is gone when its state says so)
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_child_process_stores_what_the_daemon_hands_over(tmp_path: Path) -> None:
    events = service(tmp_path)
    await events.start()
    try:
        outbox = events.outbox
        assert isinstance(outbox, WorkerOutbox)
        assert await asyncio.wait_for(outbox.wait_ready(), 30) == outbox.pid != os.getpid()
        assert Path(f"/proc/{outbox.pid}/cmdline").read_bytes().find(b"bridge.events.worker") > 0
        # A service manager's SIGTERM to the whole group does not stop it (the daemon does).
        os.kill(outbox.pid, signal.SIGTERM)
        feed = events.follow(10_000)
        sent = [event(i) for i in range(3000)]
        for item in sent:
            events.append(item)
        await asyncio.wait_for(outbox.flush(), 30)
        assert outbox.written == 3000 and outbox.dropped == 0 and outbox.healthy
        stored = rows(tmp_path / "o.sqlite")
        assert [r[0] for r in stored] == [e.id for e in sent]  # each once, in order
        fed = [feed.get_nowait() for _ in range(feed.qsize())]
        assert [e.id for e in fed if e] == [e.id for e in sent]
        assert all(e is not None and e.seq for e in fed)
        assert [e.seq for e in fed] == sorted(e.seq for e in fed if e)  # type: ignore[type-var]
        # Reads go through the daemon's own connection to the same database.
        assert await outbox.count() == 3000
        assert [e.id for e in await outbox.events(limit=2)] == [sent[0].id, sent[1].id]
        worker = outbox.pid
    finally:
        await events.stop()
    assert not alive(worker)


async def test_a_worker_that_dies_is_started_again_and_nothing_is_lost(tmp_path: Path) -> None:
    events = service(tmp_path)
    await events.start()
    try:
        outbox = events.outbox
        assert isinstance(outbox, WorkerOutbox)
        first = await asyncio.wait_for(outbox.wait_ready(), 30)
        sent = [event(i) for i in range(4000)]
        for item in sent[:2000]:
            events.append(item)
        await asyncio.sleep(0)  # (handed over: some stored, some not yet reported)
        os.kill(first, signal.SIGKILL)
        for item in sent[2000:]:
            events.append(item)
        await asyncio.wait_for(outbox.flush(), 30)
        assert outbox.pid != first and outbox.restarts == 1
        assert outbox.healthy, outbox.problem
        stored = rows(tmp_path / "o.sqlite")
        assert sorted(r[0] for r in stored) == sorted(e.id for e in sent)  # all, once each
        assert [r[0] for r in stored] == [e.id for e in sent]  # and in order
    finally:
        await events.stop()


def test_a_daemon_killed_with_sigkill_loses_nothing_it_handed_over(tmp_path: Path) -> None:
    """The daemon dies at once (`kill -9`) with events handed over and not yet stored: the
    worker sees its pipe close, writes them and leaves."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from pathlib import Path
        from datetime import UTC, datetime
        from bridge.events.model import StoredEvent, new_event_id
        from bridge.events.webhooks import DeliveryPolicy
        from bridge.events.worker import WorkerOutbox

        async def main():
            outbox = WorkerOutbox(Path({str(tmp_path / "o.sqlite")!r}), policy=DeliveryPolicy())
            await outbox.start()
            for i in range(20000):
                outbox.append(StoredEvent(new_event_id(), "call.test", datetime.now(UTC),
                                          {{"n": i}}, call_id="CA"))
            outbox._send()
            await outbox._process.stdin.drain()  # (handed over: in the pipe)
            print(outbox.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}:{SRC.parent}"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker), "the worker outlived the daemon"
    stored = rows(tmp_path / "o.sqlite")
    assert [r[1] for r in stored] == list(range(20000))


@pytest.mark.parametrize("writer", ["thread"])
async def test_the_writer_can_stay_in_the_daemons_process(tmp_path: Path, writer: str) -> None:
    events = service(tmp_path, writer=writer)
    await events.start()
    try:
        assert type(events.outbox) is Outbox
        sent = [event(i) for i in range(100)]
        for item in sent:
            events.append(item)
        await asyncio.wait_for(events.outbox.flush(), 10)
        assert [r[0] for r in rows(tmp_path / "o.sqlite")] == [e.id for e in sent]
    finally:
        await events.stop()


async def test_an_append_from_another_thread_is_stored(tmp_path: Path) -> None:
    """An audit record can come from a thread (a synchronous API route runs in one)."""
    events = service(tmp_path)
    await events.start()
    try:
        item = event(1)
        await asyncio.to_thread(events.append, item)
        await asyncio.sleep(0.05)
        await asyncio.wait_for(events.outbox.flush(), 10)
        assert [r[0] for r in rows(tmp_path / "o.sqlite")] == [item.id]
    finally:
        await events.stop()


async def test_a_read_waits_for_what_came_before_it_but_not_for_a_stuck_worker(
    tmp_path: Path,
) -> None:
    """`caught_up` (the API's reads of records call it first): an event appended just before
    is stored when it returns; with the worker stopped (SIGSTOP) it gives up after `within`
    and the read goes on with what is stored."""
    events = service(tmp_path)
    await events.start()
    outbox = events.outbox
    assert isinstance(outbox, WorkerOutbox)
    try:
        await asyncio.wait_for(outbox.wait_ready(), 30)
        first = event(1)
        events.append(first)
        await asyncio.wait_for(events.caught_up(), 10)
        assert [r[0] for r in rows(tmp_path / "o.sqlite")] == [first.id]  # no sleep needed

        os.kill(outbox.pid, signal.SIGSTOP)
        try:
            second = event(2)
            events.append(second)
            began = time.monotonic()
            await asyncio.wait_for(events.caught_up(within=0.3), 10)
            assert time.monotonic() - began >= 0.25  # it waited, and then gave up
            assert [r[0] for r in rows(tmp_path / "o.sqlite")] == [first.id]
        finally:
            os.kill(outbox.pid, signal.SIGCONT)
        await asyncio.wait_for(events.caught_up(), 10)
        assert [r[0] for r in rows(tmp_path / "o.sqlite")] == [first.id, second.id]
    finally:
        await events.stop()


async def test_an_event_the_worker_cannot_store_is_dropped_alone_and_it_still_leaves(
    tmp_path: Path,
) -> None:
    """An event that cannot be stored (here a payload JSON cannot carry) is counted dropped
    on the daemon's side, the rest are stored, text that is not UTF-8 is stored with U+FFFD,
    and the worker still leaves when the daemon stops (its writer used to die on such an
    event, and the worker then waited for it forever)."""
    events = service(tmp_path)
    await events.start()
    try:
        outbox = events.outbox
        assert isinstance(outbox, WorkerOutbox)
        worker = await asyncio.wait_for(outbox.wait_ready(), 30)
        sent = [event(i) for i in range(10)]
        bad = StoredEvent(new_event_id(), "call.test", datetime.now(UTC), {"n": {1}}, "CA1")
        odd = event(10, call_id="CA\udcff")
        for item in (*sent[:5], bad, odd, *sent[5:]):
            events.append(item)
        await asyncio.wait_for(outbox.flush(), 30)
        assert (outbox.written, outbox.dropped, outbox.healthy) == (11, 1, True)
        stored = rows(tmp_path / "o.sqlite")
        assert [r[0] for r in stored] == [e.id for e in (*sent[:5], odd, *sent[5:])]
        assert (await outbox.event(odd.id)).call_id == "CA\ufffd"  # type: ignore[union-attr]
    finally:
        await asyncio.wait_for(events.stop(), 30)
    assert not alive(worker)
