"""The carrier's REST API, as the bridge uses it: the `twilio` SDK's async client, every request
retried with backoff when the failure is the carrier's or the network's, never when it is ours.

`CarrierRest` exposes the few operations the bridge needs (participants, call updates,
recordings, outbound calls), each named like the spec's `operationId` so logs, metrics and the
fake carrier's evidence read the same. Every attempt that fails is

- logged (`carrier_api_error`: operation, status, attempt, whether it will be retried),
- counted in `bridge_carrier_api_errors_total{operation,status}` (`status="error"` when there
  was no HTTP answer: refused connection, reset, timeout),

and retried when it may succeed later: 5xx, 429, no answer at all. A 4xx is a request the
carrier will refuse again (a bad parameter, a call that already ended): it is raised at once.
Retries are bounded by `attempts` and by `budget_seconds` (no sleep starts that would end
past the budget), with exponential backoff and jitter so that many calls failing together do
not retry in lockstep.

A retried create is safe enough: a 5xx is normally answered before anything was created, and
participants carry a `Label` (the user id) that the carrier refuses to reuse within one
conference, so a duplicate is refused (4xx) rather than ringing someone twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import structlog
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from bridge.config import Settings
from bridge.observability.metrics import Metrics

log = structlog.get_logger("bridge.carrier.rest")

T = TypeVar("T")

# The SDK logs every request and response at INFO through the standard library: that is one
# line per header. Ours (`carrier_api_*`) say what matters; keep the SDK's for warnings.
_SDK_LOGGER = logging.getLogger("bridge.carrier.rest.sdk")
_SDK_LOGGER.setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class RestSettings:
    """What the REST client needs from `[twilio]`."""

    account_sid: str
    username: str  # an API key sid (SK...), else the account sid
    password: str  # its secret, else the auth token
    api_base: str | None = None  # None: the carrier's own (https://api.twilio.com)
    attempts: int = 4  # tries per request, the first included
    timeout_seconds: float = 5.0  # per attempt
    backoff_seconds: float = 0.25  # first retry delay; doubles per retry
    backoff_max_seconds: float = 4.0
    budget_seconds: float = 15.0  # all attempts of one request, sleeps included

    @classmethod
    def from_settings(cls, settings: Settings) -> RestSettings | None:
        """None when the REST API cannot be used: no account sid, or no credentials."""
        twilio = settings.twilio
        if not twilio.account_sid:
            return None
        if twilio.api_key_sid and twilio.api_key_secret:
            username, password = twilio.api_key_sid, twilio.api_key_secret
        elif twilio.auth_token:
            username, password = twilio.account_sid, twilio.auth_token
        else:
            return None
        return cls(
            account_sid=twilio.account_sid,
            username=username,
            password=password,
            api_base=twilio.api_base,
            attempts=twilio.api_attempts,
            timeout_seconds=twilio.api_timeout_seconds,
            backoff_seconds=twilio.api_backoff_seconds,
        )


class CarrierApiError(Exception):
    """A REST request that failed for good (after its retries, or at once for a 4xx)."""

    def __init__(
        self, operation: str, status: int | None, message: str, code: int | None = None
    ) -> None:
        super().__init__(f"{operation}: {status or 'no answer'} {message}")
        self.operation = operation
        self.status = status  # None: no HTTP answer (connection refused, reset, timeout)
        self.message = message
        self.code = code  # the carrier's error code, when it gave one

    @property
    def retryable(self) -> bool:
        return is_retryable(self.status)


def is_retryable(status: int | None) -> bool:
    """Worth trying again: no answer, throttled (429), or the carrier's own failure (5xx)."""
    return status is None or status == 429 or status >= 500


@dataclass(frozen=True, slots=True)
class Participant:
    call_sid: str  # the participant's own call
    conference_sid: str  # CF...: the other participant operations need it
    label: str | None
    status: str | None
    muted: bool | None = None
    coaching: bool | None = None


@dataclass(frozen=True, slots=True)
class CallInfo:
    sid: str
    status: str | None


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    sid: str
    call_sid: str | None
    status: str | None
    channels: int | None


class _HeaderAuthClient(AsyncTwilioHttpClient):
    """The SDK's async client, sending the credentials as a header: aiohttp deprecated its
    `auth=` argument (one warning per request), and the SDK still passes it."""

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        if auth is not None:
            headers = dict(headers or {})
            headers["Authorization"] = aiohttp.encode_basic_auth(auth[0], auth[1])
        return await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


class CarrierRest:
    """The carrier's REST API with retries (see the module docstring).

    The HTTP session is made on first use, inside the running event loop, and closed by
    `aclose()`."""

    def __init__(
        self,
        settings: RestSettings,
        metrics: Metrics,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._sleep = sleep
        self._jitter = jitter
        self._monotonic = monotonic
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def client(self) -> Client:
        """The SDK client, pointed at `api_base` when one is set."""
        if self._client is None:
            self._http = _HeaderAuthClient(logger=_SDK_LOGGER)
            client = Client(
                self.settings.username,
                self.settings.password,
                self.settings.account_sid,
                http_client=self._http,
            )
            if self.settings.api_base:
                client.api.base_url = self.settings.api_base.rstrip("/")
            self._client = client
        return self._client

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = None
        self._client = None

    # -- the retry loop ------------------------------------------------------------------------
    def backoff(self, retry: int) -> float:
        """The sleep before retry number `retry` (1, 2, ...): exponential, capped, with "equal
        jitter" (half fixed, half random) so a burst of failures spreads out but never retries
        at once."""
        ceiling = min(
            self.settings.backoff_max_seconds, self.settings.backoff_seconds * 2 ** (retry - 1)
        )
        return ceiling / 2 + self._jitter() * ceiling / 2

    async def call(self, operation: str, request: Callable[[], Awaitable[T]], **context: Any) -> T:
        """Run `request` (one SDK call) with retries. `context` (call id, leg, ...) goes into
        the log lines. Raises `CarrierApiError` when it fails for good."""
        settings = self.settings
        started = self._monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(settings.timeout_seconds):
                    result = await request()
            except Exception as exc:
                error = _error_of(operation, exc)
                if error is None:
                    raise  # a bug of ours, not the carrier's: let it show
            else:
                if attempt > 1:
                    log.info(
                        "carrier_api_recovered", operation=operation, attempt=attempt, **context
                    )
                return result
            delay = self.backoff(attempt)
            retry = (
                error.retryable
                and attempt < settings.attempts
                and self._monotonic() - started + delay <= settings.budget_seconds
            )
            status = str(error.status) if error.status is not None else "error"
            self.metrics.carrier_api_errors.labels(operation=operation, status=status).inc()
            log.warning(
                "carrier_api_error",
                operation=operation,
                status=status,
                code=error.code,
                attempt=attempt,
                retry_in=round(delay, 3) if retry else None,
                error=error.message[:200],
                **context,
            )
            if not retry:
                raise error
            await self._sleep(delay)

    # -- operations ----------------------------------------------------------------------------
    async def create_participant(
        self, conference: str, *, from_: str, to: str, **params: Any
    ) -> Participant:
        """Add a participant (dial `to` into `conference`, its sid or friendly name)."""
        participants = self.client().conferences(conference).participants
        created = await self.call(
            "CreateParticipant",
            lambda: participants.create_async(from_=from_, to=to, **params),
            conference=conference,
            to=to,
        )
        return _participant(created)

    async def update_participant(
        self, conference_sid: str, call_sid: str, **params: Any
    ) -> Participant:
        context = self.client().conferences(conference_sid).participants(call_sid)
        updated = await self.call(
            "UpdateParticipant",
            lambda: context.update_async(**params),
            conference=conference_sid,
            participant=call_sid,
        )
        return _participant(updated)

    async def delete_participant(self, conference_sid: str, call_sid: str) -> None:
        context = self.client().conferences(conference_sid).participants(call_sid)
        await self.call(
            "DeleteParticipant",
            context.delete_async,
            conference=conference_sid,
            participant=call_sid,
        )

    async def create_call(self, *, from_: str, to: str, **params: Any) -> CallInfo:
        calls = self.client().calls
        created = await self.call(
            "CreateCall", lambda: calls.create_async(from_=from_, to=to, **params), to=to
        )
        return CallInfo(created.sid, _str(created.status))

    async def update_call(self, call_sid: str, **params: Any) -> CallInfo:
        """Hang up (`status="completed"`), cancel (`"canceled"`) or redirect (`twiml`/`url`)."""
        context = self.client().calls(call_sid)
        updated = await self.call(
            "UpdateCall", lambda: context.update_async(**params), call_sid=call_sid
        )
        return CallInfo(updated.sid, _str(updated.status))

    async def create_recording(self, call_sid: str, **params: Any) -> RecordingInfo:
        recordings = self.client().calls(call_sid).recordings
        created = await self.call(
            "CreateCallRecording", lambda: recordings.create_async(**params), call_sid=call_sid
        )
        return _recording(created)

    async def update_recording(
        self, call_sid: str, recording_sid: str, **params: Any
    ) -> RecordingInfo:
        context = self.client().calls(call_sid).recordings(recording_sid)
        updated = await self.call(
            "UpdateCallRecording",
            lambda: context.update_async(**params),
            call_sid=call_sid,
            recording_sid=recording_sid,
        )
        return _recording(updated)


def _error_of(operation: str, exc: Exception) -> CarrierApiError | None:
    """The carrier's (or the network's) failure as a `CarrierApiError`; None for anything
    else, which is a bug of ours."""
    if isinstance(exc, TwilioRestException):
        return CarrierApiError(operation, exc.status, exc.msg or "", exc.code)
    if isinstance(exc, TwilioException):
        # List requests raise the base class with the response as the second argument.
        response = exc.args[1] if len(exc.args) > 1 else None
        status = getattr(response, "status_code", None)
        return CarrierApiError(operation, status, str(exc.args[0]) if exc.args else "")
    if isinstance(exc, TimeoutError):
        return CarrierApiError(operation, None, "timed out")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return CarrierApiError(operation, None, f"{type(exc).__name__}: {exc}")
    return None


def _str(value: object) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _participant(instance: Any) -> Participant:
    return Participant(
        call_sid=instance.call_sid,
        conference_sid=instance.conference_sid,
        label=instance.label,
        status=_str(instance.status),
        muted=instance.muted,
        coaching=instance.coaching,
    )


def _recording(instance: Any) -> RecordingInfo:
    channels = instance.channels
    return RecordingInfo(
        sid=instance.sid,
        call_sid=instance.call_sid,
        status=_str(instance.status),
        channels=int(channels) if channels is not None else None,
    )


def rest_params(**params: Any) -> Mapping[str, Any]:
    """Keyword arguments for the SDK without the Nones (the SDK sends every value it gets)."""
    return {k: v for k, v in params.items() if v is not None}
