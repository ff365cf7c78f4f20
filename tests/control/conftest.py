"""Fixtures for the control tests: the conference-mode world of tests/carrier (fake carrier +
bridge over loopback HTTP), and helpers to get a call answered by a given agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.carrier.live import World, running_world


@pytest.fixture
async def world(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    async with running_world(demo_dir, monkeypatch) as live:
        yield live
