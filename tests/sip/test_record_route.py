"""A carrier whose edge proxy Record-Routes the call (RFC 3261 §12.1.1, §12.2.1.1).

Our responses that make the caller's dialog (18x, 200) did not copy the INVITE's
Record-Route, so the caller's side built no route set and sent its ACK and BYE around the
proxy (a proxy that only relays requests on a route it recorded drops them: the call was
never ACKed and ended after 32 s). And our own requests on that dialog (the BYE when the agent
hangs up, a session refresh, a relayed re-INVITE or INFO) went straight to the caller's
Contact instead of to the first route: past the carrier's proxy, which may keep them from the
far end, and the call went on (and was billed) there.

In process, and with Kamailio as the carrier's record-routing proxy between SIPp (the trunk)
and the daemon, the desk phone (SIPp) hanging up first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sim.phones.inproc import (
    DESK_ANSWER,
    DESK_PHONE,
    DESK_RINGING,
    SDP,
    TRUNK,
    InprocBridge,
    contact_uri,
    header,
    header_lines,
    is_request,
    is_response,
    respond,
    signalling_bridge,
    trunk_in_dialog,
    trunk_invite,
)

from tests.sip.peers import free_port, needs_sipp, trunk_bridge
from tests.sip.test_sipp_calls import directory, start_phone, trunk_command, wait_registered

LINE = "+15550100"
PHONE = DESK_PHONE
PROXY = ("127.0.0.1", 5999)  # the carrier's edge proxy, first in the route set
ROUTES = "Record-Route: <sip:127.0.0.1:5999;lr>, <sip:10.9.9.9;lr;ftag=x>"
KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if os.path.exists("/usr/sbin/kamailio") else None
)
KAMAILIO_CFG = Path(__file__).resolve().parents[2] / "bench" / "kamailio" / "kamailio.cfg"
needs_kamailio = pytest.mark.skipif(
    KAMAILIO is None and os.environ.get("CI") != "true",
    reason="kamailio missing (Debian kamailio; `make test` installs it)",
)


@pytest.fixture
async def bridge() -> AsyncIterator[InprocBridge]:
    async with signalling_bridge(LINE) as bridge:
        yield bridge


def from_phone(leg: bytes, method: str, cseq: int, extra: str = "", body: bytes = b"") -> bytes:
    """An in-dialog request of the desk phone that answered our INVITE `leg`."""
    lines = [
        f"{method} {contact_uri(leg)} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{PHONE[1]};branch=z9hG4bK-ph-{method}{cseq}",
        f"From: {header(leg, 'To')};tag=ph1",
        f"To: {header(leg, 'From')}",
        f"Call-ID: {header(leg, 'Call-ID')}",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
        *[line for line in extra.split("\n") if line],
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answered(bridge: InprocBridge) -> tuple[bytes, list[bytes]]:
    """A call from the trunk through its proxies, answered by the phone and ACKed: our INVITE
    to the phone, and what the trunk got (180, 200)."""
    bridge.feed(trunk_invite(1, LINE, bridge.address, ROUTES), TRUNK)
    [leg] = [d for d, a in bridge.take() if a == PHONE and is_request(d, "INVITE")]
    assert not header_lines(leg, b"Record-Route")  # (the phone's leg is our own dialog)
    bridge.feed(respond(leg, "180 Ringing", b"ph1", DESK_RINGING), PHONE)
    got = [d for d, a in bridge.take() if a == TRUNK]
    bridge.feed(respond(leg, "200 OK", b"ph1", DESK_ANSWER, SDP), PHONE)
    got += [d for d, a in bridge.take() if a == TRUNK]
    [ok] = [d for d in got if is_response(d, 200, "INVITE")]
    bridge.feed(trunk_in_dialog("ACK", 1, 1, header(ok, "To") or "", contact_uri(ok)), TRUNK)
    bridge.take()
    return leg, got


async def test_responses_that_make_the_dialog_copy_the_record_route(
    bridge: InprocBridge,
) -> None:
    _, got = answered(bridge)
    [ringing] = [d for d in got if is_response(d, 180, "INVITE")]
    [ok] = [d for d in got if is_response(d, 200, "INVITE")]
    for response in (ringing, ok):  # the same values, in the same order
        assert header_lines(response, b"Record-Route") == [ROUTES.encode()]


async def test_our_bye_to_the_caller_goes_to_the_first_route(bridge: InprocBridge) -> None:
    leg, _ = answered(bridge)
    bridge.feed(from_phone(leg, "BYE", 2), PHONE)  # the agent hangs up
    [(bye, where)] = [(d, a) for d, a in bridge.take() if is_request(d, "BYE")]
    assert where == PROXY  # not the caller's Contact (TRUNK)
    assert header_lines(bye, b"Route") == [
        b"Route: <sip:127.0.0.1:5999;lr>",
        b"Route: <sip:10.9.9.9;lr;ftag=x>",
    ]
    assert bye.startswith(f"BYE sip:+15551230000@{TRUNK[0]}:{TRUNK[1]}".encode())


async def test_a_relayed_info_to_the_caller_goes_to_the_first_route(
    bridge: InprocBridge,
) -> None:
    leg, _ = answered(bridge)
    info = from_phone(leg, "INFO", 2, "Content-Type: application/dtmf-relay", b"Signal=5\r\n")
    bridge.feed(info, PHONE)
    [where] = [a for d, a in bridge.take() if is_request(d, "INFO")]
    assert where == PROXY


# -- Kamailio in front -----------------------------------------------------------------------
def _answers_options(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.3)
    probe.bind(("127.0.0.1", 0))  # (its port in the Via: the answer comes back there)
    try:
        branch = f"z9hG4bK-probe{time.monotonic_ns()}"
        probe.sendto(
            (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{probe.getsockname()[1]};branch={branch};rport\r\n"
                "From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\n"
                f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        return probe.recv(65535).startswith(b"SIP/2.0")
    except OSError:
        return False
    finally:
        probe.close()


@contextlib.contextmanager
def kamailio_in_front(folder: Path, bridge_port: int) -> Iterator[int]:
    """Kamailio (bench/kamailio/kamailio.cfg: stateful, record_route, loose_route) relaying
    every new INVITE to the bridge; yields its port."""
    assert KAMAILIO is not None, "kamailio missing (Debian kamailio)"
    port, rundir = free_port(), folder / "kamailio"
    rundir.mkdir()
    log = (rundir / "kamailio.log").open("wb")
    process = subprocess.Popen(
        [
            KAMAILIO, "-f", str(KAMAILIO_CFG), "-DD", "-E", "-l", f"udp:127.0.0.1:{port}",
            "-A", f'PHONE_URI="sip:127.0.0.1:{bridge_port}"', "-Y", str(rundir),
            "-w", str(rundir), "-P", str(rundir / "kamailio.pid"), "-m", "64", "-M", "8",
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=rundir, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not _answers_options(port):
            assert process.poll() is None, (rundir / "kamailio.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "kamailio did not answer"
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)
        log.close()


@needs_sipp
@needs_kamailio
def test_through_a_record_routing_proxy_the_ack_arrives_and_our_bye_goes_back_through_it(
    tmp_path: Path,
) -> None:
    group = directory(first_layer=("anna",))
    with trunk_bridge(tmp_path, group) as bridge:
        anna = start_phone(tmp_path, "phone_answer_hangup.xml", "301", bridge.sip, "-d", "500")
        wait_registered(bridge, 1)
        with kamailio_in_front(tmp_path, bridge.sip) as proxy:
            command = trunk_command(
                tmp_path, SimpleNamespace(sip=proxy), scenario="trunk_call_until_bye.xml"
            )
            trunk = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert trunk.returncode == 0, (tmp_path / "trunk.err").read_text(errors="replace")
        assert anna.wait(timeout=30) == 0
        # the BYE the trunk got came through Kamailio: its Via and ours
        messages = (tmp_path / "trunk.msg").read_text(errors="replace").split("\n----")
        [bye] = [m for m in messages if "\nBYE sip:" in m or m.startswith("BYE sip:")]
        vias = [line for line in bye.splitlines() if line.lower().startswith("via:")]
        assert len(vias) == 2 and f":{proxy};" in vias[0], vias
        [ended] = bridge.wait_events("sip_call_ended")
        assert ended["outcome"] == "answered"
        assert not bridge.wait_events("sip_no_ack", timeout=0.5)  # our 200 was ACKed
