"""`bridge set-password USER`: the password from stdin (a prompt on a terminal) hashed into the
directory file; exit 2 with the reason for an unknown user or a refused password. And the
[auth] login settings: a bad value is exit 2 naming the field."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from argon2 import PasswordHasher

from bridge.cli import main
from bridge.config import load_settings
from bridge.directory.loader import build_directory

BRIDGE = [sys.executable, "-m", "bridge.cli"]


def stored_hash(demo_dir: Path, user_id: str) -> str | None:
    document = yaml.safe_load((demo_dir / "directory.yaml").read_text())
    return next(u for u in document["users"] if u["id"] == user_id).get("password_hash")


def set_password(
    demo_dir: Path,
    user_id: str,
    stdin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["set-password", user_id, "-c", str(demo_dir / "bridge.toml")])
    out, err = capsys.readouterr()
    return code, out, err


def test_set_password_from_stdin(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (demo_dir / "directory.yaml").read_text()
    code, out, err = set_password(demo_dir, "alice", "a-long-password\n", capsys, monkeypatch)
    assert code == 0, err
    assert out == f"password set for alice in {demo_dir / 'directory.yaml'}\n"
    assert "reload" in err
    hashed = stored_hash(demo_dir, "alice")
    assert hashed is not None and hashed.startswith("$argon2id$v=19$")
    assert PasswordHasher().verify(hashed, "a-long-password")
    text = (demo_dir / "directory.yaml").read_text()
    assert "a-long-password" not in text and "a-long-password" not in out + err
    # Only that user's password changed (the file is rewritten as the API writes it).
    old = build_directory(yaml.safe_load(before))
    new = build_directory(yaml.safe_load(text))
    changed = [u.id for u in new.users if u.password_hash != old.user(u.id).password_hash]
    assert changed == ["alice"]
    assert [
        u.model_copy(update={"password_hash": old.user(u.id).password_hash}) for u in new.users
    ] == list(old.users)
    assert (new.ring_groups, new.lines) == (old.ring_groups, old.lines)


@pytest.mark.parametrize(
    ("user_id", "stdin", "reason"),
    [
        ("nobody", "a-long-password\n", "set-password: no user 'nobody' in the directory"),
        ("alice", "short\n", "set-password: the password must be at least 10 characters"),
        ("alice", "\n", "set-password: the password must be at least 10 characters"),
        ("alice", "", "set-password: the password must be at least 10 characters"),
        ("alice", "x" * 300 + "\n", "set-password: the password must be at most 256 characters"),
    ],
)
def test_set_password_refusals_exit_2(
    demo_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    user_id: str,
    stdin: str,
    reason: str,
) -> None:
    before = (demo_dir / "directory.yaml").read_bytes()
    code, out, err = set_password(demo_dir, user_id, stdin, capsys, monkeypatch)
    assert code == 2
    assert err.strip() == reason and out == ""
    assert (demo_dir / "directory.yaml").read_bytes() == before


def test_set_password_as_a_command_with_a_pipe(demo_dir: Path) -> None:
    """The installed entry point, stdin not a terminal: the first line is the password."""
    config = str(demo_dir / "bridge.toml")
    done = subprocess.run(
        [*BRIDGE, "set-password", "bob", "-c", config],
        input="bob-password-from-a-pipe\nignored\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    hashed = stored_hash(demo_dir, "bob")
    assert hashed is not None and PasswordHasher().verify(hashed, "bob-password-from-a-pipe")
    done = subprocess.run(
        [*BRIDGE, "set-password", "ghost", "-c", config],
        input="long-enough-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "no user 'ghost'" in done.stderr


def test_the_login_settings_defaults(demo_dir: Path) -> None:
    auth = load_settings(demo_dir / "bridge.toml").auth
    assert (auth.access_ttl_seconds, auth.session_ttl_seconds) == (300, 43200)
    assert (auth.login_max_failures, auth.login_window_seconds) == (5, 900)
    assert (auth.login_lockout_seconds, auth.login_max_failures_per_ip) == (900, 50)
    assert (auth.password_min_length, auth.max_sessions_per_user) == (10, 10)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LOGIN_MAX_FAILURES", "0", "auth.login_max_failures: Input should be greater than"),
        ("ACCESS_TTL_SECONDS", "5", "auth.access_ttl_seconds: Input should be greater than"),
        ("LOGIN_LOCKOUT_SECONDS", "soon", "auth.login_lockout_seconds: Input should be a valid"),
        ("PASSWORD_MIN_LENGTH", "4", "auth.password_min_length: Input should be greater than"),
        ("MAX_SESSIONS_PER_USER", "0", "auth.max_sessions_per_user: Input should be greater"),
        ("SESSION_TTL_SECONDS", "300", "auth: access_ttl_seconds must not exceed"),
    ],
)
def test_a_bad_login_setting_exits_2_naming_the_field(
    demo_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setenv(f"BRIDGE_AUTH__{variable}", value)
    if variable == "SESSION_TTL_SECONDS":
        monkeypatch.setenv("BRIDGE_AUTH__ACCESS_TTL_SECONDS", "600")
    code = main(["check-config", "-c", str(demo_dir / "bridge.toml")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(expected), err
