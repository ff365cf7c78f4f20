"""The console's records in headless Chromium against a real `bridge run`: Recent calls (the
call history, `GET /api/v1/calls?state=ended`) with the calls a user missed and why, after a
SIP call that SIPp phones ring and one of them answers; the audit trail for admins (and never
asked for by anyone else), with its filters; voicemail marked heard in one page and seen heard
in another; and what the page says when the bridge keeps no records (no event outbox)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.console.cdp import Browser, Page, present, text_of
from tests.console.conftest import CONNECTED, bridge_run, needs_chromium, open_console
from tests.console.test_voicemail import leave_message
from tests.sip.peers import RunningBridge, bridge_process, needs_sipp, trunk_bridge
from tests.sip.test_sipp_calls import directory, run_trunk, start_phone, wait_registered

pytestmark = needs_chromium

TRUNK_CALLER = "+15551230000"  # the From of tests/sip/scenarios/trunk_call.xml
VM_CALLER = "+15557654321"
RECENT_SHOWN = "!document.querySelector('#recent').hidden"


def asked(path: str) -> str:
    """A JS expression: the page fetched a URL containing `path` (its resource timings)."""
    return (
        f"performance.getEntriesByType('resource').some((entry) => entry.name.includes({path!r}))"
    )


async def sip_console(browser: Browser, bridge: RunningBridge, user_id: str) -> Page:
    """`open_console` for a `tests.sip.peers` bridge (its port; a token from `bridge token`)."""
    page = await browser.new_page()
    await page.navigate(f"http://127.0.0.1:{bridge.http}/console")
    await page.wait_for("document.body.dataset.ready === 'true'")
    await page.click("#use-token")
    await page.type_into("#token", await asyncio.to_thread(bridge.token, user_id))
    await page.click("#login-form button[type=submit]")
    await page.wait_for(CONNECTED)
    return page


@needs_sipp
async def test_a_call_answered_by_one_member_shows_as_missed_by_the_other(
    tmp_path: Path, browser: Browser, shots: Path
) -> None:
    # Anna (301) and Ben (302) are the first layer of the line's group, on desk phones. The
    # boards refresh often enough to see this short call live (it lasts about 0.6 s).
    with trunk_bridge(tmp_path, directory(), ws__refresh_seconds="0.25") as bridge:
        ben = await sip_console(browser, bridge, "ben")
        anna = await sip_console(browser, bridge, "anna")
        admin = await sip_console(browser, bridge, "admin")
        for page in (ben, anna, admin):
            await page.wait_for(f"{RECENT_SHOWN} && !document.querySelector('#no-recent').hidden")

        anna_phone = await asyncio.to_thread(
            start_phone, tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "300"
        )
        ben_phone = await asyncio.to_thread(
            start_phone, tmp_path, "phone_ring_cancelled.xml", "302", bridge.sip
        )
        await asyncio.to_thread(wait_registered, bridge, 2)
        trunk = await asyncio.to_thread(run_trunk, tmp_path, bridge)
        assert trunk.returncode == 0, trunk.stdout
        assert await asyncio.to_thread(anna_phone.wait, 30) == 0
        assert await asyncio.to_thread(ben_phone.wait, 30) == 0

        # Ben's page reloads its history when the call is over (no Refresh, no 30 s wait).
        row = "#recent-calls tbody tr[data-outcome=answered]"
        await ben.wait_for(present(row), 10)
        assert await ben.prop(row, "dataset.missed") == "true"
        assert await ben.text(f"{row} .missed-label") == "Missed"
        assert await ben.text(f"{row} .missed-why") == "answered by Anna"
        assert await ben.text(f"{row} .recent-caller") == TRUNK_CALLER
        assert await ben.text(f"{row} .recent-answerer") == "Anna on desk phone"
        assert await ben.text(f"{row} .outcome") == "Answered"
        assert "talked 0:0" in await ben.text(f"{row} .recent-durations")
        assert await ben.text("#recent-status") == (
            f"Missed call from {TRUNK_CALLER}: answered by Anna"
        )
        await ben.send("Page.bringToFront")  # a tab in the background paints no frame
        await ben.screenshot(shots / "console-recent-calls.png")

        # Anna took it; the admin was not rung for it: neither missed it.
        await anna.wait_for(present(row), 10)
        assert await anna.prop(row, "dataset.missed") == "false"
        assert await anna.text(f"{row} .yours") == "You answered"
        assert await anna.text(f"{row} .recent-answerer") == "you on desk phone"
        await admin.wait_for(present(row), 10)
        assert await admin.prop(row, "dataset.missed") == "false"
        assert await admin.count(f"{row} .missed") == 0
        errors = ben.errors + anna.errors + admin.errors
        assert not errors, errors


async def test_admins_see_the_audit_trail_and_filter_it_others_never_ask(
    tmp_path: Path, browser: Browser, shots: Path
) -> None:
    with bridge_run(tmp_path) as bridge:
        for user_id, path in (("alice", "/api/v1/webhooks"), ("bob", "/api/v1/audit")):
            refused = await bridge.api("GET", path, user_id)
            assert refused.status_code == 403, (user_id, path)
        changed = await bridge.api(
            "PUT", "/api/v1/users/bob/availability", "olivia", json={"status": "busy"}
        )
        assert changed.status_code == 200, changed.text

        olivia = await open_console(browser, bridge, "olivia")
        rows = "#audit-records tbody tr"
        refusals = f"{rows}[data-allowed=false]"
        # (the names come with the live board: the row is shown again with them)
        refusal = await olivia.wait_for(
            f"""[...document.querySelectorAll({refusals!r})].map((tr) => ({{
                who: tr.querySelector('.audit-actor').textContent,
                action: tr.querySelector('.audit-action').textContent,
                result: tr.querySelector('.audit-result').textContent,
                reason: tr.querySelector('.audit-reason').textContent,
                from: tr.querySelector('.audit-from').textContent,
            }})).find((r) => r.who === 'Alice Doe (alice)')""",
            10,
        )
        assert refusal["result"] == "refused"
        assert refusal["action"] == "change_directory" and refusal["reason"]
        assert "127.0.0.1" in refusal["from"] and "/api/v1/webhooks" in refusal["from"]
        assert await olivia.count(f"{rows}[data-allowed=true]") >= 1  # bob's availability

        # Who: only alice's records.
        await olivia.type_into("#audit-actor", "alice")
        await olivia.click("#audit-filter button[type=submit]")
        await olivia.wait_for(f"/ match(es)? the filter$/.test({text_of('#audit-status')})")
        actors = await olivia.evaluate(
            f"[...document.querySelectorAll('{rows} .audit-actor')].map((e) => e.textContent)"
        )
        assert actors and all(a == "Alice Doe (alice)" for a in actors), actors
        # Only refusals, everyone's.
        await olivia.evaluate("document.querySelector('#audit-actor').value = ''")
        await olivia.click("#audit-refused")
        await olivia.wait_for(
            f"[...document.querySelectorAll('{rows} .audit-actor')]"
            ".some((e) => e.textContent === 'Bob Stone (bob)')"
        )
        assert await olivia.count(f"{rows}[data-allowed=true]") == 0
        await olivia.send("Page.bringToFront")
        # (from the top: the shot is as high as the body's bottom in the viewport)
        await olivia.evaluate("window.scrollTo(0, 0)")
        await olivia.screenshot(shots / "console-audit.png")
        # An action nobody did: nothing, said so.
        await olivia.type_into("#audit-action", "no_such_action")
        await olivia.click("#audit-filter button[type=submit]")
        await olivia.wait_for("!document.querySelector('#no-audit').hidden")
        assert await olivia.count(rows) == 0
        assert await olivia.evaluate(asked("/api/v1/audit?"))

        # An agent's page has no Audit section and never asked for the trail.
        alice = await open_console(browser, bridge, "alice")
        await alice.wait_for(RECENT_SHOWN)
        assert await alice.evaluate(asked("/api/v1/calls?state=ended"))  # timings are kept
        assert await alice.prop("#audit", "hidden") is True
        assert not await alice.evaluate("document.querySelector('#audit').checkVisibility()")
        assert not await alice.evaluate(asked("/api/v1/audit"))
        errors = olivia.errors + alice.errors
        assert not errors, errors


async def test_a_message_marked_heard_in_one_page_shows_heard_in_another(
    tmp_path: Path, browser: Browser
) -> None:
    root = tmp_path / "recordings"
    message = leave_message(root, "sales", VM_CALLER)
    item = f'#voicemails .voicemail[data-voicemail-id="{message}"]'
    heard = f"document.querySelector('{item}')?.dataset.heard"
    with bridge_run(tmp_path, media__recordings_dir=str(root)) as bridge:
        rita = {"id": "rita", "name": "Rita Reporter", "role": "reporter",
                "answer_by": "will_not_answer"}  # fmt: skip
        created = await bridge.api("POST", "/api/v1/users", "olivia", json=rita)
        assert created.status_code == 201, created.text

        alice = await open_console(browser, bridge, "alice")
        bob = await open_console(browser, bridge, "bob")
        for page in (alice, bob):
            await page.wait_for(present(item))
            assert await page.evaluate(heard) == "false"
            assert await page.text(f"{item} .vm-new") == "new"
            assert await page.text(f"{item} [data-action=heard]") == "Mark heard"

        # Playing it marks it heard; the player stays (the item is updated, not rebuilt).
        await alice.click(f"{item} button[data-action=play]")
        await alice.wait_for(f"{heard} === 'true'", 10)
        assert await alice.evaluate(
            f"document.querySelector('{item} audio')?.src.startsWith('blob:') === true"
        )
        assert (await alice.text(f"{item} .vm-heard")).startswith("Heard by you")
        assert await alice.count(f"{item} .vm-new") == 0
        assert await alice.text(f"{item} [data-action=heard]") == "Mark new"

        await bob.click("#voicemail-refresh")
        await bob.wait_for(f"{heard} === 'true'", 10)
        assert (await bob.text(f"{item} .vm-heard")).startswith("Heard by Alice Doe")
        # Bob marks it new again; Alice sees it new after a refresh.
        await bob.click(f"{item} [data-action=heard]")
        await bob.wait_for(f"{text_of('#voicemail-status')} === 'Marked new'")
        assert await bob.evaluate(heard) == "false"
        assert await bob.text(f"{item} .vm-new") == "new"
        await alice.click("#voicemail-refresh")
        await alice.wait_for(f"{heard} === 'false'", 10)
        assert await alice.text(f"{item} .vm-heard") == ""
        listed = await bridge.api("GET", f"/api/v1/voicemails/{message}", "olivia")
        assert listed.json()["heard"] is False and listed.json()["heard_by"] is None
        await alice.click(f"{item} [data-action=heard]")
        await alice.wait_for(f"{text_of('#voicemail-status')} === 'Marked heard'")
        listed = await bridge.api("GET", f"/api/v1/voicemails/{message}", "olivia")
        assert listed.json()["heard_by"] == "alice"

        # A reporter sees it, heard, and is offered neither Mark heard nor Delete (read-only).
        reporter = await open_console(browser, bridge, "rita")
        await reporter.wait_for(f"{heard} === 'true'")
        assert await reporter.count(f"{item} [data-action=heard]") == 0
        assert await reporter.count(f"{item} [data-action=delete]") == 0
        assert await reporter.count(f"{item} [data-action=play]") == 1
        errors = alice.errors + bob.errors + reporter.errors
        assert not errors, errors


async def test_without_an_event_outbox_the_records_say_they_are_not_kept(
    tmp_path: Path, browser: Browser
) -> None:
    # The outbox's path is a folder: it cannot be opened, the bridge runs without records.
    (tmp_path / "not-a-database").mkdir()
    people = {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            {"id": "ana", "name": "Ana", "role": "agent", "answer_by": "apps"},
        ],
    }
    outbox = str(tmp_path / "not-a-database")
    with bridge_process(tmp_path, people, wait_ready=False, events__outbox_path=outbox) as bridge:
        for user_id, audited in (("admin", True), ("ana", False)):
            page = await sip_console(browser, bridge, user_id)
            await page.wait_for("!document.querySelector('#recent-unavailable').hidden", 10)
            note = await page.text("#recent-unavailable")
            assert "call history is not available on this server" in note
            assert await page.prop("#recent-list", "hidden") is True
            if audited:
                await page.wait_for("!document.querySelector('#audit-unavailable').hidden", 10)
                assert "not available on this server" in await page.text("#audit-unavailable")
                assert await page.prop("#audit-records", "checkVisibility()") is False
            else:
                assert await page.prop("#audit", "hidden") is True
                assert not await page.evaluate(asked("/api/v1/audit"))
            assert not page.errors, page.errors
