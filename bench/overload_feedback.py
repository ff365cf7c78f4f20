"""RFC 7339 under a burst: the same trunk offers the bridge a multiple of its clean maximum,
once honouring the loss feedback in our responses and once ignoring it (issue 18, point 1:
`oc` toward a trunk that supports it).

    .venv/bin/python bench/overload_feedback.py [--clean-max 400] [--factor 3] [--seconds 30]
                                                [--users 100] [--modes honour,ignore]
                                                [--limit N] [--no-pin] [--quick]
                                                [--json FILE] [--src DIR]

No SIP peer packaged here does RFC 7339 (SIPp has no overload control of this kind), so the
trunk is this script: an asyncio UAC that paces new calls at the offered rate and puts
`;oc;oc-algo="loss"` in its Via. Honouring, it holds a call back when the feedback says so
(`bridge.sip.overload_feedback.PeerFeedback`, the code the bridge uses toward its own provider);
a held-back call is one a real trunk would route elsewhere at once instead of waiting for our
503. Each call: INVITE with SDP (retransmitted at 0.5, 1, 2, 4 s; given up after 8 s), the
503 or other final ACKed, a 200 ACKed and hung up at once (BYE, retransmitted the same way).

The stack is bench/sip_cps.py's (`bridge run` as shipped, --users SIPp desk phones in one
round-robin group, the bridge alone on the first core; this script and the phones on the
other). Per mode: calls offered, held back by the trunk, sent, refused (503), set up, ended;
goodput (calls ended normally per second of the burst) against the clean maximum; set-up p50
and p99 of those (from the first INVITE sent to the 200, this script's clock); the bridge's CPU
over the burst (the events worker apart) and per INVITE it received; the percentage the
bridge asked for, second by second. It prints figures and ratios and asserts nothing.
`--limit N` sets the bridge's `sip.overload.calls_per_second` (refusals without a saturated
core). `--quick`: a smoke run at 60 calls/s against a limit of 20 (tests/sip/
test_bench_overload.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import overload  # noqa: E402
import sip_cps  # noqa: E402
from bridge.sip.overload_feedback import CLIENT_PARAMS, PeerFeedback  # noqa: E402
from sip_cps import LINE, Context, Processes, percentile  # noqa: E402

RETRANSMIT = (0.5, 1.0, 2.0, 4.0)  # Timer A / E doubling from T1, then given up (8 s in all)
DRAIN_SECONDS = 12.0  # after the burst: calls still under way finish or are given up


@dataclass
class Call:
    n: int
    call_id: str
    invite: bytes
    sent_at: float
    state: str = "inviting"  # inviting -> ending -> done
    tries: int = 0
    timer: asyncio.TimerHandle | None = None
    bye: bytes | None = None
    acked: bytes | None = None  # the ACK of the 2xx, sent again if the 2xx is


@dataclass
class Tally:
    offered: int = 0
    held_back: int = 0
    sent: int = 0
    refused: int = 0
    set_up: int = 0
    ended: int = 0
    failed: int = 0
    retransmissions: int = 0
    late_ms: float = 0.0  # the pacing's worst lateness (this script keeping up)
    setups_ms: list[float] = field(default_factory=list)
    asked: Counter[int] = field(default_factory=Counter)  # second -> sum of oc values seen
    asked_n: Counter[int] = field(default_factory=Counter)
    held: Counter[int] = field(default_factory=Counter)  # second -> calls held back


def header(text: str, name: str) -> str:
    start = text.find(f"\r\n{name}:")
    if start < 0:
        return ""
    start += len(name) + 3
    return text[start : text.find("\r\n", start)].strip()


class Trunk(asyncio.DatagramProtocol):
    def __init__(self, bridge_port: int, honour: bool, run: str) -> None:
        self.target = ("127.0.0.1", bridge_port)
        self.honour = honour
        self.run = run
        self.feedback = PeerFeedback()
        self.calls: dict[str, Call] = {}
        self.tally = Tally()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)
        self.port = transport.get_extra_info("sockname")[1]

    # -- requests ----------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.target)

    def _request(self, call: Call, method: str, uri: str, cseq: int, to: str, branch: str) -> bytes:
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport{CLIENT_PARAMS}\r\n"
            f"From: <sip:+15551230000@127.0.0.1>;tag=t{call.n}\r\nTo: {to}\r\n"
            f"Call-ID: {call.call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def offer(self, n: int) -> None:
        now = self.loop.time()
        self.tally.offered += 1
        if self.honour and not self.feedback.admits(now, random.random()):
            self.tally.held_back += 1
            self.tally.held[int(now - self.started)] += 1
            return
        call_id = f"ofb-{self.run}-{n}"
        sdp = (
            "v=0\r\no=trunk 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        invite = (
            f"INVITE sip:{LINE}@127.0.0.1:{self.target[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-{call_id};rport"
            f"{CLIENT_PARAMS}\r\n"
            f"From: <sip:+15551230000@127.0.0.1>;tag=t{n}\r\n"
            f"To: <sip:{LINE}@127.0.0.1:{self.target[1]}>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 1 INVITE\r\nContact: <sip:+15551230000@127.0.0.1:{self.port}>\r\n"
            f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
        ).encode()
        call = Call(n, call_id, invite, time.perf_counter())  # (uvloop's clock is in ms)
        self.calls[call_id] = call
        self.tally.sent += 1
        self._send(invite)
        self._arm(call, invite)

    def _arm(self, call: Call, data: bytes) -> None:
        if call.timer is not None:
            call.timer.cancel()
        if call.tries >= len(RETRANSMIT):
            call.timer = self.loop.call_later(RETRANSMIT[-1], self._give_up, call)
            return
        call.timer = self.loop.call_later(RETRANSMIT[call.tries], self._again, call, data)

    def _again(self, call: Call, data: bytes) -> None:
        call.tries += 1
        self.tally.retransmissions += 1
        self._send(data)
        self._arm(call, data)

    def _give_up(self, call: Call) -> None:
        if call.state != "done":
            call.state = "done"
            self.tally.failed += 1

    def _stop(self, call: Call) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        call.tries = 0

    # -- responses ---------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.startswith(b"SIP/2.0 "):
            return
        text = data.decode(errors="replace")
        status = int(text[8:11])
        via = header(text, "Via")
        now = self.loop.time()
        self.feedback.receive(now, via)
        if ";oc=" in via:
            value = via.split(";oc=", 1)[1].split(";", 1)[0]
            if value.isdigit():
                second = int(now - self.started)
                self.tally.asked[second] += int(value)
                self.tally.asked_n[second] += 1
        call = self.calls.get(header(text, "Call-ID"))
        if call is None:
            return
        method = header(text, "CSeq").split()[-1]
        to = header(text, "To")
        if method == "INVITE":
            if status < 200:
                if call.state == "inviting":
                    self._stop(call)  # Timer A stops on a provisional response
                return
            if status < 300:
                self._answered(call, text, to)
                return
            # a non-2xx final: ACKed hop by hop, same branch (RFC 3261 §17.1.1.3)
            uri = call.invite.split(b" ", 2)[1].decode()
            self._send(self._request(call, "ACK", uri, 1, to, f"z9hG4bK-{call.call_id}"))
            if call.state == "inviting":
                self._stop(call)
                call.state = "done"
                if status == 503:
                    self.tally.refused += 1
                else:
                    self.tally.failed += 1
            return
        if method == "BYE" and status >= 200 and call.state == "ending":
            self._stop(call)
            call.state = "done"
            self.tally.ended += 1

    def _answered(self, call: Call, text: str, to: str) -> None:
        if call.state != "inviting":
            if call.acked is not None:
                self._send(call.acked)  # the 2xx again: our ACK was lost
            return
        self._stop(call)
        self.tally.set_up += 1
        self.tally.setups_ms.append((time.perf_counter() - call.sent_at) * 1000)
        contact = header(text, "Contact")
        uri = contact[contact.find("<") + 1 : contact.find(">")] if "<" in contact else contact
        call.acked = self._request(call, "ACK", uri, 1, to, f"z9hG4bK-a{call.call_id}")
        self._send(call.acked)
        call.bye = self._request(call, "BYE", uri, 2, to, f"z9hG4bK-b{call.call_id}")
        call.state = "ending"
        self._send(call.bye)
        self._arm(call, call.bye)


async def burst(bridge_port: int, rate: float, seconds: float, honour: bool, run: str) -> Tally:
    loop = asyncio.get_running_loop()
    transport, trunk = await loop.create_datagram_endpoint(
        lambda: Trunk(bridge_port, honour, run), local_addr=("127.0.0.1", 0)
    )
    trunk.connection_made(transport)  # (uvloop may call it only on the next turn)
    with contextlib.suppress(OSError):  # a burst's answers must not overflow our socket
        import socket

        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    total = int(rate * seconds)
    start = loop.time()
    trunk.started = start
    n = 0
    while n < total:
        now = loop.time()
        due = min(total, int((now - start) * rate) + 1)
        if n < due:
            trunk.tally.late_ms = max(trunk.tally.late_ms, (now - start - n / rate) * 1000)
        while n < due:
            trunk.offer(n)
            n += 1
        await asyncio.sleep(0.001)
    deadline = loop.time() + DRAIN_SECONDS
    while loop.time() < deadline and any(c.state != "done" for c in trunk.calls.values()):
        await asyncio.sleep(0.1)
    for call in trunk.calls.values():
        if call.state != "done":
            call.state = "done"
            trunk.tally.failed += 1
        if call.timer is not None:
            call.timer.cancel()
    transport.close()
    return trunk.tally


def run_mode(
    bridge: Any, rate: float, seconds: float, honour: bool, run: str
) -> tuple[Tally, dict[str, Any]]:
    pid = bridge.process.pid
    before_admission = overload.settled_admission(bridge, 1.0)
    ticks = sip_cps.proc_ticks(pid)
    wall = time.monotonic()
    try:
        import uvloop

        tally = uvloop.run(burst(bridge.sip, rate, seconds, honour, run))
    except ImportError:
        tally = asyncio.run(burst(bridge.sip, rate, seconds, honour, run))
    wall = time.monotonic() - wall
    cpu = (sip_cps.proc_ticks(pid) - ticks) / sip_cps.CLK_TCK
    admitted = overload.delta(overload.settled_admission(bridge), before_admission)
    return tally, {"cpu_s": cpu, "wall_s": wall, "admission": admitted, "rss_mb": rss_mb(pid)}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def report(name: str, tally: Tally, extra: dict[str, Any], clean: float, seconds: float) -> None:
    goodput = tally.ended / seconds
    p50 = percentile(tally.setups_ms, 50)
    p99 = percentile(tally.setups_ms, 99)
    received = tally.sent + tally.retransmissions
    print(
        f"   offered {tally.offered}: held back by the trunk {tally.held_back}, sent "
        f"{tally.sent} (+{tally.retransmissions} retransmissions), refused 503 {tally.refused}, "
        f"set up {tally.set_up}, ended {tally.ended}, failed {tally.failed}"
    )
    print(
        f"   goodput {goodput:.1f} calls/s -> {goodput / clean:.2f} x the clean maximum; "
        f"set-up p50 {sip_cps.fmt(p50, '.1f')} ms, p99 {sip_cps.fmt(p99, '.1f')} ms "
        f"(this script's clock; its pacing was at most {tally.late_ms:.1f} ms late)"
    )
    cpu = extra["cpu_s"]
    print(
        f"   bridge CPU {cpu:.1f} s over {extra['wall_s']:.1f} s (burst and drain), "
        f"{cpu * 1000 / max(1, received):.2f} ms per INVITE it was sent; "
        f"admission {extra['admission']}; resident {extra['rss_mb']:.0f} MB after"
    )
    seconds_seen = sorted(set(tally.asked_n) | set(tally.held))
    timeline = ", ".join(
        f"{s}s:{tally.asked[s] / tally.asked_n[s]:.0f}%"
        + (f"/{tally.held[s]}" if tally.held[s] else "")
        for s in seconds_seen
        if tally.asked_n[s]
    )
    print(f"   asked to hold back, by second (mean oc seen / calls held): {timeline or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean-max", type=float, default=400)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--phone-procs", type=int, default=4)
    parser.add_argument("--modes", default="honour,ignore")
    parser.add_argument(
        "--one-bridge",
        action="store_true",
        help="every mode on the same bridge (to see what a burst leaves behind)",
    )
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--src", type=Path, default=None)
    parser.add_argument("--budget", type=float, default=600)
    parser.add_argument("--limit", type=float, default=0.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.clean_max, args.seconds, args.users, args.phone_procs = 20, 3.0, 5, 1
        args.limit = args.limit or 20
    if args.limit:
        os.environ["BRIDGE_SIP__OVERLOAD__CALLS_PER_SECOND"] = f"{args.limit:g}"
        print(f"   the bridge's sip.overload.calls_per_second: {args.limit:g}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("honour", "ignore") for m in modes):
        parser.error("--modes: a list of honour and ignore")
    if not sip_cps.shutil.which("sipp"):
        print("sipp is not installed (Debian sip-tester): nothing to measure")
        return 0
    started = time.monotonic()
    print("\n".join(sip_cps.machine_lines()))
    print("   " + sip_cps.pin_cores(not args.no_pin))
    offered = args.clean_max * args.factor
    results: dict[str, tuple[Tally, dict[str, Any]]] = {}  # (a mode asked twice: its last)
    with tempfile.TemporaryDirectory(prefix="bench-oc-") as tmp:
        procs = Processes()
        ctx = Context(args, procs, Path(tmp), time.monotonic())
        try:
            users = sip_cps.phone_users(args.users)
            bridge, phones = sip_cps.start_stack(ctx, Path(tmp) / "stack-0", users)
            for index, mode in enumerate(modes):
                if index and not args.quick and not args.one_bridge:
                    # A fresh bridge and phones per mode, so that each mode starts alike
                    # (--one-bridge: three bursts in a row on one bridge showed no slowdown).
                    for process in [bridge.process, *(phone for phone, _, _ in phones)]:
                        procs.stop(process)
                    bridge, phones = sip_cps.start_stack(ctx, Path(tmp) / f"stack-{index}", users)
                if not args.quick:  # (a smoke run's bridge is far from busy)
                    sip_cps.wait_idle(bridge.process.pid, 20.0)
                print(
                    f"== {mode}: {offered:g} calls/s ({args.factor:g} x {args.clean_max:g}) "
                    f"for {args.seconds:g} s, the trunk {mode}s the feedback",
                    flush=True,
                )
                tally, extra = run_mode(bridge, offered, args.seconds, mode == "honour", mode)
                results[mode] = (tally, extra)
                report(mode, tally, extra, args.clean_max, args.seconds)
        finally:
            procs.stop_all()
    if args.json:
        figures = {
            mode: {
                **{k: v for k, v in vars(tally).items() if isinstance(v, int | float)},
                "setup_p99_ms": percentile(tally.setups_ms, 99),
                **extra,
            }
            for mode, (tally, extra) in results.items()
        }
        args.json.write_text(json.dumps({"modes": figures}, indent=2))
    if len(results) == 2 and len(modes) == 2:
        honour, ignore = results["honour"], results["ignore"]
        print("== honour against ignore")
        for label, of in (
            ("goodput", lambda r: r[0].ended / args.seconds),
            ("INVITEs the bridge was sent", lambda r: r[0].sent + r[0].retransmissions),
            ("503s", lambda r: r[0].refused),
            ("bridge CPU, s", lambda r: r[1]["cpu_s"]),
            ("set-up p99, ms", lambda r: percentile(r[0].setups_ms, 99) or 0.0),
        ):
            a, b = of(honour), of(ignore)
            ratio = f"{a / b:.2f}" if b else "-"
            print(f"   {label}: {a:.1f} against {b:.1f} (ratio {ratio})")
    print(f"run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
