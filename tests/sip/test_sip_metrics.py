"""The SIP metrics as Prometheus scrapes them: message counts by direction and method, the
live-transaction and registration gauges (read at scrape time), after real exchanges."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sim.phones.inproc import InprocBridge, desk_user, header, register

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
    # The accepted REGISTER's transaction waits out Timer J (UDP); the challenged one was
    # answered statelessly (RFC 3261 §8.2.7) and left nothing.
    assert value(after, "bridge_sip_transactions") == 1.0

    await bridge.advance(40.0, step=1.0)
    assert value(scrape(bridge), "bridge_sip_transactions") == 0.0

    # A third REGISTER without credentials is challenged; the binding stays.
    bridge.feed(register("201", PHONE_PORT, 2, bridge.address), ("127.0.0.1", PHONE_PORT))
    assert any(d.startswith(b"SIP/2.0 401") for d, _ in bridge.take())
    last = scrape(bridge)
    assert value(last, "bridge_sip_messages_total", direction="in", method="REGISTER") == 3.0
    assert value(last, "bridge_sip_messages_total", direction="out", method="4xx") == 2.0
    assert value(last, "bridge_sip_registrations") == 1.0
    assert value(last, "bridge_sip_transactions") == 0.0


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


async def test_challenges_are_stateless_with_a_stable_to_tag(bridge: InprocBridge) -> None:
    # RFC 3261 §8.2.7: a REGISTER without credentials is challenged without keeping a
    # transaction; its retransmission gets a challenge with the same To tag (fresh nonce).
    first = register("201", PHONE_PORT, 7, bridge.address)
    answers = []
    for _ in range(2):
        bridge.feed(first, ("127.0.0.1", PHONE_PORT))
        sent = bridge.take()
        assert len(sent) == 1 and sent[0][0].startswith(b"SIP/2.0 401")
        answers.append(sent[0][0])
        assert len(bridge.endpoint.layer) == 0
    tags = [header(a, "To").partition(";tag=")[2] for a in answers]
    assert tags[0] and tags[0] == tags[1]
    # Another request gets another tag.
    bridge.feed(register("201", PHONE_PORT, 8, bridge.address), ("127.0.0.1", PHONE_PORT))
    other = bridge.take()[0][0]
    assert header(other, "To").partition(";tag=")[2] not in ("", tags[0])
    # And the registration itself still goes through (the answer carries the credentials).
    assert bridge.register_phone("201", "pw-201", PHONE_PORT, 9)
    assert len(bridge.endpoint.layer) == 1  # the 200's transaction, waiting out Timer J
