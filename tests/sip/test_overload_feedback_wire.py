"""RFC 7339 on a `bridge run`, over the wire, both ways.

As a server: a trunk whose INVITEs carry `;oc` in their Via is told, in our responses, what
share of new calls to hold back while we refuse some, and that it may stop once we refuse
none. As a client: our INVITEs to the provider carry `;oc;oc-algo="loss"`, and once the
provider (SIPp) answers with `oc=100`, the next call to it is not sent at all.

No SIP peer packaged here does RFC 7339 (SIPp and Kamailio 5.6 have no overload control of
this kind), so the trunk's side is a socket that writes the Via as the RFC says, and the
provider is SIPp answering with the feedback written into its scenario."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from tests.sip.peers import SCENARIOS, SIPP, bridge_process, free_port, needs_sipp, trunk_bridge
from tests.sip.test_overload_wire import LINE, directory, header, responses, udp
from tests.sip.test_sipp_calls import directory as group_directory

FEEDBACK = re.compile(r';oc=(\d+);oc-validity=(\d+);oc-seq=(\d{1,12}\.\d{1,5});oc-algo="loss"')


def invite(port: int, local: int, n: int, *, oc: bool = True) -> bytes:
    asks = ';oc;oc-algo="loss"' if oc else ""
    return (
        f"INVITE sip:{LINE}@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-oc-{n};rport{asks}\r\n"
        f"From: <sip:caller@127.0.0.1>;tag=f{n}\r\nTo: <sip:{LINE}@127.0.0.1>\r\n"
        f"Call-ID: oc-{n}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:{local}>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def call_id(message: bytes) -> str:
    return header(message, "Call-ID") or ""


def test_a_trunk_that_asks_is_told_what_to_hold_back_and_when_to_stop(tmp_path: Path) -> None:
    env = {
        "sip__trunk_allow": '["127.0.0.0/8"]',
        "sip__overload__calls_per_second": "5",
        "sip__keepalive_seconds": "0",
    }
    with bridge_process(tmp_path, directory(), **env) as bridge:
        sock, local = udp()
        send = lambda n, oc=True: sock.sendto(  # noqa: E731
            invite(bridge.sip, local, n, oc=oc), ("127.0.0.1", bridge.sip)
        )
        # Four times the rate for a second: three in four refused.
        for n in range(20):
            send(n)
            time.sleep(0.05)
        first = responses(sock, 0.6)
        # What was answered once the gate's window had seen the refusals carries feedback;
        # nothing is added before that (calls only admitted said nothing).
        for n in range(20, 30):
            send(n)
        send(99, oc=False)  # a client that did not ask: nothing added
        later = responses(sock, 1.0)
        asked = [r for r in later if call_id(r) != "oc-99@test"]
        told = [FEEDBACK.search(header(r, "Via") or "") for r in asked]
        percents = [int(m.group(1)) for m in told if m]
        assert percents and all(50 <= p <= 95 for p in percents), (percents, len(later))
        assert all(int(m.group(2)) == 1000 for m in told if m)
        refused = [r for r in asked if r.startswith(b"SIP/2.0 503")]
        assert refused and all(FEEDBACK.search(header(r, "Via") or "") for r in refused)
        untold = [r for r in later if call_id(r) == "oc-99@test"]
        assert untold and all(";oc" not in (header(r, "Via") or "") for r in untold)
        assert first  # (the burst was answered)
        gauge = bridge.metric('bridge_sip_overload_feedback_percent{peer="clients"}')
        assert gauge is not None and gauge >= 50
        # Calm: one call every 0.4 s is under the rate. The share falls by steps, to "stop".
        seen: list[str] = []
        deadline, n = time.monotonic() + 12, 100
        while time.monotonic() < deadline:
            send(n)
            n += 1
            for r in responses(sock, 0.4):
                via = header(r, "Via") or ""
                seen.append(via[via.find(";oc") :] if ";oc" in via else "")
            if seen and seen[-1].startswith(";oc=0;oc-validity=0;"):
                break
        stopping = [s for s in seen if s.startswith(";oc=0;oc-validity=0;")]
        assert stopping, seen
        falling = [int(s[4 : s.index(";", 4)]) for s in seen if s.startswith(";oc=")]
        assert falling == sorted(falling, reverse=True) and falling[0] > 0, falling
        seqs = [float(m) for s in seen for m in re.findall(r"oc-seq=([\d.]+)", s)]
        assert seqs == sorted(seqs)
        assert "sip_overload_feedback" in {e.get("event") for e in bridge.log_events()}


@needs_sipp
def test_the_providers_feedback_holds_back_the_next_call_to_it(tmp_path: Path) -> None:
    assert SIPP is not None
    group = group_directory()
    group["ring_groups"][0]["fallback"] = {"action": "forward", "number": "+15559990000"}
    pstn_port = free_port()
    pstn = subprocess.Popen(
        [
            SIPP, "-sf", str(SCENARIOS / "pstn_overloaded.xml"), "-i", "127.0.0.1",
            "-p", str(pstn_port), "-m", "1", "-nostdin", "-timeout", "30s",
            "-trace_msg", "-message_file", str(tmp_path / "pstn.msg"), "127.0.0.1:9",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        with trunk_bridge(tmp_path, group, sip__trunk_uri=f"sip:127.0.0.1:{pstn_port}") as bridge:
            sock, local = udp()
            # Nobody registered: each call goes straight to the fallback, the provider.
            sock.sendto(invite(bridge.sip, local, 1, oc=False), ("127.0.0.1", bridge.sip))
            assert pstn.wait(timeout=20) == 0, pstn.communicate()[0]
            bridge.wait_events("sip_call_ended")
            sent = (tmp_path / "pstn.msg").read_text(errors="replace")
            assert "INVITE sip:+15559990000@127.0.0.1 SIP/2.0" in sent
            via = next(ln for ln in sent.splitlines() if ln.startswith("Via:"))
            assert via.endswith(';rport;oc;oc-algo="loss"'), via
            # The second call's forward is not sent (the provider's port is closed now: an
            # INVITE there would be dialled and logged, then fail on the ICMP error).
            sock.sendto(invite(bridge.sip, local, 2, oc=False), ("127.0.0.1", bridge.sip))
            ended = bridge.wait_events("sip_call_ended", count=2)
            assert len(ended) == 2
            held = bridge.wait_events("sip_trunk_call_held_back")
            assert len(held) == 1 and held[0]["percent"] == 100
            events = bridge.log_events()
            dialled = [e for e in events if e.get("event") == "sip_leg_dialed"]
            assert len(dialled) == 1, dialled
            taken = [e for e in events if e.get("event") == "sip_trunk_overload_feedback"]
            assert taken and taken[0]["percent"] == 100
            assert bridge.metric("bridge_sip_trunk_held_back_total") == 1
            assert bridge.metric('bridge_sip_overload_feedback_percent{peer="trunk"}') == 100
    finally:
        if pstn.poll() is None:
            pstn.kill()
            pstn.wait()
