"""A small TwiML interpreter: what the carrier does with the documents the bridge returns.

Enough of TwiML for the bridge's call flows, with the carrier's side of each verb simulated:

- `<Dial>` with `<Client>`, `<Sip>`, `<Number>`: one leg per noun, rung per target policy with the
  Dial `timeout`; the first leg answered (and past its `url` whisper, if any) is bridged, the
  others are cancelled; then the `action` URL gets `DialCallStatus`, and its TwiML runs next.
  `answerOnBridge="true"` keeps the caller ringing until a leg is bridged.
- `<Dial><Conference>`: the call joins the named conference until it leaves it.
- `<Gather>`: the far end presses `call.digits` (its policy's `digits`); none = timeout.
- `<Record>`: the caller leaves `call.message_seconds` of message, then hangs up; `action` and
  `recordingStatusCallback` are called as Twilio does.
- `<Redirect>`, `<Pause>`, `<Hangup>`, `<Reject>`; `<Say>`/`<Play>` just answer the call.
Anything else is noted in `Call.twiml_log` as unsupported and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urljoin

from .models import Call, Recording, new_sid
from .network import Network, split_events

log = logging.getLogger("sim.carrier.twiml")


@dataclass(frozen=True)
class _Next:
    """Continue with another document (Redirect, an action's response)."""

    text: str
    url: str | None


_HANGUP = "hangup"
_CONTINUE = "continue"


def parse(text: str) -> ET.Element | None:
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    return root if root.tag == "Response" else None


class TwimlRunner:
    """Executes TwiML on calls of a `Network`, fetching documents through its webhooks."""

    def __init__(self, net: Network) -> None:
        self.net = net

    # -- documents ------------------------------------------------------------------------------

    async def fetch(
        self, call: Call, url: str, method: str = "POST", kind: str = "url", **extra: str
    ) -> str | None:
        """Request TwiML for a call from the bridge; None when it did not answer with 2xx."""
        params = self.net.call_params(call)
        params.update(extra)
        delivery = await self.net.webhooks.request(kind, url, params, method)
        status = delivery.statuses[-1] if delivery.statuses else 0
        if not 200 <= status < 300:
            call.twiml_log.append(f"<!-- {kind} {url} answered {status} -->")
            return None
        return delivery.body or ""

    async def fetch_and_execute(self, call: Call, url: str, method: str = "POST") -> str:
        text = await self.fetch(call, url, method)
        if text is None:
            return _HANGUP  # Twilio plays "an application error has occurred" and hangs up
        return await self.execute(call, text, url)

    async def execute(self, call: Call, text: str, url: str | None) -> str:
        """Run a document (and the ones it leads to); returns "hangup" or "end"."""
        document: _Next | None = _Next(text, url)
        while document is not None:
            call.twiml_log.append(document.text)
            root = parse(document.text)
            if root is None:
                call.twiml_log.append("<!-- not TwiML: hung up -->")
                return _HANGUP
            source, document = document.url, None
            for verb in root:
                if call.is_final:
                    return _HANGUP
                result = await self._verb(call, verb, source)
                if result == _HANGUP:
                    return _HANGUP
                if isinstance(result, _Next):
                    document = result
                    break
        return "end"

    async def _verb(self, call: Call, verb: ET.Element, source: str | None) -> str | _Next:
        tag = verb.tag
        if tag == "Hangup":
            self.net.end_call(call, "completed", "twiml-hangup")
            return _HANGUP
        if tag == "Reject":
            # Twilio: reason="busy" ends the call busy, the default "rejected" as no-answer.
            status = "busy" if verb.get("reason") == "busy" else "no-answer"
            self.net.end_call(call, status, "twiml-reject")
            return _HANGUP
        if tag == "Dial":
            return await self._dial(call, verb, source)
        self.net.answer_call(call)
        if tag in ("Say", "Play"):
            return _CONTINUE
        if tag == "Pause":
            await self._wait(call, float(verb.get("length", "1")))
            return _CONTINUE
        if tag == "Redirect":
            url = urljoin(source or "", (verb.text or "").strip())
            text = await self.fetch(call, url, verb.get("method", "POST"), "redirect")
            return _Next(text, url) if text is not None else _HANGUP
        if tag == "Gather":
            return await self._gather(call, verb, source)
        if tag == "Record":
            return await self._record(call, verb, source)
        call.twiml_log.append(f"<!-- unsupported verb {tag} skipped -->")
        return _CONTINUE

    async def _wait(self, call: Call, seconds: float) -> None:
        """Sleep simulated seconds, waking early if the call ends."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), self.net.real(seconds))

    async def _action(
        self, call: Call, verb: ET.Element, source: str | None, kind: str, **extra: str
    ) -> str | _Next:
        """Request a verb's action URL; its TwiML replaces the rest of the document."""
        action = verb.get("action")
        if action is None:
            return _CONTINUE
        url = urljoin(source or "", action)
        text = await self.fetch(call, url, verb.get("method", "POST"), kind, **extra)
        if call.is_final:
            return _HANGUP  # the request is still made, its answer has no call to run on
        return _Next(text, url) if text is not None else _HANGUP

    # -- Gather and Record ----------------------------------------------------------------------

    async def _gather(self, call: Call, verb: ET.Element, source: str | None) -> str | _Next:
        if not call.digits:
            await self._wait(call, float(verb.get("timeout", "5")))
            return _CONTINUE  # no input: Twilio goes on with the next verb
        digits = call.digits
        if verb.get("numDigits"):
            digits = digits[: int(verb.get("numDigits", "1"))]
        url = urljoin(source or "", verb.get("action") or source or "")
        text = await self.fetch(call, url, verb.get("method", "POST"), "gather", Digits=digits)
        return _Next(text, url) if text is not None else _HANGUP

    async def _record(self, call: Call, verb: ET.Element, source: str | None) -> str | _Next:
        seconds = min(call.message_seconds, float(verb.get("maxLength", "3600")))
        recording = Recording(
            sid=new_sid("RE"),
            account_sid=call.account_sid,
            call_sid=call.sid,
            source="RecordVerb",
            status="in-progress",
            running_since=self.net.now(),
            status_callback=verb.get("recordingStatusCallback"),
            status_callback_method=verb.get("recordingStatusCallbackMethod", "POST"),
            status_callback_events=split_events(
                [verb.get("recordingStatusCallbackEvent", "")], ("completed",)
            ),
        )
        self.net.recordings[recording.sid] = recording
        call.recording_sids.append(recording.sid)
        await self._wait(call, seconds)
        # The caller hangs up after the message: the voicemail case this verb serves.
        self.net.end_call(call, "completed", "caller-hangup")
        extra = {
            "RecordingUrl": recording.media_url(),
            "RecordingSid": recording.sid,
            "RecordingDuration": str(round(recording.recorded)),
            "Digits": "hangup",
        }
        return await self._action(call, verb, source, "action", **extra)

    # -- Dial -----------------------------------------------------------------------------------

    async def _dial(self, call: Call, verb: ET.Element, source: str | None) -> str | _Next:
        conference = verb.find("Conference")
        if conference is not None:
            self.net.answer_call(call)
            await self._conference(call, conference)
            return await self._action(call, verb, source, "action", DialCallStatus="completed")

        timeout = float(verb.get("timeout", "30"))
        if verb.get("answerOnBridge") != "true":
            self.net.answer_call(call)
        legs: dict[asyncio.Task[str], Call] = {}
        for noun in verb:
            to = _dial_target(noun)
            if to is None:
                call.twiml_log.append(f"<!-- unsupported Dial noun {noun.tag} skipped -->")
                continue
            leg = self.net.new_call(
                from_=verb.get("callerId") or call.from_,
                to=to,
                direction="outbound-dial",
                parent_call_sid=call.sid,
                timeout=timeout,
                status="queued",
                status_callback=noun.get("statusCallback"),
                status_callback_method=noun.get("statusCallbackMethod", "POST"),
                status_callback_events=split_events(
                    [noun.get("statusCallbackEvent", "")], ("completed",)
                ),
            )
            task = self.net.spawn(self._leg(leg, noun, source), f"dial-leg-{leg.sid}")
            legs[task] = leg

        winner: Call | None = None
        results: dict[str, str] = {}
        caller_gone = asyncio.ensure_future(call.ended.wait())
        try:
            pending = set(legs)
            while pending and winner is None:
                done, pending = await asyncio.wait(
                    pending | {caller_gone}, return_when=asyncio.FIRST_COMPLETED
                )
                if caller_gone in done:
                    pending.discard(caller_gone)
                    break
                pending.discard(caller_gone)
                for task in done:
                    outcome = "failed" if task.cancelled() or task.exception() else task.result()
                    results[legs[task].sid] = outcome
                    if outcome == "bridged" and winner is None:
                        winner = legs[task]
        finally:
            caller_gone.cancel()
            # Losing legs are hung up: cancelled while ringing, completed if mid-whisper.
            for leg in legs.values():
                if leg is not winner and not leg.is_final:
                    self.net.end_call(leg, "completed", "answered-elsewhere")
            await asyncio.gather(*legs, return_exceptions=True)

        if winner is not None:
            self.net.answer_call(call)  # answerOnBridge: the caller is answered now
            both_up = asyncio.ensure_future(call.ended.wait())
            leg_up = asyncio.ensure_future(winner.ended.wait())
            await asyncio.wait({both_up, leg_up}, return_when=asyncio.FIRST_COMPLETED)
            both_up.cancel()
            leg_up.cancel()
            self.net.end_call(winner, "completed", "caller-hangup")
            extra = {
                "DialCallStatus": "completed",
                "DialCallSid": winner.sid,
                "DialCallDuration": str(winner.duration() or 0),
                "DialBridged": "true",
            }
        else:
            statuses = {s for s in results.values()}
            if call.is_final:
                status = "canceled"
            elif not statuses or statuses - {"busy", "failed"}:
                status = "no-answer"
            elif statuses == {"busy"}:
                status = "busy"
            else:
                status = "failed"
            extra = {"DialCallStatus": status, "DialBridged": "false"}
            last = list(legs.values())[-1:] if legs else []
            if last:
                extra["DialCallSid"] = last[0].sid
        return await self._action(call, verb, source, "action", **extra)

    async def _leg(self, leg: Call, noun: ET.Element, source: str | None) -> str:
        """Ring one Dial leg; "bridged" if it answered and passed its whisper."""
        outcome = await self.net.ring(leg)
        if outcome != "answer":
            self.net.end_call(leg, outcome, "ring-" + outcome)
            return outcome
        self.net.answer_call(leg)
        url = noun.get("url")
        if url:
            # The whisper runs on the callee before bridging; hanging up there refuses the call
            # (human-answer confirmation: a voicemail that presses nothing ends up here).
            result = await self.fetch_and_execute(leg, urljoin(source or "", url))
            if result == _HANGUP or leg.is_final:
                self.net.end_call(leg, "completed", "whisper-hangup")
                return "whisper-hangup"
        return "bridged"

    async def _conference(self, call: Call, noun: ET.Element) -> None:
        name = (noun.text or "").strip()
        conf = self.net.conference(name, create=True)
        assert conf is not None
        self.net.subscribe_conference(
            conf,
            noun.get("statusCallback"),
            noun.get("statusCallbackMethod", "POST"),
            [noun.get("statusCallbackEvent", "")],
        )
        self.net.add_participant(
            conf,
            call,
            label=noun.get("participantLabel"),
            muted=noun.get("muted") == "true",
            coaching=noun.get("coach") is not None,
            call_sid_to_coach=noun.get("coach"),
            start_conference_on_enter=noun.get("startConferenceOnEnter", "true") == "true",
            end_conference_on_exit=noun.get("endConferenceOnExit") == "true",
            beep=noun.get("beep", "true"),
        )
        self.net.join(conf, call)
        await self.net.wait_left(call)


def _dial_target(noun: ET.Element) -> str | None:
    text = (noun.text or "").strip()
    if noun.tag == "Number":
        return text
    if noun.tag == "Client":
        identity = noun.find("Identity")
        name = (identity.text or "").strip() if identity is not None else text
        return f"client:{name}"
    if noun.tag == "Sip":
        return text
    return None
