"""Fixtures of the media tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from bridge.media.ports import PortPool


@pytest.fixture
def pool() -> Iterator[PortPool]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    start = port - port % 2
    yield PortPool("127.0.0.1", start, start + 400)
