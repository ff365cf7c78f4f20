"""The carrier's outbound HTTP: signed webhooks to the bridge and the status-callback queue.

Every request carries `X-Twilio-Signature`, computed by the `twilio` package's own
`RequestValidator.compute_signature` over the URL *as the bridge published it* (its
`public_url`), so the bridge validates exactly what it would validate in production even though
the fake actually connects to a loopback address.

Status callbacks go through one queue, delivered in order by one worker, because Twilio sends
them asynchronously (the REST call that caused one returns first). Tests can hold the queue and
release it in another order, and can have every callback delivered more than once, to prove the
bridge's handlers are idempotent and order-tolerant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
from twilio.request_validator import RequestValidator
from yarl import URL

log = logging.getLogger("sim.carrier.webhooks")

Order = Literal["fifo", "reverse", "shuffle"]


@dataclass
class Delivery:
    """One webhook request the carrier made (or will make), with what came back."""

    kind: str  # voice | call-status | conference-status | recording-status | action | url
    url: str  # as the bridge gave it; the signature covers this URL
    params: dict[str, str]
    method: str = "POST"
    # One entry per attempt: the HTTP status, or 0 when the bridge could not be reached.
    statuses: list[int] = field(default_factory=list)
    body: str | None = None  # response text of the last attempt

    @property
    def event(self) -> str | None:
        """The event this callback reports, whatever its kind."""
        return (
            self.params.get("StatusCallbackEvent")
            or self.params.get("RecordingStatus")
            or self.params.get("CallStatus")
        )


class Webhooks:
    """Signs and sends the carrier's requests to the bridge."""

    def __init__(
        self,
        auth_token: str,
        *,
        bridge_url: str | None,
        public_url: str | None,
        timeout: float = 10.0,
    ) -> None:
        self.validator = RequestValidator(auth_token)
        self.bridge_url = bridge_url.rstrip("/") if bridge_url else None
        self.public_url = (public_url or bridge_url or "").rstrip("/") or None
        self.timeout = timeout
        self.deliveries: list[Delivery] = []
        # How many times each status callback is sent (2 = "Twilio retried it").
        self.repeat = 1
        self.held: list[Delivery] | None = None
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._worker = asyncio.create_task(self._deliver_forever(), name="carrier-callbacks")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._session:
            await self._session.close()
            self._session = None

    # -- addressing -----------------------------------------------------------------------------

    def public(self, path: str) -> str:
        """The bridge's public URL for a path (what the bridge signs and publishes)."""
        if urlsplit(path).scheme:
            return path
        if not self.public_url:
            raise RuntimeError("the fake carrier has no bridge_url/public_url configured")
        return self.public_url + path

    def target(self, url: str) -> str:
        """Where to connect for a published URL: its public prefix swapped for the bridge's."""
        if self.public_url and self.bridge_url and url.startswith(self.public_url):
            return self.bridge_url + url[len(self.public_url) :]
        return url

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        return str(self.validator.compute_signature(url, dict(params)))

    # -- synchronous webhooks (the response matters: TwiML) -------------------------------------

    async def request(
        self, kind: str, url: str, params: Mapping[str, str], method: str = "POST"
    ) -> Delivery:
        """Send one signed webhook now and return it with the response (voice, action, url)."""
        delivery = Delivery(kind, url, dict(params), method.upper())
        self.deliveries.append(delivery)
        await self._send(delivery)
        return delivery

    async def _send(self, delivery: Delivery) -> None:
        assert self._session is not None, "the fake carrier is not started"
        if delivery.method == "GET":
            # Twilio puts GET parameters in the query string and signs the full URL alone.
            sep = "&" if "?" in delivery.url else "?"
            signed_url = delivery.url + (
                sep + urlencode(delivery.params) if delivery.params else ""
            )
            signature, data = self.sign(signed_url, {}), None
            url = self.target(signed_url)
        else:
            signature, data = self.sign(delivery.url, delivery.params), delivery.params
            url = self.target(delivery.url)
        headers = {
            "X-Twilio-Signature": signature,
            "User-Agent": "TwilioProxy/1.1",
            "Accept": "*/*",
        }
        try:
            # encoded=True: send the URL byte for byte as signed, no re-quoting on the way.
            async with self._session.request(
                delivery.method, URL(url, encoded=True), data=data, headers=headers
            ) as response:
                delivery.body = await response.text()
                delivery.statuses.append(response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("webhook %s %s failed: %s", delivery.method, url, exc)
            delivery.statuses.append(0)
            delivery.body = None

    # -- asynchronous status callbacks ----------------------------------------------------------

    def enqueue(
        self, kind: str, url: str, params: Mapping[str, str], method: str = "POST"
    ) -> Delivery:
        delivery = Delivery(kind, url, dict(params), method.upper())
        self.deliveries.append(delivery)
        if self.held is not None:
            self.held.append(delivery)
        else:
            self._queue.put_nowait(delivery)
        return delivery

    def hold(self) -> None:
        """Keep status callbacks back until `release` (to reorder or inspect them)."""
        if self.held is None:
            self.held = []

    def release(self, order: Order = "fifo", *, seed: int | None = None) -> list[Delivery]:
        """Deliver the held callbacks in the given order; returns them in that order."""
        held, self.held = self.held or [], None
        if order == "reverse":
            held.reverse()
        elif order == "shuffle":
            random.Random(seed).shuffle(held)
        for delivery in held:
            self._queue.put_nowait(delivery)
        return held

    async def drain(self) -> None:
        """Wait until every queued callback has been sent (held ones are not waited for)."""
        await self._queue.join()

    async def _deliver_forever(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                for _ in range(max(1, self.repeat)):
                    await self._send(delivery)
            except Exception:  # a bad callback must not stop the ones behind it
                log.exception("status callback to %s failed", delivery.url)
            finally:
                self._queue.task_done()
