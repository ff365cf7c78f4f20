"""People log in to the console with their email and password, in headless Chromium against a
real `bridge run`: before login only the login form; a wrong password said in words; after
login the page's main view, connected; the access token renewed before it expires (the
WebSocket stays up past the first token's expiry); the password changed from the page; a
reload resumes the login (its cookie); logging out leaves only the login form, and the
session is over (a reload stays logged out); a lockout and an unreachable bridge in words."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from tests.console.cdp import Browser, Page, text_of
from tests.console.conftest import CONNECTED, bridge_run, needs_chromium

pytestmark = needs_chromium

PASSWORD = "alice-has-a-long-password"
NEW_PASSWORD = "alice-changed-it-from-the-page"
READY = "document.body.dataset.ready === 'true'"
# Shown and hidden as the user sees it (laid out or not), not only the `hidden` attribute.
ONLY_LOGIN_FORM = "".join(
    f"{'' if shown else '!'}document.querySelector('{selector}').checkVisibility() && "
    for selector, shown in (
        ("#login", True), ("#password-form", True), ("#login-form", False), ("#app", False),
        ("#whoami", False), ("#logout", False),
    )
) + "true"  # fmt: skip


async def log_in(page: Page, email: str, password: str, *, refused: bool = False) -> str:
    """Fill in the form and press "Log in"; with `refused`, wait for the error and return it
    (pressing the button clears the last one at once)."""
    await page.evaluate("document.querySelector('#email').value = ''")
    await page.type_into("#email", email)
    await page.type_into("#password", password)
    await page.click("#password-form button[type=submit]")
    if not refused:
        return ""
    return str(await page.wait_for(f"{text_of('#login-error')} || null"))


async def test_log_in_with_email_and_password_then_log_out(
    tmp_path: Path, browser: Browser, shots: Path
) -> None:
    settings = {"auth__access_ttl_seconds": "10", "auth__login_max_failures": "3"}
    with bridge_run(tmp_path, **settings) as bridge:
        for user_id, password in (("alice", PASSWORD), ("bob", "bob-has-one-too-123")):
            response = await bridge.api(
                "PUT", f"/api/v1/users/{user_id}/password", "olivia", json={"password": password}
            )
            assert response.status_code == 204, response.text
        # The test directory has no emails: give alice and bob theirs.
        for user_id in ("alice", "bob"):
            response = await bridge.api(
                "PATCH", f"/api/v1/users/{user_id}", "olivia",
                json={"email": f"{user_id}@example.com"},
            )  # fmt: skip
            assert response.status_code == 200, response.text

        page = await browser.new_page()
        await page.navigate(f"{bridge.url}/console")
        await page.wait_for(READY)
        # Before login: only the login form (email and password), the token way one click away.
        assert await page.evaluate(ONLY_LOGIN_FORM)
        assert await page.text("#use-token") == "use an API token"
        await page.screenshot(shots / "console-login.png")

        refused = await log_in(page, "alice@example.com", "not-her-password", refused=True)
        assert refused == "Wrong email or password."
        assert await page.evaluate(ONLY_LOGIN_FORM)

        await log_in(page, "Alice@Example.com", PASSWORD)
        await page.wait_for(CONNECTED)
        logged_in = time.monotonic()
        assert await page.text("#me-name") == "Alice Doe"
        for selector, shown in (("#app", True), ("#login", False), ("#carrier-note", True)):
            assert await page.evaluate(
                f"document.querySelector('{selector}').checkVisibility()"
            ) is shown, selector  # fmt: skip
        assert "carrier's voice SDK" in await page.text("#carrier-note")
        await page.screenshot(shots / "console-logged-in.png")
        # The refresh cookie is HttpOnly (and path-limited): no script of the page sees it.
        assert "bridge_refresh" not in await page.evaluate("document.cookie")
        first = await page.text("#connection")

        # The 10 s access token is renewed before it expires, and the WebSocket session goes on
        # with the new one (its `auth` frame): still connected after the first one expired.
        await page.wait_for(f"{text_of('#connection')} !== {first!r}", timeout=15)
        await asyncio.sleep(max(0.0, logged_in + 12 - time.monotonic()))
        assert await page.evaluate(CONNECTED), await page.text("#connection")
        assert await page.text("#me-name") == "Alice Doe"

        # Change the password from the page.
        await page.click("#password-change summary")
        await page.type_into("#current-password", PASSWORD)
        await page.type_into("#new-password", NEW_PASSWORD)
        await page.type_into("#confirm-password", NEW_PASSWORD)
        await page.click("#change-password-form button[type=submit]")
        await page.wait_for(f"{text_of('#change-password-status')}.startsWith('Password changed')")

        # A reload resumes the login through its cookie.
        await page.navigate(f"{bridge.url}/console")
        await page.wait_for(CONNECTED)
        assert await page.text("#me-name") == "Alice Doe"

        await page.click("#logout")
        await page.wait_for(ONLY_LOGIN_FORM)
        assert await page.evaluate("sessionStorage.length") == 0
        # The session is over at the bridge: a reload stays on the login form.
        await page.navigate(f"{bridge.url}/console")
        await page.wait_for(READY)
        assert await page.evaluate(ONLY_LOGIN_FORM)
        await page.screenshot(shots / "console-logged-out.png")

        # The new password is the one that works now.
        refused = await log_in(page, "alice@example.com", PASSWORD, refused=True)
        assert refused == "Wrong email or password."
        await log_in(page, "alice@example.com", NEW_PASSWORD)
        await page.wait_for(CONNECTED)
        await page.click("#logout")
        await page.wait_for(ONLY_LOGIN_FORM)

        # Three failures lock bob's account: said with how long.
        for attempt in range(3):
            refused = await log_in(page, "bob@example.com", "wrong-wrong-wrong", refused=True)
            assert refused == (
                "Wrong email or password."
                if attempt < 2
                else "Too many failed attempts: locked out. Try again in 15 minutes."
            )
        refused = await log_in(page, "bob@example.com", "bob-has-one-too-123", refused=True)
        assert refused.startswith("Too many failed attempts"), refused  # locked, even so

        # The bridge is gone: said so.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bridge.process.pid, signal.SIGTERM)
        bridge.process.wait(timeout=15)
        refused = await log_in(page, "bob@example.com", "bob-has-one-too-123", refused=True)
        assert refused.startswith("The bridge cannot be reached"), refused
        assert page.errors == []
