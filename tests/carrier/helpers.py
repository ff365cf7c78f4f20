"""The carrier's side of the webhooks, for tests: signed requests and parsed TwiML."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from twilio.request_validator import RequestValidator

from tests.conftest import Bridge

AUTH_TOKEN = "carrier-test-auth-token-0123"
ACCOUNT_SID = "AC" + "0" * 32
PUBLIC_URL = "https://bridge.example.com"

# Lines of the carrier test directory (see conftest.DIRECTORY).
FRONT = "+15550100"  # group front: [ana (apps), ben (ip_phone), cid (phone)] 20 s; [eve] 15 s
FORWARD = "+15550101"  # group fwd: [ana] 10 s, then forward to +15550009000
CHAIN = "+15550102"  # group chain: [ana] 10 s, then group back: [eve] 12 s, then hang up
CLOSED = "+15550103"  # never open: voicemail "We are closed."
DIRECT = "+15550104"  # straight to dee (phone_number, confirm_answer), backup routing
TURNS = "+15550105"  # group turns: round robin [ana, eve], 10 s each, 30 s layer
CONFIRMED = "+15550106"  # group front again, but the line asks every number leg to press 1
CLOSED_HANGUP = "+15550107"  # never open: hang up with a message
CLOSED_FORWARD = "+15550108"  # never open: forward to +15550009001
HANGUP = "+15550109"  # group gone: [ana] 10 s, then hang up with a message
BEN_SIP = "sip:201@127.0.0.1:5060"  # ben's desk phone through the bridge's [sip] address


def sid(prefix: str = "CA") -> str:
    return f"{prefix}{next(_SIDS):032x}"


_SIDS = itertools.count(0xA000)


def element(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    assert root.tag == "Response", xml
    return root


def verbs(root: ET.Element) -> list[str]:
    return [child.tag for child in root]


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def nouns(dial: ET.Element) -> list[tuple[str, str]]:
    return [(noun.tag, (noun.text or "").strip()) for noun in dial]


@dataclass
class CarrierCall:
    """One inbound call as the carrier sees it: its CallSid and the TwiML it was given."""

    sid: str
    to: str
    caller: str
    twiml: ET.Element
    leg_sids: dict[str, str] = field(default_factory=dict)  # our leg id -> carrier CallSid

    @property
    def dial(self) -> ET.Element:
        found = self.twiml.find("Dial")
        assert found is not None, ET.tostring(self.twiml)
        return found

    def noun(self, text: str) -> ET.Element:
        for noun in self.dial:
            if (noun.text or "").strip() == text:
                return noun
        raise AssertionError(f"no noun {text!r} in {nouns(self.dial)}")

    def leg_of(self, text: str) -> str:
        return query_of(self.noun(text).get("statusCallback", ""))["leg"]


class Carrier:
    """Plays the carrier: signs like it (the SDK's `compute_signature` over the public URL)."""

    def __init__(self, bridge: Bridge, client: httpx.AsyncClient) -> None:
        self.bridge = bridge
        self.client = client
        self.signer = RequestValidator(AUTH_TOKEN)

    async def post(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        signature: str | None = "compute",
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST a form to `url` (absolute under PUBLIC_URL, or a path), signed unless told."""
        if not url.startswith("http"):
            url = PUBLIC_URL + url
        sent = dict(headers or {})
        if signature == "compute":
            sent["X-Twilio-Signature"] = self.signer.compute_signature(url, dict(params))
        elif signature is not None:
            sent["X-Twilio-Signature"] = signature
        path = url.removeprefix(PUBLIC_URL)
        return await self.client.post(path, data=dict(params), headers=sent)

    async def twiml(self, url: str, params: Mapping[str, str]) -> ET.Element:
        response = await self.post(url, params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/xml")
        return element(response.text)

    async def call(self, to: str, caller: str = "+14155550001") -> CarrierCall:
        call_sid = sid()
        root = await self.twiml(
            "/twilio/voice",
            {
                "CallSid": call_sid,
                "AccountSid": ACCOUNT_SID,
                "From": caller,
                "To": to,
                "CallStatus": "ringing",
                "Direction": "inbound",
            },
        )
        return CarrierCall(call_sid, to, caller, root)

    async def dial_ended(
        self,
        call: CarrierCall,
        dial_status: str,
        *,
        call_status: str = "in-progress",
        dial_call_sid: str | None = None,
    ) -> ET.Element:
        """The carrier requests the current <Dial>'s action; the call gets the new TwiML."""
        params = {
            "CallSid": call.sid,
            "AccountSid": ACCOUNT_SID,
            "DialCallStatus": dial_status,
            "CallStatus": call_status,
        }
        if dial_call_sid:
            params["DialCallSid"] = dial_call_sid
        call.twiml = await self.twiml(call.dial.get("action", ""), params)
        return call.twiml

    async def leg_status(
        self, call: CarrierCall, text: str, status: str, *, sequence: int | None = None
    ) -> httpx.Response:
        """A status callback of the leg `text` (identity, SIP URI or number) of the current
        <Dial>."""
        noun = call.noun(text)
        leg = query_of(noun.get("statusCallback", ""))["leg"]
        leg_sid = call.leg_sids.setdefault(leg, sid())
        params = {
            "CallSid": leg_sid,
            "ParentCallSid": call.sid,
            "AccountSid": ACCOUNT_SID,
            "CallStatus": status,
        }
        if sequence is not None:
            params["SequenceNumber"] = str(sequence)
        response = await self.post(noun.get("statusCallback", ""), params)
        assert response.status_code == 204, response.text
        return response

    async def answer(self, call: CarrierCall, text: str) -> None:
        await self.leg_status(call, text, "ringing")
        await self.leg_status(call, text, "in-progress")

    async def caller_status(self, call: CarrierCall, status: str) -> httpx.Response:
        response = await self.post(
            "/twilio/status",
            {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "CallStatus": status},
        )
        assert response.status_code == 204, response.text
        return response

    def live_calls(self, user: str = "olivia") -> list[dict[str, Any]]:
        response = self.bridge.as_user(user, "GET", "/api/v1/calls")
        assert response.status_code == 200, response.text
        return response.json()

    def sample(self, name: str, **labels: str) -> float:
        value = self.bridge.ctx.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def form(params: Mapping[str, str]) -> str:
    return urlencode(params)
