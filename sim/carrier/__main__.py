"""`python -m sim.carrier --port 8089 --bridge-url http://127.0.0.1:8080`: the fake carrier as a
process, for load runs and manual tries. Out-of-spec requests are logged as they arrive and
summed up at exit (Ctrl-C / SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from .server import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeCarrier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sim.carrier", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN)
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="SID:SECRET",
        help="an API key accepted as basic credentials (repeatable)",
    )
    parser.add_argument("--bridge-url", help="where the bridge listens, for webhooks")
    parser.add_argument("--public-url", help="the bridge's public_url (signed); default bridge-url")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="wall seconds per simulated second (tests use 0.01)",
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    keys = dict(k.split(":", 1) for k in args.api_key)
    carrier = FakeCarrier(
        account_sid=args.account_sid,
        auth_token=args.auth_token,
        api_keys=keys,
        bridge_url=args.bridge_url,
        public_url=args.public_url,
        time_scale=args.time_scale,
        host=args.host,
        port=args.port,
    )
    await carrier.start()
    print(f"fake carrier on {carrier.url} (account {carrier.account_sid})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await carrier.stop()
    print(f"{len(carrier.requests)} requests, {len(carrier.violations)} out of spec", flush=True)
    for violation in carrier.violations:
        print(f"  {violation}", flush=True)
    return 1 if carrier.violations else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
