"""The carrier's webhooks: thin routes. Each one checks, in this order,

1. the carrier path is configured (`[twilio] auth_token`, a mode this build has): else 503;
2. the body is a small urlencoded form: else 400 (413 when too large);
3. `X-Twilio-Signature` matches `public_url` + path + query and the form: else 403;
4. the fields the endpoint needs are there and valid: else 400 naming the field;

then hands a typed request to `TwilioCalls`. Every refusal is logged (`twilio_webhook_refused`
with the reason and the CallSid, if any) and every request is counted and timed
(`bridge_webhook_requests_total`, `bridge_webhook_seconds`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bridge.carriers.twilio.errors import (
    BodyTooLarge,
    MalformedWebhook,
    Overloaded,
    WebhookError,
)
from bridge.carriers.twilio.schemas import (
    ConferenceCallback,
    ConfirmRequest,
    DialAction,
    RecordingCallback,
    StatusCallback,
    VoicemailDone,
    VoiceRequest,
    WebhookForm,
    parse_form,
)
from bridge.carriers.twilio.service import TwilioCalls
from bridge.carriers.twilio.signature import SETTINGS_HEADER, SIGNATURE_HEADER
from bridge.carriers.twilio.twiml import XML_MEDIA_TYPE

log = structlog.get_logger("bridge.carrier")

MAX_BODY_BYTES = 64 * 1024  # carrier webhooks are well under 4 KiB
_FORM = "application/x-www-form-urlencoded"

Handler = Callable[[TwilioCalls, WebhookForm], Response]


def signed_url(service: TwilioCalls, request: Request) -> str:
    """The URL the carrier signed: our public address, the path, the query as received."""
    query = request.url.query
    return f"{service.settings.public_url}{request.url.path}" + (f"?{query}" if query else "")


async def _webhook(
    service: TwilioCalls, request: Request, endpoint: str, handle: Handler
) -> Response:
    started = time.perf_counter()
    form: WebhookForm | None = None
    try:
        refusal = service.refusal()
        if refusal is not None:
            raise refusal
        assert service.validator is not None  # refusal() says so
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and content_type != _FORM:
            raise MalformedWebhook(f"the body must be {_FORM}, not {content_type or 'untyped'}")
        pairs = parse_form(body)
        form = WebhookForm.of(pairs, request.url.query)
        service.validator.check(
            signed_url(service, request),
            pairs,
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(SETTINGS_HEADER),
        )
        response = handle(service, form)
    except WebhookError as exc:
        log.warning(
            "twilio_webhook_refused",
            endpoint=endpoint,
            status=exc.status,
            reason=exc.reason,
            field=getattr(exc, "field", None),
            call_sid=form.call_sid if form is not None else None,
        )
        response = JSONResponse({"detail": exc.reason}, status_code=exc.status)
        if isinstance(exc, Overloaded):
            response.headers["Retry-After"] = str(exc.retry_after)
    except Exception:  # never let a webhook take the daemon down; the carrier retries
        log.exception(
            "twilio_webhook_failed",
            endpoint=endpoint,
            call_sid=form.call_sid if form is not None else None,
        )
        response = JSONResponse({"detail": "internal error"}, status_code=500)
    metrics = service.metrics
    metrics.webhook_requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
    metrics.webhook_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - started)
    return response


def _xml(document: str) -> Response:
    return Response(content=document, media_type=XML_MEDIA_TYPE)


def _accepted() -> Response:
    return Response(status_code=204)


def routes(service: TwilioCalls) -> APIRouter:
    """The carrier's webhook routes, bound to the carrier path's service."""
    router = APIRouter(prefix="/twilio", tags=["carrier"])

    @router.post("/voice", summary="Inbound call: TwiML that rings the dialled line's plan")
    async def voice(request: Request) -> Response:
        return await _webhook(
            service,
            request,
            "voice",
            lambda service, form: _xml(service.inbound(VoiceRequest.parse(form))),
        )

    @router.post("/status", summary="Call status callback (the caller's call, or one leg)")
    async def status(request: Request) -> Response:
        def handle(service: TwilioCalls, form: WebhookForm) -> Response:
            service.call_status(StatusCallback.parse(form))
            return _accepted()

        return await _webhook(service, request, "status", handle)

    @router.post("/dial-action", summary="A <Dial> ended: next layer, fallback or hang up")
    async def dial_action(request: Request) -> Response:
        return await _webhook(
            service,
            request,
            "dial-action",
            lambda service, form: _xml(service.dial_action(DialAction.parse(form))),
        )

    @router.post("/confirm", summary="Forwarded leg picked up: press 1 to accept")
    async def confirm(request: Request) -> Response:
        return await _webhook(
            service,
            request,
            "confirm",
            lambda service, form: _xml(service.confirm(ConfirmRequest.parse(form))),
        )

    @router.post("/voicemail", summary="The voicemail <Record> finished")
    async def voicemail(request: Request) -> Response:
        return await _webhook(
            service,
            request,
            "voicemail",
            lambda service, form: _xml(service.voicemail_done(VoicemailDone.parse(form))),
        )

    @router.post("/recording", summary="Recording status callback (voicemail ready)")
    async def recording(request: Request) -> Response:
        def handle(service: TwilioCalls, form: WebhookForm) -> Response:
            service.recording_status(RecordingCallback.parse(form))
            return _accepted()

        return await _webhook(service, request, "recording", handle)

    @router.post("/conference", summary="Conference status callback (conference mode)")
    async def conference(request: Request) -> Response:
        def handle(service: TwilioCalls, form: WebhookForm) -> Response:
            service.conference_status(ConferenceCallback.parse(form))
            return _accepted()

        return await _webhook(service, request, "conference", handle)

    return router
