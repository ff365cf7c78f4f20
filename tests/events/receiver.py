"""A webhook receiver for tests: a real HTTP server on loopback (aiohttp) that verifies every
request's Standard Webhooks signature with the spec's own library (`standardwebhooks`), keeps
what it received, and answers as the test scripts it (a status per try, a Retry-After, a
redirect, a huge body, no answer at all)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Received:
    webhook_id: str
    timestamp: str
    signature: str
    body: dict[str, Any]
    verified: bool
    at: float
    status: int


@dataclass
class Receiver:
    """`answer(received_so_far, body) -> status` decides each answer (default 200);
    `retry_after` is sent with 408/429; `hang` makes it never answer; `huge` streams 10 MiB."""

    secret: str = SECRET
    answer: Callable[[list[Received], dict[str, Any]], int] = lambda got, body: 200
    retry_after: str | None = None
    hang: bool = False
    huge: bool = False
    got: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        # (a handler that hangs must not hold the test's end for aiohttp's default 60 s)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            Webhook(self.secret).verify(raw, headers)
            verified = True
        except Exception:
            verified = False
        body = json.loads(raw)
        if self.hang:
            await asyncio.sleep(3600)
        status = self.answer(self.got, body)
        self.got.append(
            Received(
                headers.get("webhook-id", ""),
                headers.get("webhook-timestamp", ""),
                headers.get("webhook-signature", ""),
                body,
                verified,
                time.monotonic(),
                status,
            )
        )
        if self.huge:
            response = web.StreamResponse(status=status)
            await response.prepare(request)
            chunk = b"x" * 65536
            for _ in range(160):
                await response.write(chunk)
            return response
        extra = {}
        if status in (408, 429) and self.retry_after is not None:
            extra["Retry-After"] = self.retry_after
        if 300 <= status < 400:
            extra["Location"] = "http://127.0.0.1:9/elsewhere"
        return web.Response(status=status, text="ok", headers=extra)

    def delivered(self) -> list[Received]:
        """The requests answered 2xx."""
        return [r for r in self.got if 200 <= r.status < 300]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until `count` requests were answered 2xx."""
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.delivered())} of {count} delivered ({len(self.got)} tries)"
                )
            await asyncio.sleep(0.02)
        return self.delivered()
