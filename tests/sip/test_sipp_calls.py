"""Calls through the B2BUA with real peers: SIPp as the trunk and as registered desk phones."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.sip.peers import (
    SCENARIOS,
    SIPP,
    bridge_process,
    free_port,
    lost_its_port,
    needs_sipp,
    run_sipp,
    trunk_bridge,
)
from tests.sip.test_sipp_register import ha1

pytestmark = needs_sipp


def directory(timeout: int = 20, first_layer: tuple[str, ...] = ("anna", "ben")) -> dict[str, Any]:
    """Line +15550100 to the Sales group: `first_layer` (anna and ben) for `timeout` seconds,
    then cleo; each a desk phone (301-303, password pw-<ext>)."""

    def phone(uid: str, name: str, ext: str) -> dict[str, Any]:
        return {
            "id": uid,
            "name": name,
            "answer_by": "ip_phone",
            "wrap_up_seconds": 30,
            "sip": {"username": ext, "ha1_md5": ha1(ext, f"pw-{ext}")},
        }

    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            phone("anna", "Anna", "301"),
            phone("ben", "Ben", "302"),
            phone("cleo", "Cleo", "303"),
        ],
        "ring_groups": [
            {
                "id": "sales",
                "name": "Sales",
                "layers": [
                    {"members": list(first_layer), "timeout_seconds": timeout},
                    {"members": ["cleo"], "timeout_seconds": 20},
                ],
                "fallback": {"action": "hangup"},
            }
        ],
        "lines": [{"number": "+15550100", "name": "Main", "route_to": {"ring_group": "sales"}}],
    }


def start_phone(
    tmp_path: Path, scenario: str, user: str, bridge_port: int, *extra: str
) -> subprocess.Popen[str]:
    """A SIPp desk phone: registers from a port (and exits), then a second SIPp on that port
    waits for our INVITE (SIPp maps messages to calls by Call-ID, so one run cannot do both)."""
    assert SIPP is not None, "sipp missing (Debian sip-tester)"
    for _ in range(3):  # a probed free port can be taken before SIPp binds it: probe again
        port = free_port()
        registered = run_sipp(
            tmp_path,
            "register_only.xml",
            bridge_port,
            "-s",
            user,
            "-au",
            user,
            "-ap",
            f"pw-{user}",
            port=port,
        )
        if not lost_its_port(registered):
            break
    assert registered.returncode == 0, registered.errors + registered.output
    name = f"{scenario}-{user}-{time.monotonic_ns()}"
    return subprocess.Popen(
        [
            SIPP,
            "-sf",
            str(SCENARIOS / scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            "40s",
            "-s",
            user,
            "-trace_msg",
            "-message_file",
            str(tmp_path / f"{name}.msg"),
            "-trace_err",
            "-error_file",
            str(tmp_path / f"{name}.err"),
            *extra,
            f"127.0.0.1:{bridge_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )


def start_pstn(tmp_path: Path, scenario: str) -> tuple[subprocess.Popen[str], int]:
    """SIPp as the provider behind `sip.trunk_uri`, taking one call; its trace is pstn.msg."""
    assert SIPP is not None, "sipp missing (Debian sip-tester)"
    port = free_port()
    process = subprocess.Popen(
        [
            SIPP, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port),
            "-m", "1", "-nostdin", "-timeout", "30s",
            "-trace_msg", "-message_file", str(tmp_path / "pstn.msg"), "127.0.0.1:9",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    return process, port


def wait_registered(bridge: Any, count: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if bridge.metric("bridge_sip_registrations") == count:
            return
        time.sleep(0.1)
    raise AssertionError("phones did not register")


def trace(tmp_path: Path, scenario: str, user: str) -> str:
    [path] = list(tmp_path.glob(f"{scenario}-{user}-*.msg"))
    return path.read_text(errors="replace")


def trunk_command(
    tmp_path: Path,
    bridge: Any,
    *extra: str,
    scenario: str = "trunk_call.xml",
    number: str = "+15550100",
    trace_name: str = "trunk",
    timeout: str = "30s",
) -> list[str]:
    """SIPp as the carrier's trunk calling `number` on the bridge (one call, bounded)."""
    assert SIPP is not None, "sipp missing (Debian sip-tester)"
    return [
        SIPP, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(free_port()),
        "-m", "1", "-nostdin", "-timeout", timeout, "-s", number, "-d", "300",
        "-trace_msg", "-message_file", str(tmp_path / f"{trace_name}.msg"),
        "-trace_err", "-error_file", str(tmp_path / f"{trace_name}.err"),
        *extra, f"127.0.0.1:{bridge.sip}",
    ]  # fmt: skip


def run_trunk(
    tmp_path: Path, bridge: Any, *extra: str, **kw: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        trunk_command(tmp_path, bridge, *extra, **kw),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip


def test_trunk_call_answered_by_one_phone_the_other_is_cancelled_with_reason(
    tmp_path: Path,
) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "300")
        ben = start_phone(tmp_path, "phone_ring_cancelled.xml", "302", bridge.sip)
        wait_registered(bridge, 2)
        trunk = run_trunk(tmp_path, bridge)
        assert trunk.returncode == 0, trunk.stdout + (tmp_path / "trunk.err").read_text(
            errors="replace"
        )
        assert anna.wait(timeout=30) == 0
        assert ben.wait(timeout=30) == 0
        ben_trace = trace(tmp_path, "phone_ring_cancelled.xml", "302")
        assert 'Reason: SIP;cause=200;text="Call completed elsewhere"' in ben_trace
        assert "Max-Forwards: 69" in ben_trace  # the trunk's 70 less our hop (RFC 7332)
        trunk_trace = (tmp_path / "trunk.msg").read_text(errors="replace")
        assert "SIP/2.0 200 OK" in trunk_trace and "m=audio" in trunk_trace  # the phone's SDP
        ended = bridge.wait_events("sip_call_ended")
        assert ended and ended[0]["outcome"] == "answered"
        answered = [e for e in bridge.log_events() if e.get("event") == "sip_call_answered"]
        assert [e["user_id"] for e in answered] == ["anna"]
        assert bridge.metric('bridge_calls_total{outcome="answered",path="sip"}') == 1.0
        # Anna is in wrap-up now: Test Routing says so.
        plan = bridge.api("/api/v1/lines/+15550100/route")
        reasons = {m["user_id"]: m["reason"] for m in plan["layers"][0]["members"]}
        assert reasons["anna"] == "wrap_up"


def test_unknown_address_without_credentials_is_challenged_407(tmp_path: Path) -> None:
    # Not an allowed trunk: the INVITE must come from a desk phone that authenticates.
    with bridge_process(tmp_path, directory()) as bridge:  # trunk_allow is empty
        trunk = run_trunk(tmp_path, bridge, "-recv_timeout", "3000", timeout="3s")
        assert trunk.returncode != 0
        messages = (tmp_path / "trunk.msg").read_text(errors="replace")
        assert "SIP/2.0 407 Proxy Authentication Required" in messages
        assert "Proxy-Authenticate: Digest" in messages
        assert bridge.api("/api/v1/calls") == []


ELSEWHERE = 'Reason: SIP;cause=200;text="Call completed elsewhere"'


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        pytest.param("trunk_cancel.xml", None, id="plain"),
        # A forking proxy upstream rang us and another destination, and the other answered:
        # its CANCEL says so (RFC 3326), and the phones' CANCELs carry the same Reason (a
        # desk phone then logs no missed call); before, they carried none.
        pytest.param("trunk_cancel_elsewhere.xml", ELSEWHERE, id="answered-elsewhere-upstream"),
    ],
)
def test_caller_cancels_while_phones_ring(
    tmp_path: Path, scenario: str, reason: str | None
) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_ring_cancelled.xml", "301", bridge.sip)
        ben = start_phone(tmp_path, "phone_ring_cancelled.xml", "302", bridge.sip)
        wait_registered(bridge, 2)
        trunk = run_trunk(tmp_path, bridge, "-d", "500", scenario=scenario)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0 and ben.wait(timeout=30) == 0
        for user in ("301", "302"):
            cancel = trace(tmp_path, "phone_ring_cancelled.xml", user)
            assert "CANCEL sip:" in cancel
            if reason is None:
                assert "Call completed elsewhere" not in cancel  # nobody answered
            else:
                assert reason in cancel
        ended = bridge.wait_events("sip_call_ended")
        assert ended and ended[0]["outcome"] == "caller_cancelled"
        assert bridge.metric('bridge_calls_total{outcome="caller_cancelled",path="sip"}') == 1.0


def test_layer_timeout_moves_to_layer_two(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory(timeout=2)) as bridge:
        anna = start_phone(tmp_path, "phone_ring_cancelled.xml", "301", bridge.sip)
        cleo = start_phone(tmp_path, "phone_answer.xml", "303", bridge.sip, "-d", "100")
        wait_registered(bridge, 2)
        trunk = run_trunk(tmp_path, bridge)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0 and cleo.wait(timeout=30) == 0
        bridge.wait_events("sip_call_ended")
        events = bridge.log_events()
        ringing = [e for e in events if e.get("event") == "sip_call_ringing"]
        assert [e["layer"] for e in ringing][:2] == [0, 1]
        assert [e["user_id"] for e in events if e.get("event") == "sip_call_answered"] == ["cleo"]
        dialed = {
            e["user_id"]: datetime.fromisoformat(e["timestamp"])
            for e in events
            if e.get("event") == "sip_leg_dialed"
        }
        assert set(dialed) == {"anna", "cleo"}
        # Layer two rang when the 2 s were up: never before (less the few ms between the call's
        # start and anna's dial), and far from ten times later even on a busy machine.
        waited = (dialed["cleo"] - dialed["anna"]).total_seconds()
        assert 1.9 <= waited < 10, f"layer two rang {waited:.2f} s after layer one"


def test_three_phones_race_to_answer(tmp_path: Path) -> None:
    group = directory()
    group["ring_groups"][0]["layers"][0]["members"] = ["anna", "ben", "cleo"]
    with trunk_bridge(tmp_path, group) as bridge:
        phones = [
            start_phone(tmp_path, "phone_race.xml", u, bridge.sip) for u in ("301", "302", "303")
        ]
        wait_registered(bridge, 3)
        trunk = run_trunk(tmp_path, bridge)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        for phone in phones:
            assert phone.wait(timeout=30) == 0  # every phone ends with a BYE: none left half-up
        bridge.wait_events("sip_call_ended")
        events = bridge.log_events()
        answered = [e for e in events if e.get("event") == "sip_call_answered"]
        assert len(answered) == 1
        late = [e for e in events if e.get("event") == "sip_late_answer_hung_up"]
        assert len(late) == 2  # both losers answered too: ACKed and hung up, never bridged
        assert bridge.metric('bridge_calls_total{outcome="answered",path="sip"}') == 1.0


@pytest.mark.parametrize("caller_id", ["caller", "line"])
def test_nobody_reachable_forwards_to_the_pstn_with_diversion(
    tmp_path: Path, caller_id: str
) -> None:
    group = directory()
    group["ring_groups"][0]["fallback"] = {"action": "forward", "number": "+15559990000"}
    pstn, pstn_port = start_pstn(tmp_path, "pstn_answer.xml")
    with trunk_bridge(
        tmp_path,
        group,
        sip__trunk_uri=f"sip:127.0.0.1:{pstn_port}",
        sip__trunk_caller_id=caller_id,
    ) as bridge:
        trunk = run_trunk(tmp_path, bridge)  # no phone registered: straight to the fallback
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert pstn.wait(timeout=30) == 0
        invite = (tmp_path / "pstn.msg").read_text(errors="replace")
        assert "INVITE sip:+15559990000@127.0.0.1 SIP/2.0" in invite
        assert "Diversion: <sip:+15550100@bridge.test>;reason=" in invite
        if caller_id == "caller":  # the trunk caller's own From, display name and all
            assert 'From: "Caller" <sip:+15551230000@127.0.0.1:' in invite
        else:  # the dialled line
            assert "From: <sip:+15550100@bridge.test>;tag=" in invite
        ended = bridge.wait_events("sip_call_ended")
        assert ended and ended[0]["outcome"] == "forwarded"


def test_two_phones_of_one_user_one_answers_the_other_gets_reason(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        desk = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "300")
        soft = start_phone(tmp_path, "phone_ring_cancelled.xml", "301", bridge.sip)
        wait_registered(bridge, 2)  # two contacts, both Anna's
        trunk = run_trunk(tmp_path, bridge)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert desk.wait(timeout=30) == 0 and soft.wait(timeout=30) == 0
        cancel = trace(tmp_path, "phone_ring_cancelled.xml", "301")
        assert 'Reason: SIP;cause=200;text="Call completed elsewhere"' in cancel
        bridge.wait_events("sip_call_ended")
        events = bridge.log_events()
        dialed = [e for e in events if e.get("event") == "sip_leg_dialed"]
        assert {e["user_id"] for e in dialed} == {"anna"} and len(dialed) == 2
        assert [e["user_id"] for e in events if e.get("event") == "sip_call_answered"] == ["anna"]


def test_live_call_is_listed_while_ringing(tmp_path: Path) -> None:
    # The phone rings 2 s before it answers and the call then lasts 2 s: each state is listed
    # for seconds, and one poll is one HTTP request (milliseconds; the token is fetched once),
    # so the poll cannot miss either state however busy the machine.
    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "2000")
        wait_registered(bridge, 1)
        bridge.token()  # before the call: `bridge token` starts a Python process
        trunk = subprocess.Popen(
            trunk_command(tmp_path, bridge, "-d", "2000"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "answered" not in seen and trunk.poll() is None:
            for listed in bridge.api("/api/v1/calls"):
                seen[listed["state"]] = listed  # the latest listing in each state
            time.sleep(0.02)
        assert trunk.wait(timeout=30) == 0 and anna.wait(timeout=30) == 0
        assert set(seen) == {"ringing", "answered"}, seen
        ringing, answered = seen["ringing"], seen["answered"]
        assert ringing["call_id"] == answered["call_id"]
        for call in (ringing, answered):
            assert call["path"] == "sip" and call["line"] == "+15550100"
            assert call["caller"] == "+15551230000"
        assert ringing["ringing"] == ["anna"] and ringing["answered_by"] is None
        assert answered["answered_by"] == "anna"
        assert bridge.api("/api/v1/calls") == []  # gone once it ended
        assert bridge.metric("bridge_live_calls") == 0.0


def test_unknown_number_is_refused_404(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        result = run_trunk(tmp_path, bridge, number="+19999999999", trace_name="nr")
        assert result.returncode != 0  # the scenario wanted a 200
        assert "SIP/2.0 404 Not Found" in (tmp_path / "nr.msg").read_text(errors="replace")
        ended = bridge.wait_events("sip_call_ended")
        assert ended and ended[0]["outcome"] == "no_route"
        assert bridge.api("/api/v1/calls") == []


def test_voicemail_fallback_without_media_is_480_with_reason(tmp_path: Path) -> None:
    group = directory()
    group["ring_groups"][0]["fallback"] = {"action": "voicemail"}
    with trunk_bridge(tmp_path, group, media__engine="none") as bridge:
        result = run_trunk(tmp_path, bridge)  # nobody registered: straight to voicemail
        assert result.returncode != 0
        messages = (tmp_path / "trunk.msg").read_text(errors="replace")
        assert "SIP/2.0 480 Temporarily Unavailable" in messages
        assert 'Reason: SIP;cause=480;text="voicemail"' in messages
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "voicemail" and ended["cause"] == "rejected"
        assert bridge.metric('bridge_calls_total{outcome="voicemail",path="sip"}') == 1.0


def test_reinvite_passes_through_both_ways(tmp_path: Path) -> None:
    # without the media engine (SDP end to end); anchored calls answer re-INVITEs themselves
    with trunk_bridge(tmp_path, directory(), media__engine="none") as bridge:
        anna = start_phone(tmp_path, "phone_hold.xml", "301", bridge.sip, "-d", "100")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, scenario="trunk_reinvite.xml")
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        phone = trace(tmp_path, "phone_hold.xml", "301")
        assert "a=sendonly" in phone  # the caller's hold offer reached the phone unchanged
        assert "a=recvonly" in (tmp_path / "trunk.msg").read_text(errors="replace")
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"
        assert [e["method"] for e in bridge.log_events() if e.get("event") == "sip_relayed"] == [
            "INVITE"
        ]


def phone_call(
    tmp_path: Path,
    bridge: Any,
    dialled: str,
    me: str,
    password: str,
    timeout: str = "30s",
    quick: bool = False,
) -> subprocess.CompletedProcess[str]:
    # quick: the call is expected to fail; give up after 3 s instead of SIPp's 32 s timer B.
    extra = ("-recv_timeout", "3000") if quick else ()
    return run_trunk(
        tmp_path, bridge, "-au", me, "-ap", password, "-set", "me", me, *extra,
        scenario="phone_call.xml", number=dialled, trace_name=f"call-{me}", timeout=timeout,
    )  # fmt: skip


def test_desk_phone_calls_an_extension(tmp_path: Path) -> None:
    with bridge_process(tmp_path, directory(), sip__keepalive_seconds="0") as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "100")
        wait_registered(bridge, 1)
        result = phone_call(tmp_path, bridge, "301", "302", "pw-302")  # Ben dials Anna's 301
        assert result.returncode == 0, (tmp_path / "call-302.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"
        [call_in] = [e for e in bridge.log_events() if e.get("event") == "sip_call_in"]
        assert call_in["caller"] == "ben" and call_in["line"] is None
        answered = [e for e in bridge.log_events() if e.get("event") == "sip_call_answered"]
        assert [e["user_id"] for e in answered] == ["anna"]


def test_desk_phone_wrong_password_gets_no_call(tmp_path: Path) -> None:
    with bridge_process(tmp_path, directory(), sip__keepalive_seconds="0") as bridge:
        result = phone_call(tmp_path, bridge, "301", "302", "wrong", timeout="3s", quick=True)
        assert result.returncode != 0
        messages = (tmp_path / "call-302.msg").read_text(errors="replace")
        # Challenged, answered wrongly, challenged again (SIPp then retransmits into it).
        assert messages.count("SIP/2.0 407") >= 2 and "SIP/2.0 200" not in messages
        assert bridge.log_events() and not bridge.wait_events("sip_call_in", timeout=0.5)
        assert bridge.metric('bridge_sip_auth_failures_total{reason="auth_failed"}') == 1.0


def test_desk_phone_calls_a_number_through_the_trunk_with_its_own_caller_id(
    tmp_path: Path,
) -> None:
    group = directory()
    group["users"][2]["personal_line"] = "+15550102"  # Ben's own number
    pstn, pstn_port = start_pstn(tmp_path, "pstn_answer.xml")
    with bridge_process(
        tmp_path, group, sip__keepalive_seconds="0", sip__trunk_uri=f"sip:127.0.0.1:{pstn_port}"
    ) as bridge:
        result = phone_call(tmp_path, bridge, "15559990000", "302", "pw-302")
        assert result.returncode == 0, (tmp_path / "call-302.err").read_text(errors="replace")
        assert pstn.wait(timeout=30) == 0
        invite = (tmp_path / "pstn.msg").read_text(errors="replace")
        assert "INVITE sip:+15559990000@127.0.0.1 SIP/2.0" in invite
        assert "From: <sip:+15550102@bridge.test>;tag=" in invite
        assert "Diversion:" not in invite  # a call out is not a diverted call
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "forwarded"


def test_answer_is_resent_until_the_caller_acks(tmp_path: Path) -> None:
    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "0")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, scenario="trunk_late_ack.xml")
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        messages = (tmp_path / "trunk.msg").read_text(errors="replace")
        oks = [m for m in messages.split("-----") if "SIP/2.0 200 OK" in m and "INVITE" in m]
        assert len(oks) >= 2  # re-sent at 0.5 s (and 1.5 s) until the ACK came
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"
        # What happens when the ACK never comes (32 s) is in test_answer_retransmission.py.


def test_forward_answers_the_providers_digest_challenge(tmp_path: Path) -> None:
    group = directory()
    group["ring_groups"][0]["fallback"] = {"action": "forward", "number": "+15559990000"}
    pstn, pstn_port = start_pstn(tmp_path, "pstn_auth.xml")
    with trunk_bridge(
        tmp_path,
        group,
        sip__trunk_uri=f"sip:127.0.0.1:{pstn_port}",
        sip__trunk_username="bridge-acct",
        sip__trunk_password="trunk-secret",
    ) as bridge:
        trunk = run_trunk(tmp_path, bridge)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert pstn.wait(timeout=30) == 0
        messages = (tmp_path / "pstn.msg").read_text(errors="replace")
        assert '\nAuthorization: Digest username="bridge-acct"' in messages
        assert "SIP/2.0 403" not in messages  # the provider accepted our answer
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "forwarded"
        assert bridge.wait_events("sip_trunk_challenge_answered")


def test_session_timer_negotiated_and_refreshed_by_the_trunk(tmp_path: Path) -> None:
    # RFC 4028 with a real peer: the trunk asks for a 1800 s timer it refreshes itself; the
    # bridge grants it (checked inside the scenario), asks the phone for the same interval,
    # and answers the trunk's UPDATE refresh itself (the phone never sees it).
    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "1000")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, scenario="trunk_session_timer.xml")
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        phone = trace(tmp_path, "phone_answer.xml", "301")
        assert "Session-Expires: 1800\r\n" in phone.replace("\n", "\r\n").replace("\r\r", "\r")
        assert "Supported: timer" in phone
        assert "UPDATE sip:" not in phone
        refreshed = [e for e in bridge.log_events() if e.get("event") == "sip_session_refreshed"]
        assert [(e["side"], e["by"]) for e in refreshed] == [("caller", "peer")]
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"


def test_trunk_call_to_a_sip_username_rings_that_users_phone(tmp_path: Path) -> None:
    # What a carrier's <Dial><Sip>sip:301@bridge</Sip> sends: the user, not a line.
    with trunk_bridge(tmp_path, directory()) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "300")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, number="301")
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"
        answered = [e for e in bridge.log_events() if e.get("event") == "sip_call_answered"]
        assert [e["user_id"] for e in answered] == ["anna"]


def test_dial_rules_refuse_an_international_call_with_403_and_audit_it(tmp_path: Path) -> None:
    """Toll fraud: by default a desk phone may not call abroad (403 naming why, audited, no
    INVITE to the trunk); a user allowed it in the directory goes out, the number in E.164."""
    group = directory()
    pstn, pstn_port = start_pstn(tmp_path, "pstn_answer.xml")
    with bridge_process(
        tmp_path, group, sip__keepalive_seconds="0", sip__trunk_uri=f"sip:127.0.0.1:{pstn_port}"
    ) as bridge:
        refused = phone_call(tmp_path, bridge, "011442079460000", "302", "pw-302", quick=True)
        assert refused.returncode != 0
        messages = (tmp_path / "call-302.msg").read_text(errors="replace")
        assert "SIP/2.0 403 Forbidden (international calls are not allowed)" in messages
        [line] = [e for e in bridge.log_events() if e.get("action") == "dial"]
        assert (line["actor"], line["allowed"], line["target"], line["kind"]) == (
            "ben",
            False,
            "number:+442079460000",
            "international",
        )
        assert pstn.poll() is None  # the trunk never saw it
        assert bridge.metric('bridge_sip_calls_refused_total{reason="dial_rules"}') == 1.0
    pstn.kill()
    pstn.wait()
    allowed = directory()
    allowed["users"][2]["dial"] = ["internal", "national", "international"]
    pstn, pstn_port = start_pstn(tmp_path, "pstn_answer.xml")
    with bridge_process(
        tmp_path, allowed, sip__keepalive_seconds="0", sip__trunk_uri=f"sip:127.0.0.1:{pstn_port}"
    ) as bridge:
        result = phone_call(tmp_path, bridge, "011442079460000", "302", "pw-302")
        assert result.returncode == 0, (tmp_path / "call-302.err").read_text(errors="replace")
        assert pstn.wait(timeout=30) == 0
        assert "INVITE sip:+442079460000@127.0.0.1 SIP/2.0" in (tmp_path / "pstn.msg").read_text(
            errors="replace"
        )


@pytest.mark.parametrize(
    "number",
    [
        # US carriers deliver a ported number with its dip in the Request-URI's user part
        # (RFC 4694): the routing number's digits were read as part of the line's.
        pytest.param("+15550100;npdi;rn=+15559999999", id="ported-number-parameters"),
        # A carrier that puts the national form there (the default dial plan's country code
        # is 1): it was read as +5550100.
        pytest.param("5550100", id="national-form"),
    ],
)
def test_a_carrier_number_in_another_form_reaches_the_line(tmp_path: Path, number: str) -> None:
    """Every such call was refused 404. (Other forms: tests/routing/test_plan.py and
    tests/sip/test_trunk_numbers.py.)"""
    with trunk_bridge(tmp_path, directory(first_layer=("anna",))) as bridge:
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "300")
        wait_registered(bridge, 1)
        trunk = run_trunk(tmp_path, bridge, number=number)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        [call_in] = bridge.wait_events("sip_call_in")
        assert call_in["line"] == "+15550100"
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"


def test_a_provider_we_register_with_calls_our_contact_with_the_number_in_to(
    tmp_path: Path,
) -> None:
    """`trunk_register`: the provider's INVITE names our account in its Request-URI (the
    Contact we registered) and the number dialled in To. It was refused 404 ("no_route")."""
    from tests.sip.test_sipp_register import _provider

    port = free_port()
    provider = _provider(tmp_path, port)
    env = {
        "sip__trunk_uri": f"sip:127.0.0.1:{port}", "sip__trunk_register": "true",
        "sip__trunk_username": "bridge-acct", "sip__trunk_password": "trunk-secret",
    }  # fmt: skip
    group = directory(first_layer=("anna",))
    with trunk_bridge(tmp_path, group, **env) as bridge:
        assert provider.wait(timeout=30) == 0  # registered
        assert bridge.wait_events("sip_trunk_registered")
        anna = start_phone(tmp_path, "phone_answer.xml", "301", bridge.sip, "-d", "200")
        wait_registered(bridge, 1)
        trunk = run_trunk(
            tmp_path, bridge, "-set", "acct", "bridge-acct", scenario="provider_call_to_contact.xml"
        )
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        [call_in] = bridge.wait_events("sip_call_in")
        assert call_in["line"] == "+15550100"
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"
