"""Shared fixtures: a bridge app on a temporary copy of the demo configuration."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from bridge.api.app import create_app
from bridge.config import load_all
from bridge.context import AppContext, build_context

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEMO_CONFIG = REPO / "config" / "bridge.toml"
DEMO_DIRECTORY = REPO / "config" / "directory.yaml"


class FakeClock:
    """A settable clock for presence/wrap-up; routing itself never reads it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # Monday 10:00 New York

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A writable copy of config/ (API changes are written to its directory.yaml)."""
    target = tmp_path / "config"
    target.mkdir()
    shutil.copy(DEMO_CONFIG, target / "bridge.toml")
    shutil.copy(DEMO_DIRECTORY, target / "directory.yaml")
    return target


@dataclass
class Bridge:
    client: TestClient
    ctx: AppContext
    clock: FakeClock
    config_dir: Path

    def token(self, user_id: str, **kw: Any) -> str:
        return self.ctx.tokens.issue(user_id, **kw)

    def auth(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id)}"}

    def as_user(self, user_id: str, method: str, url: str, **kw: Any) -> Any:
        headers = {**kw.pop("headers", {}), **self.auth(user_id)}
        return self.client.request(method, url, headers=headers, **kw)

    def directory_file(self) -> dict[str, Any]:
        return yaml.safe_load((self.config_dir / "directory.yaml").read_text())


@pytest.fixture
def make_bridge(demo_dir: Path) -> Iterator[Callable[..., Bridge]]:
    """Build a bridge on the demo config; pass `directory=` (a dict) to use another directory."""
    clients: list[TestClient] = []

    def factory(directory: dict[str, Any] | None = None, clock: FakeClock | None = None) -> Bridge:
        if directory is not None:
            (demo_dir / "directory.yaml").write_text(yaml.safe_dump(directory, sort_keys=False))
        settings, loaded = load_all(demo_dir / "bridge.toml")
        clock = clock or FakeClock()
        ctx = build_context(settings, loaded, clock=clock)
        ctx.listeners_up.add("http")
        client = TestClient(create_app(ctx))
        clients.append(client)
        return Bridge(client=client, ctx=ctx, clock=clock, config_dir=demo_dir)

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def bridge(make_bridge: Callable[..., Bridge]) -> Bridge:
    return make_bridge()
