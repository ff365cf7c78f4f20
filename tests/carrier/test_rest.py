"""The REST client against the fake carrier: the SDK's async client, pointed at `api_base`,
with retries on the carrier's failures (5xx, 429, no answer) and none on ours (4xx).

Sleeps are recorded instead of slept, so the backoff is checked without waiting for it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from sim.carrier import FakeCarrier
from structlog.testing import capture_logs

from bridge.carriers.twilio.rest import CarrierApiError, CarrierRest, RestSettings, is_retryable
from bridge.config import Settings
from bridge.observability.metrics import Metrics

TOKEN = "rest-test-auth-token"
API_KEY, API_SECRET = "SK" + "4" * 32, "rest-test-key-secret"
HOLD = "<Response><Dial><Conference>{}</Conference></Dial></Response>"


class Sleeps:
    """Stands in for asyncio.sleep: remembers each backoff and moves a virtual clock (the
    client's `monotonic`) instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 0.0

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeCarrier]:
    async with FakeCarrier(auth_token=TOKEN, api_keys={API_KEY: API_SECRET}) as carrier:
        yield carrier
        carrier.assert_no_violations()


def make_rest(
    fake: FakeCarrier, metrics: Metrics, sleeps: Sleeps, *, attempts: int = 4, **kw: float
) -> CarrierRest:
    settings = RestSettings(
        account_sid=fake.account_sid,
        username=fake.account_sid,
        password=TOKEN,
        api_base=fake.url,
        attempts=attempts,
        **kw,  # type: ignore[arg-type]
    )
    return CarrierRest(settings, metrics, sleep=sleeps, jitter=lambda: 0.5, monotonic=sleeps.clock)


@pytest.fixture
async def rest(fake: FakeCarrier) -> AsyncIterator[tuple[CarrierRest, Metrics, Sleeps]]:
    metrics, sleeps = Metrics(), Sleeps()
    client = make_rest(fake, metrics, sleeps)
    yield client, metrics, sleeps
    await client.aclose()


def errors(metrics: Metrics, operation: str, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "bridge_carrier_api_errors_total", {"operation": operation, "status": status}
    )
    return value or 0.0


async def conference_with_a_caller(fake: FakeCarrier, rest: CarrierRest, room: str) -> str:
    call = await rest.create_call(from_="+15550100", to="client:caller", twiml=HOLD.format(room))
    await fake.wait_for(lambda: fake.calls[call.sid].status == "in-progress")
    return call.sid


async def test_two_503s_are_retried_with_growing_backoff_then_the_participant_is_made(
    fake: FakeCarrier, rest: tuple[CarrierRest, Metrics, Sleeps]
) -> None:
    client, metrics, sleeps = rest
    await conference_with_a_caller(fake, client, "room-1")
    fault = fake.inject_fault(2, 503, operation="CreateParticipant")
    with capture_logs() as logs:
        made = await client.create_participant(
            "room-1", from_="+15550100", to="client:ana", label="ana", early_media=True, timeout=20
        )
    assert made.label == "ana" and made.conference_sid.startswith("CF")
    assert fault.hits == 2
    assert [r.status for r in fake.requests if r.operation_id == "CreateParticipant"] == [
        503,
        503,
        201,
    ]
    conf = fake.conference("room-1")
    assert conf is not None and len(conf.participants) == 2  # one caller, one participant
    # 0.25 then 0.5 (jitter fixed at its middle: 3/4 of each ceiling).
    assert sleeps.delays == [0.1875, 0.375]
    assert errors(metrics, "CreateParticipant", "503") == 2
    failures = [e for e in logs if e["event"] == "carrier_api_error"]
    assert [(e["operation"], e["status"], e["attempt"]) for e in failures] == [
        ("CreateParticipant", "503", 1),
        ("CreateParticipant", "503", 2),
    ]
    assert all(e["log_level"] == "warning" and e["retry_in"] for e in failures)
    assert [e["attempt"] for e in logs if e["event"] == "carrier_api_recovered"] == [3]


async def test_a_4xx_is_raised_at_once(
    fake: FakeCarrier, rest: tuple[CarrierRest, Metrics, Sleeps]
) -> None:
    client, metrics, sleeps = rest
    missing = "CA" + "e" * 32
    with capture_logs() as logs, pytest.raises(CarrierApiError) as caught:
        await client.update_call(missing, status="completed")
    assert caught.value.status == 404 and caught.value.code == 20404
    assert not caught.value.retryable
    assert fake.counts["UpdateCall"] == 1 and sleeps.delays == []
    assert errors(metrics, "UpdateCall", "404") == 1
    [failure] = [e for e in logs if e["event"] == "carrier_api_error"]
    assert failure["retry_in"] is None and failure["call_sid"] == missing


async def test_429_is_retried_and_the_attempts_are_bounded(
    fake: FakeCarrier, rest: tuple[CarrierRest, Metrics, Sleeps]
) -> None:
    client, metrics, sleeps = rest
    fake.inject_fault(1, 429, operation="CreateCall")
    made = await client.create_call(from_="+15550100", to="client:x", twiml="<Response/>")
    assert made.sid.startswith("CA") and errors(metrics, "CreateCall", "429") == 1

    fake.inject_fault(10, 500, operation="UpdateCall")
    with pytest.raises(CarrierApiError) as caught:
        await client.update_call(made.sid, status="completed")
    assert caught.value.status == 500 and caught.value.retryable
    assert fake.counts["UpdateCall"] == 4  # [twilio] api_attempts
    assert errors(metrics, "UpdateCall", "500") == 4
    assert len(sleeps.delays) == 1 + 3  # one for the 429, three between the four 500s


async def test_the_time_budget_stops_retries_before_the_attempts_do(fake: FakeCarrier) -> None:
    metrics, sleeps = Metrics(), Sleeps()
    client = make_rest(fake, metrics, sleeps, attempts=10, backoff_seconds=1.0, budget_seconds=2.0)
    try:
        fake.inject_fault(10, 503, operation="CreateCall")
        with pytest.raises(CarrierApiError):
            await client.create_call(from_="+15550100", to="client:x", twiml="<Response/>")
    finally:
        await client.aclose()
    # The first backoff (0.75 s) fits the 2 s budget; the second (1.5 s more) would end past
    # it, so the second failure is the last.
    assert fake.counts["CreateCall"] == 2
    assert sleeps.delays == [0.75]


async def test_no_answer_at_all_is_retried_and_counted_as_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    metrics, sleeps = Metrics(), Sleeps()
    settings = RestSettings(
        account_sid="AC" + "1" * 32,
        username="AC" + "1" * 32,
        password=TOKEN,
        api_base=f"http://127.0.0.1:{port}",
        attempts=3,
    )
    client = CarrierRest(settings, metrics, sleep=sleeps, jitter=lambda: 0.0)
    try:
        with pytest.raises(CarrierApiError) as caught:
            await client.update_call("CA" + "2" * 32, status="completed")
    finally:
        await client.aclose()
    assert caught.value.status is None and caught.value.retryable
    assert errors(metrics, "UpdateCall", "error") == 3
    assert sleeps.delays == [0.125, 0.25]  # jitter 0: half of each ceiling


async def test_settings_choose_the_api_key_and_the_base_url(fake: FakeCarrier) -> None:
    settings = Settings.model_validate(
        {
            "twilio": {
                "account_sid": fake.account_sid,
                "auth_token": TOKEN,
                "api_key_sid": API_KEY,
                "api_key_secret": API_SECRET,
                "api_base": fake.url + "/",
            }
        }
    )
    rest_settings = RestSettings.from_settings(settings)
    assert rest_settings is not None
    assert (rest_settings.username, rest_settings.api_base) == (API_KEY, fake.url)
    client = CarrierRest(rest_settings, Metrics())
    try:
        made = await client.create_call(from_="+15550100", to="client:x", twiml="<Response/>")
    finally:
        await client.aclose()
    assert made.sid in fake.calls
    assert fake.requests[-1].auth_user == API_KEY

    assert RestSettings.from_settings(Settings()) is None  # no account sid: no REST API
    token_only = Settings.model_validate({"twilio": {"account_sid": "AC1", "auth_token": "t"}})
    found = RestSettings.from_settings(token_only)
    assert found is not None and (found.username, found.password) == ("AC1", "t")


def test_backoff_grows_doubling_is_capped_and_never_zero() -> None:
    settings = RestSettings("AC1", "AC1", "t", backoff_seconds=0.5, backoff_max_seconds=3.0)
    low = CarrierRest(settings, Metrics(), jitter=lambda: 0.0)
    high = CarrierRest(settings, Metrics(), jitter=lambda: 0.999999)
    assert [low.backoff(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    assert [round(high.backoff(n), 3) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("status", "retry"), [(None, True), (429, True), (500, True), (503, True), (400, False)]
)
def test_what_is_retried(status: int | None, retry: bool) -> None:
    assert is_retryable(status) is retry
    assert is_retryable(404) is False and is_retryable(409) is False
