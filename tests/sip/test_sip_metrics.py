"""The SIP metrics as Prometheus scrapes them: message counts by direction and method, the
live-transaction and registration gauges (read at scrape time), after real exchanges."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sim.phones.inproc import InprocBridge, desk_user, register

PHONE_PORT = 20011
DIRECTORY = {
    "timezone": "UTC",
    "users": [
        {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
        desk_user("ana", "201", "pw-201"),
    ],
}


def scrape(bridge: InprocBridge) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(bridge.ctx.metrics.render().decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    bridge = InprocBridge(DIRECTORY)
    await bridge.start(fake_time=True)
    try:
        yield bridge
    finally:
        await bridge.stop()


async def test_messages_transactions_and_registrations_are_counted(bridge: InprocBridge) -> None:
    before = scrape(bridge)
    assert value(before, "bridge_sip_registrations") == 0.0
    assert value(before, "bridge_sip_messages_total", direction="in", method="REGISTER") is None

    assert bridge.register_phone("201", "pw-201", PHONE_PORT)
    after = scrape(bridge)
    # REGISTER, 401, REGISTER with credentials, 200.
    assert value(after, "bridge_sip_messages_total", direction="in", method="REGISTER") == 2.0
    assert value(after, "bridge_sip_messages_total", direction="out", method="4xx") == 1.0
    assert value(after, "bridge_sip_messages_total", direction="out", method="2xx") == 1.0
    assert value(after, "bridge_sip_registrations") == 1.0
    # Both REGISTER server transactions wait out Timer J (UDP) before they end.
    assert value(after, "bridge_sip_transactions") == 2.0

    await bridge.advance(40.0, step=1.0)
    assert value(scrape(bridge), "bridge_sip_transactions") == 0.0

    # A third REGISTER without credentials is challenged; the binding stays.
    bridge.feed(register("201", PHONE_PORT, 2, bridge.address), ("127.0.0.1", PHONE_PORT))
    assert any(d.startswith(b"SIP/2.0 401") for d, _ in bridge.take())
    last = scrape(bridge)
    assert value(last, "bridge_sip_messages_total", direction="in", method="REGISTER") == 3.0
    assert value(last, "bridge_sip_messages_total", direction="out", method="4xx") == 2.0
    assert value(last, "bridge_sip_registrations") == 1.0
    assert value(last, "bridge_sip_transactions") == 1.0


async def test_unknown_methods_are_counted_as_other(bridge: InprocBridge) -> None:
    bridge.feed(
        (
            f"FOO sip:{bridge.address} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:20012;branch=z9hG4bK-foo1\r\n"
            "From: <sip:x@127.0.0.1>;tag=a\r\nTo: <sip:y@127.0.0.1>\r\n"
            "Call-ID: foo-1\r\nCSeq: 1 FOO\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
        ("127.0.0.1", 20012),
    )
    assert any(d.startswith(b"SIP/2.0 501") for d, _ in bridge.take())
    samples = scrape(bridge)
    assert value(samples, "bridge_sip_messages_total", direction="in", method="other") == 1.0
    assert value(samples, "bridge_sip_messages_total", direction="out", method="5xx") == 1.0
