"""The daemon's collect-and-freeze policy (bridge.daemon.GarbageCollectorPolicy) and app
sessions: a session frozen while connected is freed when it closes (nothing of it waits for a
thaw), and what a frozen object leaves in a garbage cycle is collected at the next thaw."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from bridge.daemon import GarbageCollectorPolicy
from bridge.ws.sessions import Session
from tests.ws.conftest import WAIT, LiveFactory, eventually


@pytest.fixture(autouse=True)
def thaw_afterwards() -> Iterator[None]:
    """Whatever a test freezes is handed back to the collector (other tests expect that)."""
    yield
    gc.unfreeze()
    gc.collect()


def alive(kind: type) -> int:
    """Instances of `kind` the collector can see (call after gc.unfreeze())."""
    return sum(1 for o in gc.get_objects() if type(o) is kind)


async def test_frozen_sessions_are_freed_when_they_close(make_live: LiveFactory) -> None:
    gc.collect()
    # (Sessions of earlier tests that something still holds, if any, are not this test's.)
    sessions, protocols = alive(Session), alive(WebSocketsSansIOProtocol)
    live = await make_live(max_sessions_per_user=20)
    clients = [await live.connect("alice") for _ in range(20)]
    assert live.gateway.session_count() == 20
    policy = GarbageCollectorPolicy(asyncio.get_running_loop(), every=3600, thaw_every=3600)
    policy.collect_and_freeze()
    gc.unfreeze()
    assert alive(Session) == sessions + 20
    assert alive(WebSocketsSansIOProtocol) == protocols + 20
    policy.collect_and_freeze()  # the 20 sessions are frozen now; then they close
    for client in clients:
        await client.close()
    await eventually(lambda: live.gateway.session_count() == 0)
    # The heartbeat's heap drops its entries of closed sessions as they fall due.
    await asyncio.sleep(2 * live.gateway.settings.ping_interval_seconds + 0.2)
    # Hand them back without collecting: nothing of a closed session is left for a collection
    # to find, reference counting freed it while it was frozen.
    gc.unfreeze()
    assert alive(Session) <= sessions
    assert alive(WebSocketsSansIOProtocol) <= protocols


async def test_a_garbage_cycle_that_was_frozen_is_collected_at_the_thaw() -> None:
    class Node:
        other: Node | None = None

    node = Node()
    node.other = Node()
    node.other.other = node  # a cycle: only the collector frees it
    ref = weakref.ref(node)
    policy = GarbageCollectorPolicy(asyncio.get_running_loop(), every=3600, thaw_every=3600)
    policy.collect_and_freeze()  # live: frozen
    del node
    policy.collect_and_freeze()  # garbage now, but frozen: not collected
    assert ref() is not None
    assert policy.collect_and_freeze(thaw=True) >= 2
    assert ref() is None


async def test_thaws_that_find_little_come_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bridge.daemon.GC_THAW_LITTLE", 100)
    monkeypatch.setattr("bridge.daemon.GC_THAW_MAX_SECONDS", 40.0)
    policy = GarbageCollectorPolicy(asyncio.get_running_loop(), every=3600, thaw_every=10)
    policy.collect_and_freeze(thaw=True)
    assert policy.thaw_interval == 20
    policy.collect_and_freeze(thaw=True)
    policy.collect_and_freeze(thaw=True)
    assert policy.thaw_interval == 40  # at most GC_THAW_MAX_SECONDS
    garbage = []
    for _ in range(200):
        cycle: list[object] = []
        cycle.append(cycle)
        garbage.append(cycle)
    policy.collect_and_freeze()  # frozen while alive
    del garbage, cycle
    assert policy.collect_and_freeze(thaw=True) >= 200  # found much: back to thaw_every
    assert policy.thaw_interval == 10


async def test_the_policy_ticks_and_stops() -> None:
    frozen = gc.get_freeze_count()
    policy = GarbageCollectorPolicy(asyncio.get_running_loop(), every=0.01, thaw_every=0.05)
    policy.start()
    keep = [[i] for i in range(1000)]  # long-lived: frozen by a tick
    deadline = asyncio.get_running_loop().time() + WAIT
    while gc.get_freeze_count() < frozen + 1000:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # a thaw tick or two too
    assert gc.get_freeze_count() >= frozen + 1000
    policy.stop()
    assert gc.get_freeze_count() == 0  # stop hands everything back
    assert len(keep) == 1000
