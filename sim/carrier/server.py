"""`FakeCarrier`: the one object tests and load runs hold.

It serves the REST API on 127.0.0.1 (a free port by default), plays the carrier's side towards a
bridge (signed voice webhooks, status callbacks, callee behaviour per target), and keeps the
evidence a test asserts on: `violations`, `requests`, `counts`, `deliveries`, and the resources.

    async with FakeCarrier(bridge_url="http://127.0.0.1:8080") as carrier:
        client = Client(carrier.account_sid, carrier.auth_token,
                        http_client=AsyncTwilioHttpClient())
        client.api.base_url = carrier.url
        ...
        carrier.assert_no_violations()
"""

from __future__ import annotations

import asyncio
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from .models import Call, Conference, Recording
from .network import Network
from .policy import TargetPolicy
from .rest import Fault, RequestRecord, RestApi
from .spec import SPEC_PATH, Violation, load_spec
from .twiml import TwimlRunner, parse
from .webhooks import Delivery, Order, Webhooks

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fake-carrier-auth-token"


@dataclass
class InboundCall:
    """An inbound call the carrier offered to the bridge, and the bridge's answer."""

    call: Call
    webhook: Delivery
    # The task executing the bridge's TwiML (follow=True), which may outlive the call itself:
    # Twilio still requests a <Dial>/<Record> action after the caller hung up.
    driver: asyncio.Task[Any] | None = None

    @property
    def sid(self) -> str:
        return self.call.sid

    @property
    def status(self) -> int:
        """HTTP status of the bridge's answer to the voice webhook (0: unreachable)."""
        return self.webhook.statuses[-1] if self.webhook.statuses else 0

    @property
    def text(self) -> str:
        return self.webhook.body or ""

    @property
    def xml(self) -> ET.Element | None:
        """The TwiML answer parsed (root `<Response>`), or None if it is not TwiML."""
        return parse(self.text)

    async def wait_ended(self, timeout: float = 5.0) -> Call:
        """Wait until the call has ended and the carrier is done with its TwiML."""
        async with asyncio.timeout(timeout):
            await self.call.ended.wait()
            if self.driver is not None:
                await asyncio.shield(self.driver)
        return self.call


class FakeCarrier:
    """A stand-in for Twilio's 2010 REST API and its webhooks (see the module docstring)."""

    def __init__(
        self,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        api_keys: Mapping[str, str] | None = None,
        bridge_url: str | None = None,
        public_url: str | None = None,
        voice_path: str = "/twilio/voice",
        status_path: str | None = "/twilio/status",
        time_scale: float = 0.01,
        default_policy: TargetPolicy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        spec_path: Path = SPEC_PATH,
        documented_enums: bool = True,
    ) -> None:
        """
        `bridge_url` is where the bridge listens (webhooks are sent there); `public_url` is the
        URL the bridge believes it has (`[http] public_url`), which signatures are computed over
        and which callback URLs start with; it defaults to `bridge_url`. `api_keys` maps API key
        sids to secrets accepted as basic credentials besides the account sid and auth token.
        """
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.voice_path = voice_path
        self.status_path = status_path
        self.host = host
        self._port = port
        self.webhooks = Webhooks(auth_token, bridge_url=bridge_url, public_url=public_url)
        self.net = Network(
            account_sid=account_sid,
            webhooks=self.webhooks,
            time_scale=time_scale,
            default_policy=default_policy,
        )
        self.net.runner = TwimlRunner(self.net)
        self.rest = RestApi(
            spec=load_spec(spec_path.resolve(), documented_enums),
            net=self.net,
            account_sid=account_sid,
            auth_token=auth_token,
            api_keys=dict(api_keys or {}),
        )
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> FakeCarrier:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.rest.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        await self.webhooks.start()
        return self

    async def stop(self) -> None:
        await self.net.close()
        await self.webhooks.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeCarrier:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the REST API; give it to the twilio client as `client.api.base_url`."""
        return f"http://{self.host}:{self._port}"

    def set_bridge(self, bridge_url: str, public_url: str | None = None) -> None:
        """Point webhooks at a bridge started after the carrier."""
        self.webhooks.bridge_url = bridge_url.rstrip("/")
        self.webhooks.public_url = (public_url or bridge_url).rstrip("/")

    # -- evidence -------------------------------------------------------------------------------

    @property
    def violations(self) -> list[Violation]:
        """Every way a REST request departed from the published description."""
        return self.rest.violations

    def assert_no_violations(self) -> None:
        if self.rest.violations:
            lines = "\n  ".join(str(v) for v in self.rest.violations)
            raise AssertionError(f"requests out of the Twilio spec:\n  {lines}")

    @property
    def requests(self) -> list[RequestRecord]:
        return self.rest.requests

    @property
    def counts(self) -> Counter[str]:
        """REST requests per spec operationId ("CreateParticipant": 3), faults included."""
        return self.rest.counts

    @property
    def deliveries(self) -> list[Delivery]:
        """Every webhook and status callback sent to the bridge, in the order they were made."""
        return self.webhooks.deliveries

    def callbacks(self, kind: str | None = None) -> list[Delivery]:
        return [d for d in self.webhooks.deliveries if kind is None or d.kind == kind]

    @property
    def calls(self) -> dict[str, Call]:
        return self.net.calls

    @property
    def conferences(self) -> dict[str, Conference]:
        return self.net.conferences

    @property
    def recordings(self) -> dict[str, Recording]:
        return self.net.recordings

    def calls_to(self, to: str) -> list[Call]:
        return [c for c in self.net.calls.values() if c.to == to]

    def conference(self, key: str) -> Conference | None:
        """A conference by sid or friendly name."""
        return self.net.conference(key)

    # -- behaviour ------------------------------------------------------------------------------

    def set_target(self, to: str, policy: TargetPolicy) -> None:
        """How the callee at `to` (client:alice, sip:..., +1555...) behaves from now on."""
        self.net.policies[to] = policy

    def inject_fault(
        self,
        count: int = 1,
        status: int = 503,
        *,
        path: str | None = None,
        method: str | None = None,
        operation: str | None = None,
    ) -> Fault:
        """Answer the next `count` matching REST requests with `status` (after auth and spec
        checks, before any effect). `path` is a regex searched in the request path, `operation`
        a spec operationId such as "CreateParticipant"."""
        fault = Fault(
            count,
            status,
            re.compile(path) if path else None,
            method.upper() if method else None,
            operation,
        )
        self.rest.faults.append(fault)
        return fault

    @property
    def callback_repeat(self) -> int:
        """How many times each status callback is delivered (2: as if Twilio retried it)."""
        return self.webhooks.repeat

    @callback_repeat.setter
    def callback_repeat(self, value: int) -> None:
        self.webhooks.repeat = value

    def hold_callbacks(self) -> None:
        """Queue status callbacks instead of sending them, until `release_callbacks`."""
        self.webhooks.hold()

    def release_callbacks(
        self, order: Order = "fifo", *, seed: int | None = None
    ) -> list[Delivery]:
        """Send the held callbacks, in `order` (fifo, reverse, shuffle)."""
        return self.webhooks.release(order, seed=seed)

    async def drain(self) -> None:
        """Wait until every status callback queued so far has been delivered."""
        await self.webhooks.drain()

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 2.0, interval: float = 0.005
    ) -> Any:
        """Poll `predicate` until it returns something truthy; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            await asyncio.sleep(interval)

    def answer(self, call_sid: str) -> None:
        """The callee of a ringing outbound call picks up now."""
        self.net.answer(call_sid)

    def hangup(self, call_sid: str) -> None:
        """The far end of a call hangs up (the caller, for an inbound call)."""
        self.net.hangup(call_sid)

    # -- carrier -> bridge ----------------------------------------------------------------------

    async def place_inbound_call(
        self,
        from_: str,
        to: str,
        *,
        path: str | None = None,
        params: Mapping[str, str] | None = None,
        follow: bool = False,
        hangup_after: float | None = None,
        digits: str | None = None,
        message_seconds: float = 3.0,
    ) -> InboundCall:
        """Offer an inbound call to the bridge: POST the signed voice webhook, return its answer.

        With `follow=True` the carrier then executes the returned TwiML in the background
        (dials, conferences, actions...). `hangup_after` simulated seconds, the caller hangs up;
        `digits` are what the caller presses at a `<Gather>`; `message_seconds` is how long a
        message it leaves at a `<Record>`. `params` adds to or overrides the webhook fields.
        """
        call = self.net.new_call(from_=from_, to=to, direction="inbound", status="ringing")
        call.digits = digits
        call.message_seconds = message_seconds
        if self.status_path:
            # The number's status callback: Twilio sends only "completed" for inbound calls.
            call.status_callback = self.webhooks.public(self.status_path)
        url = self.webhooks.public(path or self.voice_path)
        fields = self.net.call_params(call)
        fields.update(params or {})
        delivery = await self.webhooks.request("voice", url, fields)
        inbound = InboundCall(call, delivery)
        if hangup_after is not None:
            self.net.later(hangup_after, self.net.end_call, call, "completed", "caller-hangup")
        if follow:
            inbound.driver = self.net.drive(call, self._follow(call, inbound, url))
        return inbound

    async def _follow(self, call: Call, inbound: InboundCall, url: str) -> None:
        if 200 <= inbound.status < 300:
            await self.net.runner.execute(call, inbound.text, url)
        else:
            self.net.answer_call(call)  # to play "an application error has occurred"
        # The document ran out (or the bridge failed): Twilio hangs up.
        self.net.end_call(call, "completed", call.end_reason or "twiml-end")
