"""The daemon's collector policy (bridge.daemon.GarbageCollectorPolicy) and app sessions: a
session that became old while connected is freed when it closes (nothing of it waits for a
full collection), a garbage cycle among old objects is collected by the scheduled full
collection (not by the ticks), and start-up stays frozen through it."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from bridge.daemon import GC_OLD_OFF, GarbageCollectorPolicy
from bridge.ws.sessions import Session
from tests.ws.conftest import WAIT, LiveFactory, eventually


@pytest.fixture(autouse=True)
def thaw_afterwards() -> Iterator[None]:
    """Whatever a test freezes is handed back to the collector (other tests expect that)."""
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    gc.collect()


def alive(kind: type) -> int:
    """Instances of `kind` the collector can see (not frozen)."""
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def in_old_generation(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects(generation=2))


async def test_old_sessions_are_freed_when_they_close(make_live: LiveFactory) -> None:
    gc.collect()
    # (Sessions of earlier tests that something still holds, if any, are not this test's.)
    sessions, protocols = alive(Session), alive(WebSocketsSansIOProtocol)
    live = await make_live(max_sessions_per_user=20)
    clients = [await live.connect("alice") for _ in range(20)]
    assert live.gateway.session_count() == 20
    policy = GarbageCollectorPolicy(asyncio.get_running_loop(), every=3600, full_every=3600)
    policy.collect()  # a tick: the 20 sessions move to the old generation
    policy.collect()
    old = [o for o in gc.get_objects(generation=2) if type(o) is Session]
    assert len(old) >= 20
    del old
    collections = gc.get_stats()[2]["collections"]
    for client in clients:
        await client.close()
    await eventually(lambda: live.gateway.session_count() == 0)
    # The heartbeat's heap drops its entries of closed sessions as they fall due.
    await asyncio.sleep(2 * live.gateway.settings.ping_interval_seconds + 0.2)
    # Counted without a full collection since: reference counting freed them.
    assert gc.get_stats()[2]["collections"] == collections
    assert alive(Session) <= sessions
    assert alive(WebSocketsSansIOProtocol) <= protocols


async def test_a_garbage_cycle_among_old_objects_waits_for_the_full_collection() -> None:
    class Node:
        other: Node | None = None

    node = Node()
    node.other = Node()
    node.other.other = node  # a cycle: only the collector frees it
    ref = weakref.ref(node)
    policy = GarbageCollectorPolicy(asyncio.get_running_loop(), every=3600, full_every=3600)
    policy.collect()  # alive: moves to the old generation
    assert in_old_generation(node)
    del node
    policy.collect()  # garbage now, but old: a tick does not walk it
    assert ref() is not None
    assert policy.collect(full=True) >= 2
    assert ref() is None


async def test_start_up_stays_frozen_and_the_old_generation_is_ours() -> None:
    """Started: the interpreter never collects the old generation on its own; a full
    collection leaves what start-up froze frozen; stopped: thresholds and start-up back."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    thresholds = gc.get_threshold()
    policy = GarbageCollectorPolicy(asyncio.get_running_loop(), every=3600, full_every=3600)
    policy.start()
    try:
        assert gc.get_threshold() == (thresholds[0], thresholds[1], GC_OLD_OFF)
        policy.collect(full=True)
        assert gc.get_freeze_count() == frozen  # nothing of start-up was walked or moved
    finally:
        policy.stop()
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


async def test_full_collections_that_find_little_come_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bridge.daemon.GC_FULL_LITTLE", 100)
    monkeypatch.setattr("bridge.daemon.GC_FULL_MAX_SECONDS", 40.0)
    pauses: list[float] = []
    policy = GarbageCollectorPolicy(
        asyncio.get_running_loop(), every=3600, full_every=10, on_full=pauses.append
    )
    policy.collect(full=True)
    assert policy.full_interval == 20
    assert len(pauses) == 1 and 0 <= pauses[0] < 60  # told (the metrics) of each one
    policy.collect(full=True)
    policy.collect(full=True)
    assert policy.full_interval == 40  # at most GC_FULL_MAX_SECONDS
    garbage = []
    for _ in range(200):
        cycle: list[object] = []
        cycle.append(cycle)
        garbage.append(cycle)
    policy.collect()  # old while alive
    del garbage, cycle
    assert policy.collect(full=True) >= 200  # found much: back to full_every
    assert policy.full_interval == 10


async def test_the_policy_ticks_and_stops() -> None:
    policy = GarbageCollectorPolicy(asyncio.get_running_loop(), every=0.01, full_every=0.05)
    keep = [[i] for i in range(1000)]  # long-lived: made old by a tick
    marker = keep[500]
    policy.start()
    try:
        deadline = asyncio.get_running_loop().time() + WAIT
        full = gc.get_stats()[2]["collections"]
        while not in_old_generation(marker) or gc.get_stats()[2]["collections"] < full + 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
    finally:
        policy.stop()
    assert len(keep) == 1000
