"""`bridge route`, `token`, `hash-password`, `version` (offline; --live is in tests/daemon)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import jwt
import pytest

from bridge.cli import main

AT_MONDAY_10 = "2026-11-23T10:00:00-05:00"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_route_prints_a_table_with_every_member(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "route",
        "-c",
        str(demo_dir / "bridge.toml"),
        "--line",
        "+15550100",
        "--at",
        AT_MONDAY_10,
    )
    assert code == 0
    assert "Line +15550100 (Main line)" in out
    assert "open: yes" in out
    assert "Layer 1: all, all at once, timeout 20s" in out
    assert "Sam Supervisor  will_not_answer  no - will_not_answer" in out
    assert "Dave Paused" in out and "no - paused" in out
    assert "rings: alice, bob" in out
    assert "offline: everyone assumed available" in out


def test_route_json_is_the_plan(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "route",
        "-c",
        str(demo_dir / "bridge.toml"),
        "--line",
        "15550100",
        "--at",
        AT_MONDAY_10,
        "--json",
    )
    assert code == 0
    plan = json.loads(out)
    assert plan["outcome"] == "ring"
    assert plan["line"] == "+15550100"
    first = plan["layers"][0]
    assert [m["user_id"] for m in first["members"]] == ["alice", "bob", "sam"]
    assert [t["user_id"] for t in first["ring"]] == ["alice", "bob"]
    reasons = {m["user_id"]: m["reason"] for layer in plan["layers"] for m in layer["members"]}
    assert reasons["sam"] == "will_not_answer"
    assert reasons["dave"] == "paused"


def test_route_closed_line_at_night(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "route",
        "-c",
        str(demo_dir / "bridge.toml"),
        "--line",
        "+15550100",
        "--at",
        "2026-11-23T21:30:00-05:00",
        "--json",
    )
    assert code == 0
    plan = json.loads(out)
    assert plan["outcome"] == "closed" and plan["open"] is False
    assert plan["fallback"]["action"] == "voicemail"
    assert "closed" in plan["fallback"]["prompt"]


def test_route_errors(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(demo_dir / "bridge.toml")
    code, _, err = run(capsys, "route", "-c", config, "--line", "+19999999999")
    assert code == 1 and "no line '+19999999999'" in err
    with pytest.raises(SystemExit) as exc:
        main(["route", "-c", config, "--line", "+15550100", "--at", "yesterday"])
    assert exc.value.code == 2
    assert "--at: 'yesterday' is not an ISO 8601 time" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["route", "-c", config, "--line", "+15550100", "--at", "2026-11-23T10:00:00"])
    assert exc.value.code == 2
    assert "time-zone offset" in capsys.readouterr().err


def test_route_live_without_daemon_fails_cleanly(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "route",
        "-c",
        str(demo_dir / "bridge.toml"),
        "--line",
        "+15550100",
        "--live",
        "--url",
        "http://127.0.0.1:9",
    )
    assert code == 1
    assert "cannot reach the daemon" in err


def test_token_is_a_valid_jwt_for_the_user(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "token", "alice", "-c", str(demo_dir / "bridge.toml"), "--ttl", "120"
    )
    assert code == 0
    claims = jwt.decode(out.strip(), "demo-only-secret-change-me-0123456789", algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 120
    # Without --ttl: [auth] token_ttl_seconds.
    text = (
        (demo_dir / "bridge.toml")
        .read_text()
        .replace("token_ttl_seconds = 3600", "token_ttl_seconds = 900")
    )
    (demo_dir / "bridge.toml").write_text(text)
    code, out, _ = run(capsys, "token", "alice", "-c", str(demo_dir / "bridge.toml"))
    claims = jwt.decode(out.strip(), "demo-only-secret-change-me-0123456789", algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 900
    code, _, err = run(capsys, "token", "nobody", "-c", str(demo_dir / "bridge.toml"))
    assert code == 1 and "no user 'nobody'" in err
    code, _, err = run(capsys, "token", "alice", "-c", str(demo_dir / "bridge.toml"), "--ttl", "0")
    assert code == 2


def test_hash_password_prints_ha1_lines(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("desk-phone-102\n"))
    code, out, _ = run(capsys, "hash-password", "102", "-c", str(demo_dir / "bridge.toml"))
    assert code == 0
    material = b"102:bridge.local:desk-phone-102"
    assert hashlib.md5(material).hexdigest() in out
    assert hashlib.sha256(material).hexdigest() in out
    # The demo directory's hashes were made this way.
    assert "f7916c987550c27f650447b90bdda47d" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("secret\n"))
    code, out, _ = run(capsys, "hash-password", "alice", "--realm", "pbx.example.com")
    assert code == 0
    assert hashlib.md5(b"alice:pbx.example.com:secret").hexdigest() in out
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    code, _, err = run(capsys, "hash-password", "alice", "--realm", "x")
    assert code == 2 and "empty password" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "version")
    assert code == 0 and out.startswith("bridge 0.")
