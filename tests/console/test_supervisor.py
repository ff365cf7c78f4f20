"""The supervisor side of /console in headless Chromium, on a real carrier call: a `bridge run`
in conference mode whose REST API is the fake carrier (sim/carrier, every request checked
against Twilio's published description). The carrier places an inbound call, Alice (apps,
through the carrier's voice SDK, played by the fake) answers it; the supervisor's live board
shows it and Barge puts the supervisor into the conference; Alice's own board shows the same
controls disabled, with the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sim.carrier import FakeCarrier, answer, no_answer

from tests.console.cdp import Browser, present, text_of
from tests.console.conftest import LINE, bridge_run, needs_chromium, open_console

pytestmark = needs_chromium

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "console-carrier-auth-token-01"
PUBLIC_URL = "https://bridge.example.com"
CALLER = "+14155550001"


@pytest.fixture
async def carrier() -> AsyncIterator[FakeCarrier]:
    async with FakeCarrier(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
    ) as fake:
        yield fake


def conference_settings(carrier: FakeCarrier) -> dict[str, str]:
    return {
        "twilio__mode": "conference",
        "twilio__account_sid": ACCOUNT_SID,
        "twilio__auth_token": AUTH_TOKEN,
        "twilio__api_base": carrier.url,
        "twilio__api_backoff_seconds": "0.01",
        "http__public_url": PUBLIC_URL,
    }


def params(carrier: FakeCarrier, operation: str) -> list[dict[str, list[str]]]:
    """The form parameters of each REST request of that operation the carrier served."""
    found = []
    for record in carrier.requests:
        if record.operation_id == operation:
            fields: dict[str, list[str]] = {}
            for key, value in record.params:
                fields.setdefault(key, []).append(value)
            found.append(fields)
    return found


async def test_a_supervisor_barges_into_an_answered_call(
    tmp_path: Path, browser: Browser, carrier: FakeCarrier, shots: Path
) -> None:
    with bridge_run(tmp_path, **conference_settings(carrier)) as bridge:
        carrier.set_bridge(bridge.url, PUBLIC_URL)
        # Alice's console is connected, so she is reachable on apps and rung as client:alice.
        alice = await open_console(browser, bridge, "alice")
        sam = await open_console(browser, bridge, "sam")
        await sam.wait_for(f"{text_of('#no-calls')} === 'No live calls.'")
        assert await sam.prop("#board", "hidden") is False

        carrier.set_target("client:alice", answer(after=1))
        carrier.set_target("client:bob", no_answer())
        inbound = await carrier.place_inbound_call(CALLER, LINE, follow=True)

        row = f'#board-calls tr[data-call-id="{inbound.sid}"]'
        await sam.wait_for(f"document.querySelector('{row}')?.dataset.state === 'answered'")
        assert await sam.text(f"{row} th") == CALLER
        assert await sam.text(f"{row} .agent") == "Alice Doe"
        assert await sam.text(f"{row} td") == f"Main line ({LINE})"
        for control in ("listen", "whisper", "barge", "recording"):
            assert await sam.prop(f"{row} button[data-control={control}]", "disabled") is False
        assert await sam.count(f"{row} .reason") == 0

        # (The carrier path offers app users the call on the WebSocket too; the fake carrier
        # plays the voice SDK that answers it, and the console shows the answered call.)
        await alice.wait_for(f"{text_of('#status-line')} === 'On a call with {CALLER}'")
        # Alice sees her own call on her board, the controls disabled with the reason.
        await alice.wait_for(present(row))
        barge = f"{row} button[data-control=barge]"
        assert await alice.prop(barge, "disabled") is True
        assert await alice.prop(barge, "title") == "You lack the barge_whisper permission"
        assert await alice.text(f"{row} .reason[data-for=monitor]") == (
            "Listen / Whisper / Barge: You lack the barge_whisper permission"
        )
        assert await alice.text(f"{row} .reason[data-for=recording]") == (
            "Recording: You lack the recording_control permission"
        )
        await sam.screenshot(shots / "console-board.png")
        await alice.screenshot(shots / "console-agent-on-call.png")

        await sam.click(barge)
        await sam.wait_for(f"{text_of('#control-status')} === 'Barge: done'")
        assert (
            await sam.evaluate(f"document.querySelector('{barge}').getAttribute('aria-pressed')")
            == "true"
        )
        assert await sam.text(f"{row} .monitoring") == (
            "You are barging: the bridge is calling you in your app"
        )

        # The carrier was asked for exactly a barging participant: the supervisor's app,
        # unmuted, not coaching, in the call's conference (and nothing off-spec).
        [created] = [p for p in params(carrier, "CreateParticipant") if p["To"] == ["client:sam"]]
        assert created["Label"] == ["monitor-sam"]
        assert created["Muted"] == ["false"] and "Coaching" not in created
        assert created["From"] == [LINE]
        conference = carrier.conference(inbound.sid)
        assert conference is not None
        [sam_leg] = [p for p in conference.participants.values() if p.label == "monitor-sam"]
        assert (sam_leg.muted, sam_leg.coaching) == (False, False)
        await carrier.wait_for(lambda: sam_leg.status == "connected")
        await sam.screenshot(shots / "console-barge.png")

        # The caller hangs up: the call leaves the board; Alice gets her wrap-up countdown.
        carrier.hangup(inbound.sid)
        await sam.wait_for(f"document.querySelector('{row}') === null")
        await alice.wait_for(f"{text_of('#wrap-up')}.startsWith('Wrap-up: 0:')")
        assert await alice.text("#status-line") == "No call"
        await alice.screenshot(shots / "console-wrap-up.png")

        carrier.assert_no_violations()
        assert sam.errors == [] and alice.errors == []
