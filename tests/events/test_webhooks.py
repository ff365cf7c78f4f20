"""Webhook delivery (bridge.events.webhooks) to a real HTTP receiver on loopback that verifies
each signature with the Standard Webhooks library: signed, at least once under one id, in
order per call, retried with backoff, Retry-After honoured, bounded in time and memory,
dead-lettered, replayed, and durable across a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.events.model import StoredEvent, new_event_id
from bridge.events.outbox import Endpoint, Outbox
from bridge.events.webhooks import DeliveryPolicy, WebhookDispatcher
from tests.events.receiver import SECRET, Receiver

FAST = DeliveryPolicy(
    retry_max_seconds=0.3, first_backoff_seconds=0.05, timeout_seconds=2.0, max_attempts=50
)


def event(call_id: str | None, n: int, kind: str = "call.test") -> StoredEvent:
    return StoredEvent(new_event_id(), kind, datetime.now(UTC), {"n": n}, call_id=call_id)


class Setup:
    def __init__(self, path: Path, policy: DeliveryPolicy) -> None:
        self.path = path
        self.policy = policy
        self.outcomes: list[tuple[str, str]] = []

    async def start(self, *endpoints: Endpoint) -> Setup:
        self.outbox = await Outbox(self.path).start()
        for endpoint in endpoints:
            await self.outbox.save_endpoint(endpoint)
        self.dispatcher = WebhookDispatcher(
            self.outbox, self.policy, on_attempt=lambda e, o, _: self.outcomes.append((e, o))
        )
        self.outbox.on_stored = self.dispatcher.wake
        await self.dispatcher.start()
        return self

    async def stop(self) -> None:
        await self.dispatcher.stop()
        await self.outbox.close()

    async def append(self, *events: StoredEvent) -> None:
        for e in events:
            self.outbox.append(e)
        await self.outbox.flush()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def endpoint(receiver: Receiver, name: str = "crm", **kw: Any) -> Endpoint:
    return Endpoint(name, receiver.url, SECRET, **kw)


async def test_each_event_is_posted_signed_under_its_own_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    setup = await Setup(tmp_path / "o.sqlite", FAST).start(endpoint(receiver))
    try:
        sent = [event("CA1", 0), event("CA1", 1), event(None, 2, "directory.changed")]
        await setup.append(*sent)
        got = await receiver.wait_for(3)
        assert all(r.verified for r in got)  # standardwebhooks.Webhook.verify accepted each
        by_id = {r.webhook_id: r for r in got}
        assert set(by_id) == {e.id for e in sent}
        call = [r.webhook_id for r in got if r.body["call_id"] == "CA1"]
        assert call == [sent[0].id, sent[1].id]  # one call's in order
        assert got[0].signature.startswith("v1,")
        assert abs(int(got[0].timestamp) - time.time()) < 5
        assert by_id[sent[2].id].body == sent[2].to_json()
        assert got[0].body["type"] == "call.test" and got[0].body["call_id"] == "CA1"
        assert await setup.dispatcher.stats("crm") == {
            "pending": 0,
            "delivered": 3,
            "dead": 0,
            "oldest_pending_seconds": None,
        }
    finally:
        await setup.stop()


async def test_failures_are_retried_with_the_same_id_until_delivered(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer = lambda got, body: 503 if len(got) < 3 else 200
    setup = await Setup(tmp_path / "o.sqlite", FAST).start(endpoint(receiver))
    try:
        sent = event("CA1", 0)
        await setup.append(sent)
        await receiver.wait_for(1)
        assert [r.status for r in receiver.got] == [503, 503, 503, 200]
        assert {r.webhook_id for r in receiver.got} == {sent.id}
        assert all(r.verified for r in receiver.got)  # each try signed afresh
        gaps = [b.at - a.at for a, b in zip(receiver.got, receiver.got[1:], strict=False)]
        assert all(0.02 <= g < 1.0 for g in gaps), gaps  # backoff, capped
        assert setup.outcomes == [("crm", "retry")] * 3 + [("crm", "delivered")]
    finally:
        await setup.stop()


async def test_429_waits_what_retry_after_says(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answer = lambda got, body: 429 if not got else 200
    receiver.retry_after = "1"
    setup = await Setup(tmp_path / "o.sqlite", FAST).start(endpoint(receiver))
    try:
        await setup.append(event("CA1", 0))
        await receiver.wait_for(1, timeout=5)
        assert receiver.got[1].at - receiver.got[0].at >= 0.95  # not the 0.3 s cap
    finally:
        await setup.stop()


async def test_a_retry_after_that_is_not_a_number_is_ignored(
    tmp_path: Path, receiver: Receiver
) -> None:
    """ "²" passes str.isdigit and float() refuses it: such a Retry-After is not one, the try
    counts and the backoff applies. (The delivery raised: the try was not counted, so an
    endpoint that always answered so was tried every second for ever, never dead.)"""
    receiver.answer = lambda got, body: 429
    receiver.retry_after = "\u00b2"
    policy = DeliveryPolicy(retry_max_seconds=0.1, first_backoff_seconds=0.02, max_attempts=3)
    setup = await Setup(tmp_path / "o.sqlite", policy).start(endpoint(receiver))
    try:
        await setup.append(event("CA1", 0))
        deadline = time.monotonic() + 10
        while not await setup.dispatcher.deliveries("crm", state="dead"):
            assert time.monotonic() < deadline, receiver.got
            await asyncio.sleep(0.02)
        assert [r.status for r in receiver.got] == [429, 429, 429]
        assert setup.outcomes == [("crm", "retry"), ("crm", "retry"), ("crm", "dead")]
    finally:
        await setup.stop()


async def test_a_url_the_http_client_cannot_use_is_a_counted_failed_try(tmp_path: Path) -> None:
    """An endpoint stored before its URL was checked as the API checks it now (a host the
    IDNA codec refuses): each try raised uncounted, retried every second for ever."""
    policy = DeliveryPolicy(retry_max_seconds=0.1, first_backoff_seconds=0.02, max_attempts=3)
    bad = Endpoint("crm", "http://a..b/x", SECRET)
    setup = await Setup(tmp_path / "o.sqlite", policy).start(bad)
    try:
        await setup.append(event("CA1", 0))
        deadline = time.monotonic() + 10
        while not await setup.dispatcher.deliveries("crm", state="dead"):
            assert time.monotonic() < deadline, setup.outcomes
            await asyncio.sleep(0.02)
        [row] = await setup.dispatcher.deliveries("crm")
        assert row["attempts"] == 3 and "label" in (row["last_error"] or "")
    finally:
        await setup.stop()


async def test_a_redirect_is_not_followed_and_a_huge_answer_is_not_read_whole(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer = lambda got, body: 302 if not got else 200
    receiver.huge = True  # 10 MiB after the headers, every time
    setup = await Setup(tmp_path / "o.sqlite", FAST).start(endpoint(receiver))
    try:
        await setup.append(event("CA1", 0))
        await receiver.wait_for(1)
        assert [r.status for r in receiver.got] == [302, 200]  # the redirect was a failure
        # (the receiver has the second request before the dispatcher has read its answer's
        # head and stored the outcome: wait for that, bounded)
        deadline = time.monotonic() + 10
        rows = await setup.dispatcher.deliveries("crm")
        while rows[0]["state"] != "delivered" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            rows = await setup.dispatcher.deliveries("crm")
        assert rows[0]["state"] == "delivered" and rows[0]["attempts"] == 2
    finally:
        await setup.stop()


async def test_an_endpoint_that_never_answers_times_out_and_holds_no_other_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    dead = await Receiver(hang=True).start()
    policy = DeliveryPolicy(retry_max_seconds=0.3, first_backoff_seconds=0.05, timeout_seconds=0.5)
    setup = await Setup(tmp_path / "o.sqlite", policy).start(
        endpoint(dead, "hangs"), endpoint(receiver, "crm")
    )
    try:
        started = time.monotonic()
        await setup.append(*[event(f"CA{i}", i) for i in range(20)])
        await receiver.wait_for(20, timeout=3)
        assert time.monotonic() - started < 2.0  # not behind the other endpoint's time-outs
        await asyncio.sleep(1.2)
        rows = await setup.dispatcher.deliveries("hangs", state="pending")
        assert rows and rows[0]["last_error"] == "no answer in 0.5 s"
        assert rows[0]["attempts"] >= 1
    finally:
        await setup.stop()
        await dead.stop()


async def test_one_calls_events_stay_in_order_while_other_calls_go_on(
    tmp_path: Path, receiver: Receiver
) -> None:
    first_of_a = {"n": 0}

    def answer(got: list[Any], body: dict[str, Any]) -> int:
        if body["call_id"] == "CA-A" and body["data"]["n"] == 0 and first_of_a["n"] < 4:
            first_of_a["n"] += 1
            return 500  # call A's first event fails four times
        return 200

    receiver.answer = answer
    setup = await Setup(tmp_path / "o.sqlite", FAST).start(endpoint(receiver))
    try:
        a = [event("CA-A", n) for n in range(3)]
        b = [event("CA-B", n) for n in range(3)]
        await setup.append(a[0], b[0], a[1], b[1], a[2], b[2])
        got = await receiver.wait_for(6)
        order = [(r.body["call_id"], r.body["data"]["n"]) for r in got]
        assert [n for c, n in order if c == "CA-A"] == [0, 1, 2]
        assert [n for c, n in order if c == "CA-B"] == [0, 1, 2]
        assert order.index(("CA-B", 2)) < order.index(("CA-A", 0))  # B was not held back
        # A's later events were never sent before its first was delivered
        a_tries = [r.body["data"]["n"] for r in receiver.got if r.body["call_id"] == "CA-A"]
        assert a_tries == [0, 0, 0, 0, 0, 1, 2]
    finally:
        await setup.stop()


async def test_a_delivery_that_keeps_failing_is_dead_lettered_then_replayed(
    tmp_path: Path, receiver: Receiver
) -> None:
    failing = {"on": True}
    receiver.answer = lambda got, body: 500 if failing["on"] else 200
    policy = DeliveryPolicy(retry_max_seconds=0.1, first_backoff_seconds=0.02, max_attempts=3)
    setup = await Setup(tmp_path / "o.sqlite", policy).start(endpoint(receiver))
    try:
        sent = event("CA1", 0)
        await setup.append(sent, event("CA1", 1))
        deadline = time.monotonic() + 5
        while len(await setup.dispatcher.deliveries("crm", state="dead")) < 2:
            assert time.monotonic() < deadline, setup.outcomes
            await asyncio.sleep(0.05)
        assert ("crm", "dead") in setup.outcomes and len(receiver.got) == 6
        failing["on"] = False
        assert await setup.dispatcher.replay("crm", event_id=sent.id) == 1
        got = await receiver.wait_for(1)
        assert got[0].webhook_id == sent.id  # the same id as the failed tries
        since = datetime.fromtimestamp(time.time() - 60, UTC)
        assert await setup.dispatcher.replay("crm", since=since) == 2  # both, again
        got = await receiver.wait_for(3)
        assert [r.webhook_id for r in got[1:]] == [sent.id, got[2].webhook_id]
    finally:
        await setup.stop()


async def test_pending_deliveries_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answer = lambda got, body: 503
    path = tmp_path / "o.sqlite"
    setup = await Setup(path, FAST).start(endpoint(receiver))
    sent = [event(f"CA{i % 3}", i) for i in range(30)]
    await setup.append(*sent)
    await asyncio.sleep(0.3)
    await setup.stop()  # (as after a crash: nothing delivered, all pending on disk)
    receiver.answer = lambda got, body: 200
    again = await Setup(path, FAST).start()
    try:
        got = await receiver.wait_for(30)
        assert sorted(r.webhook_id for r in got) == sorted(e.id for e in sent)
        for call in ("CA0", "CA1", "CA2"):
            ns = [r.body["data"]["n"] for r in got if r.body["call_id"] == call]
            assert ns == sorted(ns)
    finally:
        await again.stop()
