"""The console under test: a real `bridge run` on a free loopback port, headless Chromium
pages logged in as its users, and (for the supervisor scenario) the fake carrier in front.

Chromium is started once per module (a process group of its own, killed at the end); every
test gets its own bridge, its own CDP connection and fresh tabs. Screenshots go to a temporary
folder, or to `$BRIDGE_CONSOLE_SCREENSHOTS` (`BRIDGE_CONSOLE_SCREENSHOTS=docs/img` is how the
committed ones in docs/img/ are made), so that a test run leaves the tree as it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bridge.tokens import TokenService
from tests.console.cdp import CHROMIUM, Browser, Chromium, Page, free_port

SECRET = "console-test-secret-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]

# Skipped on a developer's machine without Chromium; under CI (CI=true, set by .ci/run) the
# tests run anyway and fail on the missing browser, like the SIPp and baresip tests.
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI") != "true",
    reason="/usr/bin/chromium is missing (Debian package `chromium`; `make test` installs it)",
)

# Two agents who answer with apps, a supervisor with the barge/whisper flag, an admin (who
# rings test offers); one line to a ring group of both agents.
DIRECTORY: dict[str, Any] = {
    "timezone": "America/New_York",
    "users": [
        {"id": "olivia", "name": "Olivia Admin", "role": "admin", "answer_by": "will_not_answer"},
        {"id": "alice", "name": "Alice Doe", "role": "agent", "answer_by": "apps",
         "wrap_up_seconds": 30},
        {"id": "bob", "name": "Bob Stone", "role": "agent", "answer_by": "apps"},
        {"id": "sam", "name": "Sam Supervisor", "role": "supervisor",
         "answer_by": "will_not_answer", "permissions": ["barge_whisper", "recording_control"]},
    ],
    "ring_groups": [
        {"id": "sales", "name": "Sales",
         "layers": [{"members": ["alice", "bob"], "timeout_seconds": 30}],
         "fallback": {"action": "hangup"}},
    ],
    "lines": [{"number": "+15550100", "name": "Main line", "route_to": {"ring_group": "sales"}}],
}  # fmt: skip
LINE = "+15550100"
CONNECTED = "document.querySelector('#connection').dataset.state === 'online'"


@dataclass
class RunningBridge:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    tokens: TokenService = field(default_factory=lambda: TokenService(SECRET, 3600))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user_id: str) -> str:
        return self.tokens.issue(user_id)

    async def api(self, method: str, path: str, user_id: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user_id)}"}
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            return await client.request(method, path, headers=headers, **kw)


@contextlib.contextmanager
def bridge_run(tmp_path: Path, **env: str) -> Iterator[RunningBridge]:
    """`bridge run` on a free loopback port (no SIP listener), test offers on; `env` adds
    `BRIDGE_*` settings. Stopped with SIGTERM (its process group), killed if it lingers."""
    port = free_port()
    folder = tmp_path / "bridge"
    folder.mkdir()
    (folder / "directory.yaml").write_text(yaml.safe_dump(DIRECTORY, sort_keys=False))
    config = folder / "bridge.toml"
    config.write_text(
        f'[http]\nhost = "127.0.0.1"\nport = {port}\n[sip]\nenabled = false\n'
        f'[auth]\njwt_secret = "{SECRET}"\n[log]\nformat = "json"\n'
        "[daemon]\ndrain_timeout_seconds = 1\n"
    )
    log = folder / "bridge.log"
    environment = {**os.environ, "BRIDGE_WS__TEST_OFFERS": "true"}
    environment.update({f"BRIDGE_{key.upper()}": value for key, value in env.items()})
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    running = RunningBridge(process, port, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise AssertionError(f"bridge exited: {log.read_text()[-2000:]}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{running.url}/readyz", timeout=1) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"bridge not ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield running
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing (Debian package `chromium`)"
    folder = tmp_path_factory.mktemp("chromium")
    browser = Chromium(folder / "profile", folder / "chromium.log")
    try:
        yield browser
    finally:
        browser.stop()


@pytest.fixture
async def browser(chromium: Chromium) -> AsyncIterator[Browser]:
    connection = await Browser.connect(chromium)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go (see the module docstring)."""
    chosen = os.environ.get("BRIDGE_CONSOLE_SCREENSHOTS")
    return (REPO / chosen) if chosen else tmp_path / "shots"


async def open_console(browser: Browser, bridge: RunningBridge, user_id: str) -> Page:
    """A tab on /console, logged in as `user_id` the way an operator does it: "use an API
    token", paste the token, press "Log in"; returns once the page says it is connected.
    (People log in with their email and password: tests/console/test_login.py.)"""
    page = await browser.new_page()
    await page.navigate(f"{bridge.url}/console")
    await page.wait_for("document.body.dataset.ready === 'true'")
    await page.click("#use-token")
    await page.type_into("#token", bridge.token(user_id))
    await page.click("#login-form button[type=submit]")
    await page.wait_for(CONNECTED)
    return page
