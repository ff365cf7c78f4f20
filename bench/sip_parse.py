"""SIP message parse time: our parser against the `sipmessage` package.

    python bench/sip_parse.py [--iterations N] [--repeat N] [--profile]

Messages: every RFC 4475 torture message our parser accepts (read from
../shared/corpora/rfc4475/), plus a typical carrier INVITE with SDP and a desk-phone REGISTER.
Columns, in µs per message (best of --repeat runs of --iterations parses each):

  (a) ours     bridge.sip.parser.parse_message: framing, start line, header split, CSeq
  (b) ours+    (a), then the top Via, From and To parsed into views (grammar.top_via,
               parse_name_addr): what the transaction and dialog layers need per message
  (c) sipm     sipmessage.Message.parse (start line, header split; no framing checks)
  (d) sipm+    (c), then sipmessage.Via.parse / Address.parse of Via, From and To

`sipmessage` is optional (`.venv/bin/pip install sipmessage`; not a project dependency);
without it the (c)/(d) columns are skipped. "fail" means that parser refused the message.
Target: (a) under 20 µs for the typical INVITE.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.sip.grammar import parse_name_addr, top_via
from bridge.sip.parser import SipParseError, parse_message

try:
    import sipmessage  # type: ignore[import-untyped]
except ImportError:  # optional: only the comparison columns need it
    sipmessage = None

TARGET_US = 20.0
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "rfc4475"

_SDP = (
    b"v=0\r\no=- 2890844526 2890844526 IN IP4 203.0.113.10\r\ns=-\r\n"
    b"c=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
TYPICAL_INVITE = (
    b"INVITE sip:+15550100@bridge.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:+15550100@bridge.example.com>\r\n"
    b'From: "Alice Caller" <sip:+15551234567@carrier.example.net>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.carrier.example.net\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:+15551234567@203.0.113.10:5060>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Supported: timer, replaces\r\n"
    b"User-Agent: Carrier SBC 1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(_SDP)).encode() + b"\r\n\r\n" + _SDP
)
TYPICAL_REGISTER = (
    b"REGISTER sip:bridge.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.10:40000;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "102" <sip:102@bridge.example.com>;tag=a73kszlfl\r\n'
    b"To: <sip:102@bridge.example.com>\r\n"
    b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.10\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b'Contact: <sip:102@192.0.2.10:40000;transport=tcp;ob>;+sip.instance="<urn:uuid:00000000'
    b'-0000-1000-8000-000A95A0E128>";reg-id=1;expires=600\r\n'
    b'Authorization: Digest username="102", realm="bridge.local", nonce="dcd98b7102dd2f0e8b'
    b'11d0f600bfb0c093", uri="sip:bridge.example.com", response="e6f99bf0f9e1e7a4c0a3a8d1'
    b'b2d3a4f5", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b"\r\n'
    b"Supported: path, outbound\r\n"
    b"User-Agent: baresip v3.10.0\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def ours(data: bytes) -> object:
    return parse_message(data)


def ours_views(data: bytes) -> object:
    message = parse_message(data)
    headers = message.headers
    return (
        top_via(headers),
        parse_name_addr(headers.get("From") or ""),
        parse_name_addr(headers.get("To") or ""),
    )


def theirs(data: bytes) -> object:
    return sipmessage.Message.parse(data)


def theirs_views(data: bytes) -> object:
    message = sipmessage.Message.parse(data)
    headers = message.headers
    return (
        sipmessage.Via.parse(headers.get("Via")),
        sipmessage.Address.parse(headers.get("From")),
        sipmessage.Address.parse(headers.get("To")),
    )


def best_us(
    function: Callable[[bytes], object], data: bytes, iterations: int, repeat: int
) -> float:
    """Best per-call time over `repeat` runs (the least disturbed by the rest of the machine),
    or NaN when the function refuses the message."""
    try:
        function(data)
    except Exception:
        return float("nan")
    runs = []
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter_ns()
            for _ in range(iterations):
                function(data)
            runs.append((time.perf_counter_ns() - start) / iterations / 1000)
    finally:
        gc.enable()
    return min(runs)


def messages() -> list[tuple[str, bytes]]:
    out = [("typical INVITE+SDP", TYPICAL_INVITE), ("typical REGISTER", TYPICAL_REGISTER)]
    if not CORPUS.is_dir():
        print(f"(RFC 4475 corpus not found at {CORPUS}: typical messages only)")
        return out
    for path in sorted(CORPUS.glob("*.dat")):
        data = path.read_bytes()
        try:
            parse_message(data)
        except SipParseError:
            continue  # only the messages we accept are timed
        out.append((f"rfc4475 {path.stem}", data))
    return out


def _cell(value: float) -> str:
    return "   fail" if value != value else f"{value:7.2f}"


def _ratio(theirs_us: float, ours_us: float) -> str:
    if theirs_us != theirs_us or ours_us != ours_us:
        return "    -"
    return f"{theirs_us / ours_us:5.2f}"


def run(iterations: int, repeat: int) -> None:
    columns: list[tuple[str, Callable[[bytes], object]]] = [
        ("(a) ours", ours),
        ("(b) ours+", ours_views),
    ]
    if sipmessage is None:
        print("sipmessage is not installed: columns (c) and (d) skipped")
    else:
        columns += [("(c) sipm", theirs), ("(d) sipm+", theirs_views)]
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{iterations} parses x best of {repeat}, µs per message"
    )
    head = "".join(f"{label:>11}" for label, _ in columns)
    ratios = "    c/a    d/b" if sipmessage is not None else ""
    print(f"{'message':30}{head}{ratios}")
    table: dict[str, list[float]] = {label: [] for label, _ in columns}
    for name, data in messages():
        row = [best_us(function, data, iterations, repeat) for _, function in columns]
        for (label, _), value in zip(columns, row, strict=True):
            table[label].append(value)
        line = "".join(f"    {_cell(value)}" for value in row)
        if sipmessage is not None:
            line += f"  {_ratio(row[2], row[0])}  {_ratio(row[3], row[1])}"
        print(f"{name:30}{line}")
    print()
    for label, values in table.items():
        ok = [value for value in values if value == value]
        failed = len(values) - len(ok)
        print(
            f"{label:10} median {statistics.median(ok):6.2f} µs  mean {statistics.mean(ok):6.2f} µs"
            f"  ({len(ok)} parsed, {failed} refused)"
        )
    invite_us = table["(a) ours"][0]
    verdict = "meets" if invite_us < TARGET_US else "MISSES"
    print(f"\n(a) typical INVITE: {invite_us:.2f} µs, {verdict} the {TARGET_US:.0f} µs target")


def profile(iterations: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        ours_views(TYPICAL_INVITE)
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="cProfile (b) on the INVITE")
    args: Any = parser.parse_args(argv)
    if args.profile:
        profile(args.iterations * 10)
    else:
        run(args.iterations, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
