"""The number a trunk's INVITE names, in the forms carriers send it.

Lines are E.164 (`+14155550100`). Many carriers put the national form in the Request-URI: a
US carrier's ten digits (`4155550100`), a UK one's `02079460000`. Such a call was refused 404
(`no_route`): the digits were read as `+4155550100`. Now a number that is no line, no SIP
username and no extension is read with the directory's dial plan (`dialing`: its country
code and national prefix, as desk phones' calls out are) and, if that is a line, rings it.
(The `+`, `1...` and `;npdi;rn=` forms: tests/routing/test_plan.py and the SIPp tests.)

In process, the trunk's INVITE fed to a bridge whose one phone (201) is registered.
"""

from __future__ import annotations

from typing import Any

import pytest
from sim.phones.inproc import (
    DESK_PHONE,
    TRUNK,
    InprocBridge,
    is_request,
    is_response,
    one_desk_phone_directory,
    trunk_invite,
)
from structlog.testing import capture_logs


async def call(directory: dict[str, Any], dialled: str) -> list[tuple[bytes, tuple[str, int]]]:
    """What the bridge sends when the trunk calls `dialled`."""
    bridge = InprocBridge(directory, sip={"session_expires": 0}, media={"engine": "none"})
    await bridge.start(fake_time=True)
    try:
        assert bridge.register_phone("201", "pw-201", DESK_PHONE[1])
        bridge.feed(trunk_invite(1, dialled, bridge.address), TRUNK)
        return bridge.take()
    finally:
        await bridge.stop()


def rang(sent: list[tuple[bytes, tuple[str, int]]]) -> bool:
    return any(a == DESK_PHONE and is_request(d, "INVITE") for d, a in sent)


def refused_404(sent: list[tuple[bytes, tuple[str, int]]]) -> bool:
    return any(a == TRUNK and is_response(d, 404, "INVITE") for d, a in sent)


def uk(line: str) -> dict[str, Any]:
    directory = one_desk_phone_directory(line)
    directory["dialing"] = {
        "country_code": "44",
        "national_prefix": "0",
        "international_prefix": "00",
        "premium": ["+449"],
        "emergency": ["999", "112"],
    }
    return directory


@pytest.mark.parametrize(
    ("directory", "dialled"),
    [
        pytest.param(one_desk_phone_directory("+14155550100"), "4155550100", id="us-ten-digits"),
        pytest.param(one_desk_phone_directory("+14155550100"), "14155550100", id="us-eleven"),
        pytest.param(uk("+442079460000"), "02079460000", id="uk-national"),
        pytest.param(uk("+442079460000"), "2079460000", id="uk-without-prefix"),
        pytest.param(uk("+442079460000"), "00442079460000", id="uk-international-prefix"),
    ],
)
async def test_a_line_named_in_its_national_form_rings(
    directory: dict[str, Any], dialled: str
) -> None:
    with capture_logs() as logs:
        sent = await call(directory, dialled)
    assert rang(sent), "the line's phone was not rung"
    assert not refused_404(sent)
    [call_in] = [e for e in logs if e["event"] == "sip_call_in"]
    assert call_in["line"] == directory["lines"][0]["number"]  # the records name the line


@pytest.mark.parametrize(
    ("directory", "dialled"),
    [
        pytest.param(one_desk_phone_directory("+14155550100"), "4155550101", id="another-number"),
        pytest.param(uk("+442079460000"), "4155550100", id="us-digits-on-a-uk-plan"),
        pytest.param(one_desk_phone_directory("+14155550100"), "911", id="emergency-digits"),
    ],
)
async def test_a_number_that_is_no_line_in_any_form_is_still_404(
    directory: dict[str, Any], dialled: str
) -> None:
    sent = await call(directory, dialled)
    assert refused_404(sent)
    assert not rang(sent)


async def test_an_extension_stays_the_users_leg_and_is_not_read_as_a_number() -> None:
    """201 is ana's SIP username: the sender routed the call to her already. Read as a
    national number it would be +1201, no line; it rings her phones as before."""
    sent = await call(one_desk_phone_directory("+14155550100"), "201")
    assert rang(sent)
