"""A session's writes: in the caller's stack while the transport takes them, through a task
(in order, the close last) while it does not."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.ws.sessions import Session, TokenBucket


class Transport:
    """An ASGI `send` that waits, as uvicorn's does, while the transport is paused."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.written: list[dict[str, Any]] = []
        self.fail = False

    async def send(self, message: dict[str, Any]) -> None:
        await self.writable.wait()
        if self.fail:
            raise RuntimeError("peer gone")
        self.written.append(message)


def session(transport: Transport) -> Session:
    bucket = TokenBucket(10, 10, 0.0)
    return Session(transport.send, "s1", 0.0, bucket, bucket, on_out=lambda kind: None)


def texts(transport: Transport) -> list[str | int]:
    return [m.get("text", m.get("code")) for m in transport.written]


async def test_frames_are_written_at_once_while_the_transport_takes_them() -> None:
    transport = Transport()
    s = session(transport)
    s.send("a", "x")
    s.send("b", "x")
    assert texts(transport) == ["a", "b"]  # no task, no wait
    assert not s.writing


async def test_a_paused_transport_gets_the_frames_in_order_then_the_close() -> None:
    transport = Transport()
    s = session(transport)
    s.send("a", "x")
    transport.writable.clear()  # a slow reader: the kernel buffer is full
    s.send("b", "x")
    s.send("c", "x")
    s.close(4000, "bye")
    s.send("d", "x")  # after the close: dropped
    assert texts(transport) == ["a"] and s.writing
    await asyncio.sleep(0.01)
    assert texts(transport) == ["a"]  # still waiting for the transport
    transport.writable.set()
    await s.flushed(1.0)
    assert texts(transport) == ["a", "b", "c", 4000]
    assert not s.writing
    s.send("e", "x")
    assert texts(transport) == ["a", "b", "c", 4000]


async def test_a_failed_write_marks_the_session_dead() -> None:
    transport = Transport()
    s = session(transport)
    transport.fail = True
    s.send("a", "x")
    assert s.dead and transport.written == []
    transport.fail = False
    s.send("b", "x")
    assert transport.written == []


async def test_a_write_failing_after_the_wait_marks_the_session_dead() -> None:
    transport = Transport()
    s = session(transport)
    transport.writable.clear()
    s.send("a", "x")
    s.send("b", "x")
    transport.fail = True
    transport.writable.set()
    await s.flushed(1.0)
    assert s.dead and transport.written == [] and not s.writing
