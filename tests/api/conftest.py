"""Fixtures for the HTTP API suite (on top of `make_bridge` from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.helpers import demo_with_end_client
from tests.conftest import Bridge


@pytest.fixture
def api(make_bridge: Callable[..., Bridge]) -> Bridge:
    """The demo directory plus an end client (cleo, line +15550200), written to directory.yaml."""
    return make_bridge(directory=demo_with_end_client())
