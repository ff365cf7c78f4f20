"""The agent side of /console in headless Chromium: offers, accept / reject, why a ring stopped,
availability, logging in and out. Calls are the bridge's test offers (`[ws] test_offers`), rung
through the real offer service of a `bridge run` process."""

from __future__ import annotations

from pathlib import Path

from tests.console.cdp import Browser, present, text_of
from tests.console.conftest import (
    CONNECTED,
    LINE,
    RunningBridge,
    bridge_run,
    needs_chromium,
    open_console,
)

pytestmark = needs_chromium

CALLER = "+15557654321"


async def ring(bridge: RunningBridge, users: list[str], **options: object) -> dict[str, str]:
    body = {"users": users, "caller": CALLER, "line": LINE, "ring_seconds": 60, **options}
    response = await bridge.api("POST", "/api/v1/ws/test-offers", "olivia", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["offers"]["delivered"] == len(users)
    return dict(response.json()["calls"])


async def test_an_agent_accepts_and_the_other_sees_who_answered(
    tmp_path: Path, browser: Browser, shots: Path
) -> None:
    with bridge_run(tmp_path) as bridge:
        alice = await open_console(browser, bridge, "alice")
        bob = await open_console(browser, bridge, "bob")
        assert await alice.text("#me-name") == "Alice Doe"
        assert await alice.text("#me-role") == "agent"
        assert await alice.text("#status-line") == "No call"
        # Alice's board (agents watch their own calls) sees Bob come online.
        bob_on_board = "#board-agents tr[data-user-id=bob] td:nth-of-type(2)"
        await alice.wait_for(f"{text_of(bob_on_board)} === 'apps'")

        calls = await ring(bridge, ["alice", "bob"], one_call=True)
        call_id = calls["alice"]
        offer = f'#offers .offer[data-call-id="{call_id}"]'
        for page in (alice, bob):
            await page.wait_for(present(offer))
            assert await page.text(f"{offer} .offer-caller") == CALLER
            # The line's name comes from GET /api/v1/lines.
            await page.wait_for(f"{text_of(offer + ' .offer-line')} === 'on Main line ({LINE})'")
        # The offers region announces itself to screen readers.
        assert await alice.prop("#offers", "ariaLive") == "assertive"
        await alice.screenshot(shots / "console-offer.png")

        await alice.click(f"{offer} button[data-action=accept]")
        await alice.wait_for(f"{text_of('#status-line')} === 'On a call with {CALLER}'")
        assert await alice.count("#offers .offer") == 0
        assert (await alice.text("#current-call")).startswith(f"Line: Main line ({LINE})")

        ended = f'#endings .ending[data-call-id="{call_id}"]'
        await bob.wait_for(present(ended))
        assert await bob.prop(ended, "dataset.reason") == "answered_elsewhere"
        assert await bob.text(f"{ended} .ending-text") == "Answered by Alice Doe in the app"
        assert await bob.count("#offers .offer") == 0
        assert await bob.text("#status-line") == "No call"
        await bob.screenshot(shots / "console-answered-elsewhere.png")
        await alice.screenshot(shots / "console-answered.png")
        assert alice.errors == [] and bob.errors == []


async def test_rings_that_stop_are_explained_in_words(tmp_path: Path, browser: Browser) -> None:
    with bridge_run(tmp_path) as bridge:
        bob = await open_console(browser, bridge, "bob")

        # Nobody answers in time.
        calls = await ring(bridge, ["bob"], ring_seconds=0.5)
        ended = f'#endings .ending[data-call-id="{calls["bob"]}"] .ending-text'
        await bob.wait_for(f"{text_of(ended)} === 'Nobody answered in time'")

        # Bob declines.
        calls = await ring(bridge, ["bob"])
        offer = f'#offers .offer[data-call-id="{calls["bob"]}"]'
        await bob.wait_for(present(offer))
        await bob.click(f"{offer} button[data-action=reject]")
        ended = f'#endings .ending[data-call-id="{calls["bob"]}"] .ending-text'
        await bob.wait_for(f"{text_of(ended)} === 'You declined the call'")

        # Answered, then the caller hangs up: the call ends with the reason in words.
        calls = await ring(bridge, ["bob"], hold_seconds=0.5)
        offer = f'#offers .offer[data-call-id="{calls["bob"]}"]'
        await bob.wait_for(present(offer))
        await bob.click(f"{offer} button[data-action=accept]")
        ended = f'#endings .ending[data-call-id="{calls["bob"]}"] .ending-text'
        await bob.wait_for(f"{text_of(ended)} === 'Call ended: caller hung up'")
        assert await bob.text("#status-line") == "No call"
        assert bob.errors == []


async def test_availability_and_logging_out(tmp_path: Path, browser: Browser) -> None:
    with bridge_run(tmp_path) as bridge:
        bob = await open_console(browser, bridge, "bob")
        assert await bob.prop("#availability", "value") == "available"
        await bob.evaluate(
            """(() => { const s = document.querySelector('#availability');
                s.value = 'busy'; s.dispatchEvent(new Event('change')); })()"""
        )
        # The bridge has it: its own presence frame comes back to the page, and the HTTP API
        # reads the same presence.
        await bob.wait_for(
            "document.querySelector('#board-agents tr[data-user-id=bob] td')?.textContent "
            "=== 'busy'"
        )
        response = await bridge.api("GET", "/api/v1/users/bob/availability", "bob")
        assert response.json()["status"] == "busy"

        # The token is kept in the tab: a reload logs straight back in.
        await bob.navigate(f"{bridge.url}/console")
        await bob.wait_for(CONNECTED)
        assert await bob.prop("#availability", "value") == "busy"

        await bob.click("#logout")
        await bob.wait_for("!document.querySelector('#login').hidden")
        assert await bob.evaluate("sessionStorage.length") == 0

        # A bad token is refused with the bridge's reason, and nothing is stored.
        await bob.type_into("#token", "not-a-token")
        await bob.click("#login-form button[type=submit]")
        await bob.wait_for(f"{text_of('#login-error')}.startsWith('Token refused')")
        assert await bob.evaluate("sessionStorage.length") == 0
        assert bob.errors == []
