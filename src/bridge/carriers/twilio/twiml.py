"""TwiML pieces every bridging mode uses, built with the SDK's `VoiceResponse` (never by hand:
it escapes text and attribute values and names the attributes the way the carrier expects)."""

from __future__ import annotations

import re

from twilio.twiml.voice_response import VoiceResponse

from bridge.text import NOT_IN_XML

XML_MEDIA_TYPE = "application/xml"
NOT_IN_SERVICE = "Sorry, the number you have dialled is not in service. Goodbye."
DEFAULT_GREETING = "Nobody can take your call right now. Please leave a message after the tone."
VOICEMAIL_MAX_SECONDS = 120
_PHONE_LIKE = re.compile(r"\+?[0-9]{3,15}")
# A client identity as the caller id: printable, no controls (an attribute of the TwiML;
# `client:a\x0bb` made the document unreadable to the carrier)
_CLIENT = re.compile(r"client:[A-Za-z0-9_.@+-]{1,121}")


def caller_id(caller: str | None) -> str | None:
    """The original caller, shown to the people we ring. The carrier refuses a caller id that
    is not a number (or a client identity), so `anonymous` and the like are left out."""
    if caller and (_PHONE_LIKE.fullmatch(caller) or _CLIENT.fullmatch(caller)):
        return caller
    return None


def announce(response: VoiceResponse, prompt: str) -> None:
    """A directory prompt: a recording when it is a URL (`<Play>`), else text (`<Say>`)."""
    if prompt.startswith(("https://", "http://")):
        response.play(prompt)
    else:
        response.say(prompt)


def hangup(prompt: str | None = None) -> VoiceResponse:
    response = VoiceResponse()
    if prompt:
        announce(response, prompt)
    response.hangup()
    return response


def reject_busy() -> VoiceResponse:
    """Refuse without answering (nothing billed); the caller hears busy. `<Reject>` must be
    the first verb for that, so nothing is said before it."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return response


def voicemail(
    response: VoiceResponse,
    greeting: str,
    *,
    action: str,
    recording_callback: str,
    max_seconds: int,
) -> None:
    """The greeting, then `<Record>`; the recording's status comes to `recording_callback`."""
    announce(response, greeting)
    response.record(
        action=action,
        max_length=max_seconds,
        play_beep=True,
        trim="trim-silence",
        recording_status_callback=recording_callback,
        recording_status_callback_event="completed absent",
    )
    # Reached only when the carrier does not follow the Record action: never loop back.
    response.hangup()


def render(response: VoiceResponse) -> str:
    """The document, with any character XML cannot carry taken out: the SDK escapes markup
    but not those, and one of them makes the whole answer unreadable to the carrier."""
    return NOT_IN_XML.sub("", str(response.to_xml()))
