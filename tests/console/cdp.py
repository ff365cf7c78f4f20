"""Headless Chromium driven over the Chrome DevTools Protocol, with nothing but `websockets`.

`Chromium` starts `/usr/bin/chromium --headless` in its own process group on a free loopback
debugging port and a throw-away profile; `Browser` is one CDP connection to it (the browser
target, pages attached with flat sessions); `Page` is one tab: navigate, evaluate (awaiting
promises), click and type like a user, wait for a condition (polled, bounded), screenshot.
JavaScript exceptions and console errors on a page are collected so a test can assert there
were none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
]


class CdpError(Exception):
    """A CDP command failed, or a page's script threw."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Chromium:
    """The browser process (its own process group, killed whole by `stop`)."""

    def __init__(self, profile: Path, log: Path, extra_flags: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.log = log
        with log.open("w") as out:
            command = [str(CHROMIUM), *FLAGS, *extra_flags, f"--remote-debugging-port={self.port}"]
            command += [f"--user-data-dir={profile}", "about:blank"]
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own: the renderers and GPU go with it
            )
        self.ws_url = self._wait_endpoint(timeout=20)

    def _wait_endpoint(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.log.read_text()[-2000:]}")
            try:
                url = f"http://127.0.0.1:{self.port}/json/version"
                with urllib.request.urlopen(url, timeout=1) as response:
                    return str(json.loads(response.read())["webSocketDebuggerUrl"])
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"no DevTools endpoint: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # Children that outlived the browser process (the group is gone once they are).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class Browser:
    """One CDP connection: commands by id, events to the pages' sessions."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, chromium: Chromium) -> Browser:
        ws = await connect(chromium.ws_url, max_size=64 * 1024 * 1024, open_timeout=10)
        return cls(ws)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._ws.close()

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
        timeout: float = 15.0,
    ) -> dict[str, Any]:  # fmt: skip
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self._ws.send(json.dumps(message))
        try:
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(message_id, None)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def new_page(self, width: int = 1280, height: int = 860) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, target["targetId"], attached["sessionId"])
        self._pages[page.session] = page
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._waiting.get(message["id"])
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("sessionId") in self._pages:
                self._pages[message["sessionId"]].on_event(message["method"], message["params"])


class Page:
    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session
        self.errors: list[str] = []  # uncaught exceptions and console.error lines

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            args = params["args"]
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in args))

    async def navigate(self, url: str, timeout: float = 10.0) -> None:
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigate {url}: {result['errorText']}")
        await self.wait_for("document.readyState === 'complete'", timeout=timeout)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details["text"]
            raise CdpError(f"{expression[:80]!r} threw: {text}")
        return result["result"].get("value")

    async def text(self, selector: str) -> str:
        """The trimmed text of the first element matching `selector` ('' when none)."""
        return str(await self.evaluate(text_of(selector)))

    async def prop(self, selector: str, name: str) -> Any:
        """A property of the first element matching `selector` (None when none)."""
        return await self.evaluate(f"document.querySelector({json.dumps(selector)})?.{name}")

    async def count(self, selector: str) -> int:
        return int(await self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll `expression` until it is truthy (bounded); its value."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.05)
        text = await self.evaluate("document.body ? document.body.innerText : ''")
        raise AssertionError(
            f"not true within {timeout} s: {expression}\n(last value {value!r})\npage:\n{text}"
        )

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (a disabled or covered element does not
        get it, as with a user)."""
        box = await self.evaluate(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el) return null;
                el.scrollIntoView({{block: "center"}});
                const r = el.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        if box is None:
            raise AssertionError(f"no element {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the field and type (as an IME would insert it)."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", {"text": text})

    async def screenshot(self, path: Path) -> bytes:
        """A PNG of the page as far down as its content goes (no empty viewport below)."""
        size = await self.evaluate(
            "({width: document.documentElement.clientWidth, height: Math.max(360, "
            "Math.ceil(document.body.getBoundingClientRect().bottom) + 16)})"
        )
        shot = await self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, **size, "scale": 1},
            },
        )
        data = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.browser.send("Target.closeTarget", {"targetId": self.target})


def text_of(selector: str) -> str:
    """A JS expression: the trimmed text of the first element matching `selector` ('' if
    none), for `Page.wait_for`."""
    return f"(document.querySelector({json.dumps(selector)})?.textContent ?? '').trim()"


def present(selector: str) -> str:
    """A JS expression: an element matches `selector`."""
    return f"document.querySelector({json.dumps(selector)}) !== null"
