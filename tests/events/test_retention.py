"""Retention: the outbox's events (with their deliveries and call records) older than
`[events] retention_days` are deleted, recordings and messages older than
`[media] recordings_retention_days` too, and the prune is logged with its counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bridge.config import Settings
from bridge.events.model import StoredEvent, new_event_id
from bridge.events.service import EventsService
from bridge.observability.metrics import Metrics

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class Hooks:
    """What the service subscribes to (the runner, the directory store), doing nothing."""

    def subscribe(self, listener: Any) -> None: ...

    def watch(self, watcher: Any) -> None: ...

    def get(self, call_id: str) -> None:
        return None


class Archive:
    def __init__(self) -> None:
        self.asked: list[datetime] = []

    def prune(self, before: datetime) -> tuple[int, int]:
        self.asked.append(before)
        return 3, 1


def event(kind: str, call_id: str, at: datetime, **data: Any) -> StoredEvent:
    return StoredEvent(new_event_id(int(at.timestamp() * 1000)), kind, at, data, call_id=call_id)


async def test_old_events_calls_and_media_are_pruned_and_logged(tmp_path: Path) -> None:
    settings = Settings(
        config_dir=tmp_path,
        events={"outbox_path": "o.sqlite", "retention_days": 30},
        media={"recordings_retention_days": 10},
    )
    archive = Archive()
    service = EventsService(
        settings,
        runner=Hooks(),  # type: ignore[arg-type]
        store=Hooks(),  # type: ignore[arg-type]
        metrics=Metrics(),
        wall=NOW.timestamp,
        archive=archive,
    )
    await service.start()
    try:
        old, recent = NOW - timedelta(days=40), NOW - timedelta(days=2)
        for call_id, at in (("CA-old", old), ("CA-new", recent)):
            service.append(event("call.received", call_id, at, line="+1555", path="sip"))
            service.append(event("call.ended", call_id, at, outcome="answered", path="sip"))
        await service.outbox.flush()
        with capture_logs() as logs:
            pruned = await service.prune()
        assert pruned == {"events": 2, "recordings": 3, "voicemails": 1}
        assert archive.asked == [NOW - timedelta(days=10)]
        assert [e.call_id for e in await service.outbox.events(limit=10)] == ["CA-new", "CA-new"]
        calls = await service.outbox.run(
            lambda db: [r[0] for r in db.execute("SELECT call_id FROM calls").fetchall()]
        )
        assert calls == ["CA-new"]
        [line] = [e for e in logs if e["event"] == "retention_pruned"]
        assert line["events"] == 2 and line["recordings"] == 3
        assert await service.prune() == {"events": 0, "recordings": 3, "voicemails": 1}
    finally:
        await service.stop()
