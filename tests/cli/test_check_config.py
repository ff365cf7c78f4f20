"""`bridge check-config` and `bridge run` refuse bad settings and directories the same way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main

BRIDGE = [sys.executable, "-m", "bridge.cli"]


def check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def edit_toml(demo_dir: Path, old: str, new: str) -> Path:
    path = demo_dir / "bridge.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


def edit_directory(demo_dir: Path, change: Any) -> None:
    path = demo_dir / "directory.yaml"
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_demo_config_is_valid(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(demo_dir / "bridge.toml", capsys)
    assert code == 0, err
    assert out.startswith("ok: http 127.0.0.1:8080")
    assert "10 users, 2 ring groups, 2 lines" in out
    assert out.count("\n") == 1  # a one-line summary


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port = 8080", 'port = "eighty"', "http.port: Input should be a valid integer"),
        ("port = 8080", "port = 70000", "http.port: Input should be less than or equal to 65535"),
        ("port = 8080", "port = 0", "http.port: Input should be greater than or equal to 1"),
        ("port = 5060", "port = -1", "sip.port: Input should be greater than or equal to 1"),
        (
            'host = "127.0.0.1"\nport = 8080',
            'host = "127.0.0.1"\nport = 8080\nbogus = 1',
            "http.bogus: unknown setting",
        ),
        ("[daemon]", "[nonsense]\nx = 1\n[daemon]", "nonsense: unknown setting"),
        ("port = 5060", "port = 5060\nmin_se = 60", "sip.min_se: Input should be greater"),
        (
            "port = 5060",
            "port = 5060\nudp_buffer_bytes = 1000",
            "sip.udp_buffer_bytes: Input should be greater than or equal to 65536",
        ),
        (
            "port = 5060",
            "port = 5060\nsession_expires = 100\nmin_se = 120",
            "sip: session_expires must be 0 or at least min_se",
        ),
        (
            'trunk_allow = ["127.0.0.0/8", "::1/128"]',
            'trunk_allow = ["10.0.0.0/33"]',
            "sip.trunk_allow: '10.0.0.0/33' is not an IP address or network",
        ),
        (
            'backend = "memory"',
            'backend = "etcd"',
            "state.backend: Input should be 'memory' or 'redis'",
        ),
        (
            'backend = "memory"',
            'backend = "redis"',
            "state.backend: 'redis' is not available in this build yet",
        ),
        ('format = "auto"', 'format = "xml"', "log.format: Input should be"),
        (
            'jwt_secret = "demo-only-secret-change-me-0123456789"',
            'jwt_secret = "short"',
            "auth.jwt_secret: String should have at least 16 characters",
        ),
        ('path = "directory.yaml"', 'path = "missing.yaml"', "directory.path: file not found:"),
        (
            "port = 8080",
            'port = 8080\npublic_url = "ftp://x"',
            "http.public_url: must start with http://",
        ),
        (
            'engine = "embedded"',
            'engine = "rtpengin"',
            "media.engine: Input should be 'embedded', 'rtpengine' or 'none'",
        ),
        (
            'ng = "127.0.0.1:2223"',
            'ng = "rtpengine.local:2223"',
            "media.rtpengine.ng: 'rtpengine.local:2223' is not an IP address and port",
        ),
        (
            'ng = "127.0.0.1:2223"',
            'ng = "127.0.0.1:70000"',
            "media.rtpengine.ng: port 70000 is not between 1 and 65535",
        ),
        (
            'outbox_path = "../var/events.sqlite"',
            'outbox_path = "../var/events.sqlite"\n[[events.endpoints]]\nname = "crm"\n'
            'url = "ftp://crm.example.com/hook"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"',
            "events.endpoints[0].url: 'ftp://crm.example.com/hook' is not an http:// or https://",
        ),
        (
            'outbox_path = "../var/events.sqlite"',
            'outbox_path = "../var/events.sqlite"\n[[events.endpoints]]\nname = "self"\n'
            'url = "http://localhost:8080/hook"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"',
            "events.endpoints[0].url: 'http://localhost:8080/hook' is this bridge's own HTTP",
        ),
        (
            'outbox_path = "../var/events.sqlite"',
            'outbox_path = "../var/events.sqlite"\n[[events.endpoints]]\nname = "crm"\n'
            'url = "https://crm.example.com/hook"\nsecret = "not-a-secret"',
            "events.endpoints[0].secret: must be whsec_ followed by base64",
        ),
    ],
)
def test_bad_settings_exit_2_naming_the_field(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, expected: str
) -> None:
    config = edit_toml(demo_dir, old, new)
    code, out, err = check(config, capsys)
    assert code == 2
    assert out == ""
    assert expected in err, err


def test_toml_syntax_error_and_missing_file(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = demo_dir / "broken.toml"
    broken.write_text("[http\nport = 1\n")
    code, _, err = check(broken, capsys)
    assert code == 2
    assert err.startswith("config: not valid TOML")
    code, _, err = check(demo_dir / "nope.toml", capsys)
    assert code == 2
    assert "config: file not found" in err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["ring_groups"][0]["layers"][0]["members"].append("zed"),
            "ring_groups[0].layers[0].members[3]: unknown user 'zed'",
        ),
        (
            lambda d: d["lines"][0].update(route_to={"ring_group": "nope"}),
            "lines[0].route_to.ring_group: unknown ring group 'nope'",
        ),
        (
            lambda d: d["lines"][1].update(route_to={"user": "ghost"}),
            "lines[1].route_to.user: unknown user 'ghost'",
        ),
        (
            lambda d: d["ring_groups"][1].update(
                fallback={"action": "ring_group", "ring_group": "x"}
            ),
            "ring_groups[1].fallback.ring_group: unknown ring group 'x'",
        ),
        (
            lambda d: d["users"][3].update(extension="101"),
            "users[3].extension: duplicate extension '101' (also users[2])",
        ),
        (
            lambda d: d["lines"][1].update(number="+15550100"),
            "lines[1].number: duplicate number '+15550100' (also lines[0])",
        ),
        (lambda d: d["users"][1].update(id="olivia"), "users[1].id: duplicate id 'olivia'"),
        (
            lambda d: d.update(timezone="Mars/Olympus_Mons"),
            "timezone: unknown time zone 'Mars/Olympus_Mons'",
        ),
        (
            lambda d: d["users"][4].update(timezone="America/Nowhere"),
            "users[4].timezone: unknown time zone 'America/Nowhere'",
        ),
        (
            lambda d: d["users"][2].update(phone_number="555-1234"),
            "users[2].phone_number: '555-1234' is not an E.164 number",
        ),
        (
            lambda d: d["users"][2].update(working_hours={"mon": ["09:00-25:00"]}),
            "users[2].working_hours: mon: '25:00' is not a time of day",
        ),
        (
            lambda d: d["users"][2].update(working_hours={"funday": ["09:00-17:00"]}),
            "users[2].working_hours: unknown day 'funday'",
        ),
        (lambda d: d["users"][2].update(role="overlord"), "users[2].role: Input should be"),
        (
            lambda d: d["users"][2].update(favourite_colour="blue"),
            "users[2].favourite_colour: unknown field",
        ),
        (
            lambda d: d["users"][7].update(lines=["+15559999"]),
            "users[7].lines[0]: unknown line '+15559999'",
        ),
        (
            lambda d: d["ring_groups"][0].update(fallback={"action": "forward"}),
            "ring_groups[0].fallback: action 'forward' needs a number",
        ),
        (
            lambda d: d["ring_groups"][0]["layers"][0].update(timeout_seconds=0),
            "ring_groups[0].layers[0].timeout_seconds: Input should be greater than or equal to 1",
        ),
        (
            lambda d: d["users"][3]["sip"].update(ha1_md5="not-hex"),
            "users[3].sip.ha1_md5: String should match",
        ),
    ],
)
def test_bad_directory_exits_2_naming_the_field(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], change: Any, expected: str
) -> None:
    edit_directory(demo_dir, change)
    code, out, err = check(demo_dir / "bridge.toml", capsys)
    assert code == 2
    assert out == ""
    assert expected in err, err
    # Every line names the file it comes from.
    assert all(line.startswith(str(demo_dir / "directory.yaml")) for line in err.splitlines())


def test_several_problems_are_all_reported(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_toml(demo_dir, "port = 8080", 'port = "x"')
    edit_toml(demo_dir, "port = 5060", "port = 99999")
    code, _, err = check(demo_dir / "bridge.toml", capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 2
    assert "http.port" in err and "sip.port" in err


def test_env_overrides_the_file(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_HTTP__PORT", "9090")
    monkeypatch.setenv("BRIDGE_SIP__REALM", "pbx.example.com")
    code, out, _ = check(demo_dir / "bridge.toml", capsys)
    assert code == 0
    assert "http 127.0.0.1:9090" in out and "realm pbx.example.com" in out
    monkeypatch.setenv("BRIDGE_HTTP__PORT", "ninety")
    code, _, err = check(demo_dir / "bridge.toml", capsys)
    assert code == 2
    assert "http.port: Input should be a valid integer" in err


def test_config_path_from_environment(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", str(demo_dir / "bridge.toml"))
    assert main(["check-config"]) == 0
    assert str(demo_dir / "directory.yaml") in capsys.readouterr().out


def test_bridge_run_refuses_bad_config_with_same_message(demo_dir: Path) -> None:
    edit_toml(demo_dir, "port = 8080", 'port = "eighty"')
    edit_directory(demo_dir, lambda d: d["users"][3].update(extension="101"))
    results = [
        subprocess.run(
            [*BRIDGE, cmd, "--config", str(demo_dir / "bridge.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for cmd in ("check-config", "run")
    ]
    for result in results:
        assert result.returncode == 2
        assert "http.port: Input should be a valid integer" in result.stderr
    assert results[0].stderr == results[1].stderr
    # Fix the settings: now the directory problem stops `run` too.
    edit_toml(demo_dir, 'port = "eighty"', "port = 8080")
    result = subprocess.run(
        [*BRIDGE, "run", "--config", str(demo_dir / "bridge.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "users[3].extension: duplicate extension '101'" in result.stderr


def test_env_list_that_is_not_json_is_a_config_error(
    demo_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_SIP__TRUNK_ALLOW", "10.0.0.0/8")
    code, _, err = check(demo_dir / "bridge.toml", capsys)
    assert code == 2
    assert err.startswith("sip: a BRIDGE_SIP__* variable is not valid: lists and tables are JSON")
    monkeypatch.setenv("BRIDGE_SIP__TRUNK_ALLOW", '["10.0.0.0/8", "2001:db8::/32"]')
    code, _, _ = check(demo_dir / "bridge.toml", capsys)
    assert code == 0
