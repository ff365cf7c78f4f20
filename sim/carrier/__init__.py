"""A fake carrier: Twilio's 2010 REST API checked against its OpenAPI description, and the
carrier's side of a call (signed webhooks, status callbacks, callee behaviour). See README.md."""

from .models import Call, Conference, Participant, Recording
from .policy import TargetPolicy, answer, busy, fail, no_answer
from .rest import Fault, RequestRecord
from .server import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeCarrier, InboundCall
from .spec import SPEC_PATH, TwilioSpec, Violation, load_spec
from .webhooks import Delivery

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "SPEC_PATH",
    "Call",
    "Conference",
    "Delivery",
    "FakeCarrier",
    "Fault",
    "InboundCall",
    "Participant",
    "Recording",
    "RequestRecord",
    "TargetPolicy",
    "TwilioSpec",
    "Violation",
    "answer",
    "busy",
    "fail",
    "load_spec",
    "no_answer",
]
