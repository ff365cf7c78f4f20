"""The session description in a SIP message's body, multipart bodies included (RFC 5621).

Trunks that interwork with the PSTN through SIP-I or SIP-T (ITU-T Q.1912.5, RFC 3372) send
their INVITEs, and their answers to ours, with a `multipart/mixed` body: the SDP beside the
encapsulated ISUP message (RFC 3204). The bridge reads SDP only, and the other side of the
B2BUA (a desk phone, an app) speaks no ISUP, so such a message is reduced to its SDP part
before the calls see it (`keep_session_description`): the rest of the B2BUA, the media engine
and the relay all see a plain `application/sdp` body, or none.

What is refused (RFC 5621 §5.2, §9; RFC 3261 §20.11):
- a part we cannot read whose `Content-Disposition` has `handling=required`, or no `handling`
  at all (its default is "required"): 415 with `Accept` naming what we read. A `multipart/
  alternative` needs only one alternative read (the SDP one);
- a multipart body that cannot be read (no boundary, the boundary never found, nested deeper
  than `MAX_DEPTH`): 400.

The MIME framing is read by the standard library's `email` package, which reports defects
instead of raising on malformed input.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.errors import NoBoundaryInMultipartDefect, StartBoundaryNotFoundDefect
from email.message import Message
from email.parser import BytesParser

from bridge.sip.model import SipMessage, media_type

SDP = "application/sdp"
# What a 415 says we read (RFC 3261 §21.4.13: Accept lists what the UAS understands).
ACCEPTED = "application/sdp, multipart/mixed, multipart/alternative"
# The requests whose body can hold an offer or an answer (RFC 3261 §13, RFC 3262, RFC 3311).
OFFER_ANSWER_METHODS = frozenset({"INVITE", "UPDATE", "ACK", "PRACK"})
MAX_DEPTH = 4  # multipart inside multipart: SIP-I's is one level; deeper is refused
_UNREADABLE = (NoBoundaryInMultipartDefect, StartBoundaryNotFoundDefect)
_PARSER = BytesParser(policy=policy.compat32)


@dataclass(frozen=True, slots=True)
class BodyRefusal:
    """Why a body cannot be taken: the status and reason phrase to answer with."""

    status: int
    reason: str

    @property
    def extra(self) -> tuple[tuple[str, str], ...]:
        return (("Accept", ACCEPTED),) if self.status == 415 else ()


def is_multipart(content_type: str) -> bool:
    return media_type(content_type).startswith("multipart/")


def session_description(content_type: str, body: bytes) -> bytes | BodyRefusal:
    """The SDP of a multipart body (b"" when it holds none), or why it is refused."""
    try:
        message = _PARSER.parsebytes(
            b"Content-Type: " + content_type.encode("utf-8", "replace") + b"\r\n\r\n" + body
        )
        return _sdp_of(message, 1)
    except Exception:  # (the email package reports defects; anything else is a bad body too)
        return BodyRefusal(400, "Bad Request (malformed multipart body)")


def _sdp_of(message: Message, depth: int) -> bytes | BodyRefusal:
    if depth > MAX_DEPTH:
        return BodyRefusal(400, "Bad Request (multipart body nested too deep)")
    if any(isinstance(defect, _UNREADABLE) for defect in message.defects):
        return BodyRefusal(400, "Bad Request (malformed multipart body)")
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list):
        return BodyRefusal(400, "Bad Request (malformed multipart body)")
    alternative = message.get_content_subtype() == "alternative"
    found: bytes | None = None
    refusal: BodyRefusal | None = None
    for part in parts:
        kind = part.get_content_type()
        disposition = part.get_content_disposition()
        if kind.startswith("multipart/"):
            inner = _sdp_of(part, depth + 1)
            if isinstance(inner, BodyRefusal):
                if inner.status != 415:
                    return inner
                refusal = refusal or inner
            elif inner and found is None:
                found = inner
            continue
        if kind == SDP and disposition in (None, "session"):
            if found is None:
                found = part.get_payload(decode=True) or b""
            continue
        handling = part.get_param("handling", "required", header="content-disposition")
        if not isinstance(handling, str) or handling.lower() != "optional":
            refusal = refusal or BodyRefusal(415, "Unsupported Media Type")
    if alternative and found is not None:
        return found  # (one alternative read is enough, RFC 5621 §3.2)
    if refusal is not None:
        return refusal
    return found or b""


def keep_session_description(message: SipMessage) -> BodyRefusal | None:
    """Reduce a multipart body to its SDP part (or to no body), in place: None, or why the
    body is refused (then the message is left as it came). Other bodies are left alone."""
    if not message.body:
        return None
    content_type = message.headers.get("Content-Type")
    if content_type is None or not is_multipart(content_type):
        return None
    sdp = session_description(content_type, message.body)
    if isinstance(sdp, BodyRefusal):
        return sdp
    message.body = sdp
    if sdp:
        message.headers.set("Content-Type", SDP)
    else:
        message.headers.remove("Content-Type")
    return None
