"""The bridge's SIP application in this process, with scripted peers and, optionally, a fake
clock: for tests of timers that run for minutes (session timers, 2xx retransmission) and for
`bench/sip_inproc.py`.

It builds what the daemon builds (`build_context`, the `SipService`, a `SipEndpoint` with its
metrics counters), starts it on 127.0.0.1, then swaps the UDP socket for a `Wire` (a list of
what the bridge sent). Peers are scripted: `feed(datagram, source)` hands the bridge a
datagram as if it came from `source`; `take()` returns what it sent since.

With `fake_time=True` the event loop's clock is replaced by a number that only `advance()`
moves: every timer of the transaction layer and the B2BUA (they all use `loop.call_at`) then
fires in microseconds, in order. Do not `await asyncio.sleep(t > 0)` under a fake clock: the
sleep would never end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from bridge.config import Settings
from bridge.context import AppContext, build_context
from bridge.directory.loader import load_directory
from bridge.sip.digest import authorize
from bridge.sip.service import MetricsCounters
from bridge.sip.transport import SipEndpoint

REALM = "inproc.test"
TRUNK: tuple[str, int] = ("127.0.0.1", 5070)

Address = tuple[str, int]


def ha1(user: str, password: str, realm: str = REALM) -> str:
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()


def desk_user(uid: str, username: str, password: str, **extra: Any) -> dict[str, Any]:
    """A directory user answering on a desk phone (MD5 HA1 only)."""
    return {
        "id": uid,
        "name": f"Desk {username}",
        "answer_by": "ip_phone",
        "sip": {"username": username, "ha1_md5": ha1(username, password)},
        **extra,
    }


def one_desk_phone_directory(line: str, *, ring_seconds: int = 20) -> dict[str, Any]:
    """A line ringing one desk-phone user, `ana` (SIP username 201, password pw-201), for
    `ring_seconds`, then hanging up; and an admin to act on it."""
    return {
        "timezone": "UTC",
        "users": [
            {"id": "admin", "name": "Admin", "role": "admin", "answer_by": "will_not_answer"},
            desk_user("ana", "201", "pw-201"),
        ],
        "ring_groups": [
            {
                "id": "desk",
                "name": "Desk",
                "layers": [{"members": ["ana"], "timeout_seconds": ring_seconds}],
                "fallback": {"action": "hangup"},
            }
        ],
        "lines": [{"number": line, "name": "Main", "route_to": {"ring_group": "desk"}}],
    }


class Wire:
    """The UDP socket, as a list of (datagram, destination)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Address]] = []

    def sendto(self, data: bytes, addr: Address) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass

    def take(self) -> list[tuple[bytes, Address]]:
        sent, self.sent = self.sent, []
        return sent


# -- message text ------------------------------------------------------------------------------
def header_lines(data: bytes, name: bytes) -> list[bytes]:
    prefix = name.lower() + b":"
    head = data.split(b"\r\n\r\n", 1)[0]
    return [line for line in head.split(b"\r\n") if line.lower().startswith(prefix)]


def header(data: bytes, name: str) -> str | None:
    """The first value of a header (full name only), as text."""
    lines = header_lines(data, name.encode())
    return lines[0].split(b":", 1)[1].strip().decode() if lines else None


def body_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def start_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode()


def is_request(data: bytes, method: str) -> bool:
    return data.startswith(method.encode() + b" ")


def is_response(data: bytes, status: int, method: str | None = None) -> bool:
    if not data.startswith(b"SIP/2.0 %d " % status):
        return False
    return method is None or (header(data, "CSeq") or "").endswith(" " + method)


def respond(
    data: bytes, status: str, to_tag: bytes | None = None, extra: bytes = b"", body: bytes = b""
) -> bytes:
    """A UAS's response to a request, as SIPp's [last_*] would build it."""
    lines = [b"SIP/2.0 " + status.encode()]
    lines += header_lines(data, b"Via")
    lines += header_lines(data, b"From")
    to = header_lines(data, b"To")[0]
    if to_tag is not None and b";tag=" not in to:
        to += b";tag=" + to_tag
    lines.append(to)
    lines += header_lines(data, b"Call-ID")
    lines += header_lines(data, b"CSeq")
    if extra:
        lines.append(extra.rstrip(b"\r\n"))
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


SDP = (
    b"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
TRUNK_SDP = SDP.replace(b"phone", b"trunk")


def _extra_lines(extra: str) -> str:
    """Header lines given as "Name: value" separated by newlines, each ended by CRLF."""
    return "".join(f"{h}\r\n" for h in extra.split("\n") if h)


def _trunk_call_head(method: str, n: int, line: str, bridge: str) -> str:
    """The start line and the headers that name the trunk's call `n` and its INVITE
    transaction (Via branch, From tag, To, Call-ID, CSeq 1): an INVITE's and its CANCEL's."""
    return (
        f"{method} sip:{line}@{bridge} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {TRUNK[0]}:{TRUNK[1]};branch=z9hG4bK-t{n};rport\r\n"
        f'From: "Caller" <sip:+15551230000@{TRUNK[0]}:{TRUNK[1]}>;tag=trunk{n}\r\n'
        f"To: <sip:{line}@{bridge}>\r\n"
        f"Call-ID: call-{n}@{TRUNK[0]}\r\n"
        f"CSeq: 1 {method}\r\n"
    )


def trunk_invite(n: int, line: str, bridge: str, extra: str = "") -> bytes:
    """The trunk's INVITE for call `n` to `line` (from TRUNK)."""
    return (
        _trunk_call_head("INVITE", n, line, bridge)
        + f"Contact: <sip:+15551230000@{TRUNK[0]}:{TRUNK[1]};transport=udp>\r\n"
        "Max-Forwards: 70\r\n"
        f"{_extra_lines(extra)}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(TRUNK_SDP)}\r\n\r\n"
    ).encode() + TRUNK_SDP


def trunk_cancel(n: int, line: str, bridge: str, extra: str = "") -> bytes:
    """The trunk's CANCEL of its call `n` (`trunk_invite`'s: same branch, From, To, Call-ID)."""
    return (
        _trunk_call_head("CANCEL", n, line, bridge) + "Max-Forwards: 70\r\n"
        f"{_extra_lines(extra)}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def trunk_in_dialog(
    method: str, cseq: int, n: int, to: str, target: str, extra: str = "", body: bytes = b""
) -> bytes:
    """An in-dialog request of the trunk's call `n` (`to`: the To of the bridge's 2xx)."""
    extra_lines = _extra_lines(extra)
    if method in ("INVITE", "UPDATE"):  # target refresh requests carry a Contact
        extra_lines += f"Contact: <sip:+15551230000@{TRUNK[0]}:{TRUNK[1]};transport=udp>\r\n"
    if body:
        extra_lines += "Content-Type: application/sdp\r\n"
    branch = f"z9hG4bK-t{n}-{method.lower()}{cseq}"
    return (
        f"{method} {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {TRUNK[0]}:{TRUNK[1]};branch={branch};rport\r\n"
        f'From: "Caller" <sip:+15551230000@{TRUNK[0]}:{TRUNK[1]}>;tag=trunk{n}\r\n'
        f"To: {to}\r\n"
        f"Call-ID: call-{n}@{TRUNK[0]}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra_lines}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def register(
    username: str, port: int, n: int, bridge: str, auth: bytes = b"", cseq: int = 1
) -> bytes:
    return (
        (
            f"REGISTER sip:{bridge} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-r{n}-{cseq};rport\r\n"
            f"From: <sip:{username}@{REALM}>;tag=reg{n}\r\n"
            f"To: <sip:{username}@{REALM}>\r\n"
            f"Call-ID: reg-{n}@127.0.0.1\r\n"
            f"CSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{username}@127.0.0.1:{port}>\r\n"
            "Expires: 3600\r\n"
            "Max-Forwards: 70\r\n"
        ).encode()
        + auth
        + b"Content-Length: 0\r\n\r\n"
    )


class FakeTime:
    """A clock only `advance` moves (installed as the event loop's `time`)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class InprocBridge:
    """The SIP application of a bridge, fed and read by the caller."""

    def __init__(
        self,
        directory: dict[str, Any],
        *,
        sip: dict[str, Any] | None = None,
        folder: Path | None = None,
        media: dict[str, Any] | None = None,
        events: dict[str, Any] | None = None,
    ) -> None:
        self._tmp = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory()
            folder = Path(self._tmp.name)
        (folder / "directory.yaml").write_text(yaml.safe_dump(directory))
        self.settings = Settings(
            sip={
                "host": "127.0.0.1",
                "port": 5060,  # not bound: the endpoint below takes a free port
                "realm": REALM,
                "keepalive_seconds": 0,
                "trunk_allow": ["127.0.0.0/8"],
                "state_path": str(folder / "sip-state.sqlite"),  # (never the cwd's var/)
                **(sip or {}),
            },
            auth={"jwt_secret": "inproc-secret-0123456789abcdef"},
            directory={"path": str(folder / "directory.yaml")},
            # A signalling harness: its phones send no RTP, so no RTP timeout unless asked.
            media={
                "timeout_seconds": 0,
                "recordings_dir": str(folder / "recordings"),
                **(media or {}),
            },
            # (stored only once `ctx.events.start()` runs: the daemon's outbox and its worker)
            events={"outbox_path": str(folder / "events.sqlite"), **(events or {})},
        )
        self.ctx: AppContext = build_context(
            self.settings, load_directory(self.settings.directory_path)
        )
        self.wire = Wire()
        self.time: FakeTime | None = None
        self.address = ""
        self.endpoint: SipEndpoint | None = None

    async def start(self, *, fake_time: bool = False) -> None:
        sip = self.ctx.sip
        assert sip is not None
        loop = asyncio.get_running_loop()
        if fake_time:
            self.time = FakeTime()
            loop.time = self.time  # type: ignore[method-assign]
        self.endpoint = SipEndpoint("127.0.0.1", 0, sip, counters=MetricsCounters(self.ctx.metrics))
        await sip.start(self.endpoint)
        udp = self.endpoint._udp
        assert udp is not None and udp.transport is not None
        udp.transport.close()
        udp.transport = self.wire  # type: ignore[assignment]
        self.endpoint.coalesce_udp = False  # what a feed sends is on the wire when it returns
        self.address = f"127.0.0.1:{self.endpoint.port}"

    async def stop(self) -> None:
        assert self.ctx.sip is not None
        await self.ctx.sip.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- driving ----------------------------------------------------------------------------
    def feed(self, data: bytes, source: Address) -> None:
        assert self.endpoint is not None
        self.endpoint._datagram(data, source)

    def take(self) -> list[tuple[bytes, Address]]:
        return self.wire.take()

    async def advance(self, seconds: float, step: float = 0.25) -> list[tuple[bytes, Address]]:
        """Move the fake clock on by `seconds` (in steps, so timers fire in their order) and
        return what the bridge sent meanwhile."""
        assert self.time is not None, "start(fake_time=True) first"
        end = self.time.now + seconds
        while self.time.now < end:
            self.time.now = min(end, self.time.now + step)
            for _ in range(3):
                await asyncio.sleep(0)  # due call_at handles run on the next loop pass
        return self.take()

    async def settle(self) -> list[tuple[bytes, Address]]:
        """Let work the bridge scheduled for "now" run (a few loop passes); what it sent."""
        for _ in range(5):
            await asyncio.sleep(0)
        return self.take()

    def register_phone(self, username: str, password: str, port: int, n: int = 0) -> bool:
        """REGISTER, 401, REGISTER with MD5 digest, 200: True when the 200 came."""
        self.feed(register(username, port, n, self.address), ("127.0.0.1", port))
        sent = self.take()
        challenge = next(d for d, _ in sent if d.startswith(b"SIP/2.0 401"))
        offers = [
            v.split(b":", 1)[1].strip().decode()
            for v in header_lines(challenge, b"WWW-Authenticate")
        ]
        answer = authorize(
            401,
            offers,
            method="REGISTER",
            uri=f"sip:{self.address}",
            username=username,
            password=password,
        )
        assert answer is not None, challenge
        auth = f"{answer[0]}: {answer[1]}\r\n".encode()
        self.feed(register(username, port, n, self.address, auth, 2), ("127.0.0.1", port))
        return any(d.startswith(b"SIP/2.0 200") for d, _ in self.take())


def contact_uri(data: bytes) -> str:
    value = header(data, "Contact") or ""
    found = re.search(r"<([^>]+)>", value)
    return found.group(1) if found else value


DESK_PHONE: tuple[str, int] = ("127.0.0.1", 20001)  # where `signalling_bridge`'s phone is
# That phone's headers in its 180, and in its 200 with SDP (`respond(..., extra=...)`).
DESK_RINGING = b"Contact: <sip:201@127.0.0.1:20001>"
DESK_ANSWER = DESK_RINGING + b"\r\nContent-Type: application/sdp"


@contextlib.asynccontextmanager
async def signalling_bridge(line: str, **sip: Any) -> AsyncIterator[InprocBridge]:
    """A started bridge on a fake clock, signalling only (`engine = "none"`), session timers
    off unless `sip` says otherwise, with `one_desk_phone_directory(line)`'s phone (201)
    registered from DESK_PHONE."""
    bridge = InprocBridge(
        one_desk_phone_directory(line),
        sip={"session_expires": 0, **sip},
        media={"engine": "none"},
    )
    await bridge.start(fake_time=True)
    try:
        assert bridge.register_phone("201", "pw-201", DESK_PHONE[1])
        yield bridge
    finally:
        await bridge.stop()
