"""The gateway's Prometheus series, by value."""

from __future__ import annotations

import httpx

from tests.ws.conftest import WAIT, Live, eventually
from tests.ws.fakecall import FakeCallLayer


def sample(live: Live, name: str, **labels: str) -> float:
    return live.ctx.metrics.registry.get_sample_value(name, labels) or 0.0


def messages(live: Live, direction: str, kind: str) -> float:
    return sample(live, "bridge_ws_messages_total", direction=direction, type=kind)


async def test_connections_messages_and_offers_are_counted(live: Live) -> None:
    assert sample(live, "bridge_ws_connections") == 0
    alice = await live.connect("alice")
    olivia = await live.connect("olivia", auth="query")
    assert sample(live, "bridge_ws_connections") == 2
    assert messages(live, "in", "auth") == 1  # olivia's token came in the URL
    assert messages(live, "out", "auth.ok") == 2

    await alice.request("presence.set", availability="busy")
    await alice.send_raw("{nonsense")
    await alice.expect("error", timeout=WAIT)
    await alice.send("call.teleport")
    await alice.expect("error", timeout=WAIT)
    assert messages(live, "in", "presence.set") == 1
    assert messages(live, "out", "presence") == 1
    assert messages(live, "in", "invalid") == 2  # never the client's own type string
    assert messages(live, "in", "call.teleport") == 0
    assert messages(live, "out", "error") == 2

    layer = FakeCallLayer(live.gateway.offers, live.clock)
    layer.ring("call-1", ["alice", "olivia"])
    await alice.expect("call.offer", timeout=WAIT)
    await olivia.expect("call.offer", timeout=WAIT)
    assert messages(live, "out", "call.offer") == 2
    frame_id = await olivia.accept("call-1")
    await olivia.expect("call.state", timeout=WAIT, id=frame_id)
    await alice.expect("call.ended", timeout=WAIT)
    assert messages(live, "in", "call.accept") == 1
    assert sample(live, "bridge_offers_total", result="answered") == 1
    assert sample(live, "bridge_offers_total", result="answered_elsewhere") == 1
    assert sample(live, "bridge_offer_to_answer_seconds_count") == 1
    assert sample(live, "bridge_offer_to_answer_seconds_sum") > 0

    await alice.close()
    await eventually(lambda: sample(live, "bridge_ws_connections") == 1)
    await olivia.close()
    await eventually(lambda: sample(live, "bridge_ws_connections") == 0)


async def test_the_series_are_on_the_metrics_endpoint(live: Live) -> None:
    await live.connect("alice")
    async with httpx.AsyncClient(base_url=live.base, timeout=WAIT) as http:
        text = (await http.get("/metrics")).text
    assert "bridge_ws_connections 1.0" in text
    assert 'bridge_ws_messages_total{direction="out",type="auth.ok"} 1.0' in text
    assert "# TYPE bridge_offers_total counter" in text
    assert "# TYPE bridge_offer_to_answer_seconds histogram" in text
