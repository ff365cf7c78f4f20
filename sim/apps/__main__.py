"""`python -m sim.apps`: app users on a running bridge, answering its offers.

    python -m sim.apps -c config/bridge.toml --users alice,olivia --sessions 2 \\
        --answer-probability 0.8 --delay 0.5-2 --seconds 60

Tokens are signed with the bridge's `[auth] jwt_secret` (read from --config, or
--jwt-secret), so it needs the same settings file as the bridge. Prints a summary of the
offers at exit (after --seconds, or Ctrl-C).

With audio (the SIP path, where apps are WebRTC peers of the bridge's media engine):

    python -m sim.apps -c config/bridge.toml --users ava --play tone.wav \
        --record-dir heard/ --seconds 60

answers each offer with a WebRTC answer (aiortc), plays tone.wav into the call (looped;
any rate or channel count, converted to 8 kHz mono) and writes what it heard to
heard/<call_id>.wav, 8 kHz 16-bit mono, when the call ends. On the carrier path the app's
audio is the carrier's voice SDK's, not this.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from bridge.config import load_settings
from bridge.tokens import TokenService
from sim.apps.client import AnswerPolicy, AppAudio
from sim.apps.load import AppFleet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sim.apps", description=__doc__)
    parser.add_argument("-c", "--config", help="the bridge's settings file (for the URL and key)")
    parser.add_argument("--url", help="default ws://<http.host>:<http.port>/ws of --config")
    parser.add_argument("--jwt-secret", help="default [auth] jwt_secret of --config")
    parser.add_argument("--users", required=True, help="comma-separated user ids")
    parser.add_argument("--sessions", type=int, default=1, help="sessions per user")
    parser.add_argument("--answer-probability", type=float, default=1.0)
    parser.add_argument("--delay", default="0", help="seconds before answering: N or MIN-MAX")
    parser.add_argument("--reject", action="store_true", help="reject the offers not accepted")
    parser.add_argument("--auth", choices=["frame", "subprotocol", "query"], default="frame")
    parser.add_argument("--seconds", type=float, default=0, help="run time; 0: until Ctrl-C")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--play", help="a WAV file played (looped) into every call answered")
    parser.add_argument(
        "--record-dir", help="write what each call's app heard to DIR/<call_id>.wav (8 kHz mono)"
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config) if args.config else None
    url = args.url or (f"ws://{settings.http.host}:{settings.http.port}/ws" if settings else None)
    secret = args.jwt_secret or (settings.auth.jwt_secret if settings else None)
    if not url or not secret:
        print("need --config, or --url and --jwt-secret", file=sys.stderr)
        return 2
    low, _, high = args.delay.partition("-")
    policy = AnswerPolicy(
        probability=args.answer_probability,
        delay_min=float(low),
        delay_max=float(high or low),
        reject_others=args.reject,
        seed=args.seed,
    )
    audio = None
    if args.play or args.record_dir:
        from sim.apps.audio import load_pcm

        record_dir = Path(args.record_dir) if args.record_dir else None
        if record_dir is not None:
            record_dir.mkdir(parents=True, exist_ok=True)
        try:
            source = load_pcm(args.play) if args.play else bytes(320)
        except (OSError, ValueError, EOFError) as exc:
            print(f"--play {args.play}: {exc}", file=sys.stderr)
            return 2
        audio = AppAudio(source, record_dir)
    tokens = TokenService(secret)
    fleet = AppFleet(
        url,
        [u for u in args.users.split(",") if u],
        lambda user: tokens.issue(user, ttl=86400),
        sessions_per_user=args.sessions,
        policy=policy,
        auth=args.auth,
        audio=audio,
    )
    report = await fleet.connect()
    print(f"connected {report.connected} sessions, refused {len(report.refused)}", flush=True)
    for reason in report.refused[:10]:
        print(f"  refused: {reason}", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.seconds or None)
    stats = fleet.collect().stats
    await fleet.close()
    summary = {
        "sessions": report.connected,
        "offers": stats.offers,
        "accepts": stats.accepts,
        "rejects": stats.rejects,
        "won": stats.won,
        "lost": stats.lost,
        "ended": stats.ended,
    }
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
