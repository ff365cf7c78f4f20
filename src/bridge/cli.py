"""Command line: `bridge run | check-config | route | token | hash-password | set-password |
version`.

Exit codes: 0 success, 1 a runtime failure (daemon unreachable, unknown line), 2 bad
configuration or bad arguments (with `field: reason` lines on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bridge import __version__
from bridge.config import ENV_FILE_VAR, ConfigError, Settings, load_all
from bridge.directory.model import AccountStatus, Directory, Role
from bridge.directory.roles import Action, Scope, scope

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        help=f"settings file (TOML); default: ${ENV_FILE_VAR}, else built-in defaults",
    )


def _load(args: argparse.Namespace) -> tuple[Settings, Directory] | None:
    try:
        return load_all(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return EXIT_CONFIG
    settings, directory = loaded
    print(
        f"ok: {settings.summary()}; {len(directory.users)} users, "
        f"{len(directory.ring_groups)} ring groups, {len(directory.lines)} lines"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return EXIT_CONFIG
    settings, directory = loaded
    from bridge.daemon import run_daemon  # uvicorn & co. only for `run`
    from bridge.observability.logging import configure_logging

    configure_logging(settings.log.level, settings.log.format, cache=True)
    return run_daemon(settings, directory)


def _parse_at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(_usage(f"--at: {text!r} is not an ISO 8601 time")) from None
    if at.tzinfo is None:
        raise SystemExit(_usage("--at: give a time-zone offset, e.g. 2026-11-23T10:00:00-05:00"))
    return at


def _usage(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_CONFIG


def _explainer(directory: Directory, requested: str | None) -> str | None:
    """A user allowed to run Test Routing on the daemon: the one asked for, or the first admin."""
    if requested:
        return requested
    candidates = [
        user
        for user in directory.users
        if user.status is AccountStatus.ACTIVE
        and scope(user.role, Action.TEST_ROUTING) is not Scope.NONE
    ]
    admins = [user for user in candidates if user.role is Role.ADMIN]
    chosen = (admins or candidates or [None])[0]
    return chosen.id if chosen else None


def _fetch_live(
    settings: Settings, directory: Directory, args: argparse.Namespace, at: datetime
) -> dict[str, Any]:
    from bridge.tokens import TokenService

    who = _explainer(directory, args.as_user)
    if who is None:
        raise RuntimeError("no active user may run Test Routing; pass --as USER_ID")
    token = TokenService(settings.auth.jwt_secret).issue(who, ttl=60)
    base = args.url or f"http://{settings.http.host}:{settings.http.port}"
    query = urllib.parse.urlencode({"at": at.isoformat()})
    url = f"{base}/api/v1/lines/{urllib.parse.quote(args.line)}/route?{query}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise RuntimeError(f"daemon answered {exc.code}: {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"cannot reach the daemon at {base}: {exc}") from None


def cmd_route(args: argparse.Namespace) -> int:
    from bridge.presence.model import AssumeEveryoneAvailable
    from bridge.routing.engine import plan_route
    from bridge.routing.explain import render_dict
    from bridge.routing.model import CallRequest, Outcome

    loaded = _load(args)
    if loaded is None:
        return EXIT_CONFIG
    settings, directory = loaded
    at = _parse_at(args.at)
    if args.live:
        try:
            plan = _fetch_live(settings, directory, args, at)
        except RuntimeError as exc:
            print(f"route: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    else:
        call = CallRequest(call_id="test-routing", line=args.line)
        result = plan_route(directory, AssumeEveryoneAvailable(), call, at)
        if result.outcome is Outcome.NO_ROUTE:
            print(f"route: no line {args.line!r} in the directory", file=sys.stderr)
            return EXIT_FAILURE
        plan = result.to_dict()
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print("\n".join(render_dict(plan)))
        if not args.live:
            print("(offline: everyone assumed available and reachable; --live asks the daemon)")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from bridge.tokens import TokenService

    loaded = _load(args)
    if loaded is None:
        return EXIT_CONFIG
    settings, directory = loaded
    if directory.user(args.user_id) is None:
        print(f"token: no user {args.user_id!r} in the directory", file=sys.stderr)
        return EXIT_FAILURE
    ttl = settings.auth.token_ttl_seconds if args.ttl is None else args.ttl
    if ttl < 1:
        return _usage("--ttl: must be at least 1 second")
    print(TokenService(settings.auth.jwt_secret).issue(args.user_id, ttl=ttl))
    return EXIT_OK


def ha1_values(username: str, realm: str, password: str) -> dict[str, str]:
    """RFC 2617 / RFC 8760 HA1 = H(username:realm:password), for MD5 and SHA-256."""
    material = f"{username}:{realm}:{password}".encode()
    return {
        "ha1_md5": hashlib.md5(material, usedforsecurity=False).hexdigest(),
        "ha1_sha256": hashlib.sha256(material).hexdigest(),
    }


def cmd_hash_password(args: argparse.Namespace) -> int:
    realm = args.realm
    if realm is None:
        loaded = _load(args)
        if loaded is None:
            return EXIT_CONFIG
        realm = loaded[0].sip.realm
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"password for {args.username}@{realm}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        return _usage("hash-password: empty password on stdin")
    values = ha1_values(args.username, realm, password)
    print(f"# realm {realm}")
    print(
        f'sip: {{username: "{args.username}", ha1_md5: "{values["ha1_md5"]}", '
        f'ha1_sha256: "{values["ha1_sha256"]}"}}'
    )
    return EXIT_OK


def cmd_set_password(args: argparse.Namespace) -> int:
    """Hash a console password (argon2id) into the user's record in the directory file."""
    from bridge.directory.loader import DirectoryError, build_directory, save_directory
    from bridge.passwords import PasswordRejected, Passwords, check_policy

    loaded = _load(args)
    if loaded is None:
        return EXIT_CONFIG
    settings, directory = loaded
    user = directory.user(args.user_id)
    if user is None:
        return _usage(f"set-password: no user {args.user_id!r} in the directory")
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"new console password for {user.id}: ")
        if getpass.getpass("again: ") != password:
            return _usage("set-password: the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        check_policy(password, settings.auth.password_min_length)
    except PasswordRejected as exc:
        return _usage(f"set-password: {exc}")
    hashed = Passwords().hash(password)

    document = directory.to_document()
    for record in document.get("users", []):
        if record.get("id") == user.id:
            record["password_hash"] = hashed
    path = settings.directory_path
    try:
        # Validated whole and written atomically, as the API's changes are.
        save_directory(build_directory(document), path)
    except (DirectoryError, OSError) as exc:
        print(f"set-password: cannot write {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"password set for {user.id} in {path}")
    print(
        "a running daemon reads it after a reload (SIGHUP or POST /api/v1/directory/reload)",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    print(f"bridge {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description="Telephony bridge daemon")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the daemon")
    _config_arg(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate settings and directory, then exit")
    _config_arg(check)
    check.set_defaults(func=cmd_check_config)

    route = sub.add_parser("route", help="Test Routing: explain who would ring for a line")
    _config_arg(route)
    route.add_argument("--line", required=True, help="line number, e.g. +15550100")
    route.add_argument("--at", help="ISO 8601 time with offset (default: now)")
    route.add_argument("--json", action="store_true", help="print the plan as JSON")
    route.add_argument("--live", action="store_true", help="ask the running daemon (live presence)")
    route.add_argument(
        "--as", dest="as_user", help="with --live: the user to ask as (default: an admin)"
    )
    route.add_argument("--url", help="with --live: the daemon's base URL (default: from [http])")
    route.set_defaults(func=cmd_route)

    token = sub.add_parser("token", help="print an API token for a user")
    _config_arg(token)
    token.add_argument("user_id")
    token.add_argument(
        "--ttl", type=int, help="lifetime in seconds (default: [auth] token_ttl_seconds)"
    )
    token.set_defaults(func=cmd_token)

    hashp = sub.add_parser(
        "hash-password", help="read a password on stdin, print the SIP HA1 lines"
    )
    _config_arg(hashp)
    hashp.add_argument("username")
    hashp.add_argument("--realm", help="digest realm (default: [sip] realm from the settings)")
    hashp.set_defaults(func=cmd_hash_password)

    setp = sub.add_parser(
        "set-password",
        help="set a user's console password (prompted, or the first line of stdin)",
    )
    _config_arg(setp)
    setp.add_argument("user_id")
    setp.set_defaults(func=cmd_set_password)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
