"""The documentation and deployment files agree with the code.

README.md names every setting (and its env variable), every CLI command and every API route;
the deploy files keep their hardening; the Prometheus alerts only use metrics the daemon has.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from bridge.api.app import create_app
from bridge.cli import build_parser
from bridge.config import Settings
from bridge.observability.metrics import Metrics
from tests.conftest import REPO, Bridge

README = REPO / "README.md"
DEPLOY = REPO / "deploy"
FRAMEWORK_PATHS = {"/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"}
# Series Prometheus itself attaches to every scrape target, not exported by the daemon.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def _text(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def readme() -> str:
    return _text(README)


# -- (a) settings ----------------------------------------------------------------------------
def _settings_keys() -> list[tuple[str, str]]:
    """(section, key) of every setting; a table inside a section (`[media.rtpengine]`) is a
    section of its own, named with a dot."""
    keys = []
    sections = [
        (name, field.annotation)
        for name, field in Settings.model_fields.items()
        if name != "config_dir"
    ]
    while sections:
        section, model = sections.pop(0)
        assert isinstance(model, type) and issubclass(model, BaseModel), section
        for key, field in model.model_fields.items():
            inner = field.annotation
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                sections.append((f"{section}.{key}", inner))
            else:
                keys.append((section, key))
    return keys


SETTINGS_KEYS = _settings_keys()


def test_settings_are_found() -> None:
    assert ("http", "port") in SETTINGS_KEYS
    assert ("daemon", "drain_timeout_seconds") in SETTINGS_KEYS
    assert ("media.rtpengine", "ng") in SETTINGS_KEYS
    assert not any(section == "config_dir" for section, _ in SETTINGS_KEYS)


@pytest.mark.parametrize(
    ("section", "key"), SETTINGS_KEYS, ids=[f"{s}.{k}" for s, k in SETTINGS_KEYS]
)
def test_readme_documents_every_setting(readme: str, section: str, key: str) -> None:
    dotted = f"{section}.{key}"
    env = f"BRIDGE_{section.upper().replace('.', '__')}__{key.upper()}"
    assert re.search(rf"(?<![\w.]){re.escape(dotted)}(?![\w])", readme), f"{dotted} not in README"
    assert re.search(rf"(?<!\w){re.escape(env)}(?!\w)", readme), f"{env} not in README"


def test_readme_documents_the_config_file_variable(readme: str) -> None:
    assert "BRIDGE_CONFIG" in readme


# -- (b) CLI ---------------------------------------------------------------------------------
def _subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    raise AssertionError("bridge.cli.build_parser() has no subcommands")


SUBCOMMANDS = _subcommands()


def test_subcommands_are_found() -> None:
    assert {"run", "check-config", "route", "token", "hash-password", "version"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_readme_documents_every_subcommand(readme: str, command: str) -> None:
    assert re.search(rf"`bridge {re.escape(command)}(?![\w-])", readme), (
        f"`bridge {command}` not in README"
    )


# -- (c) API routes --------------------------------------------------------------------------
def _walk(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, frozenset[str]]]:
    """(path, methods) of every route, including those of included routers.

    Older FastAPI flattens included routers into `app.routes`; newer releases keep them as
    `_IncludedRouter` entries (with `original_router` and `include_context.prefix`)."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            context = getattr(route, "include_context", None)
            yield from _walk(original.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif getattr(route, "path", None) is not None:
            methods = frozenset(getattr(route, "methods", None) or ()) - {"HEAD"}
            yield prefix + route.path, methods


def _api_routes(bridge: Bridge) -> list[tuple[str, frozenset[str]]]:
    app = create_app(bridge.ctx)
    found = [(path, methods) for path, methods in _walk(app.routes) if path not in FRAMEWORK_PATHS]
    # The walk must see every path the OpenAPI description knows of.
    assert set(app.openapi()["paths"]) <= {path for path, _ in found}
    return found


def test_readme_documents_every_api_route(readme: str, bridge: Bridge) -> None:
    routes = _api_routes(bridge)
    assert {"/healthz", "/readyz", "/metrics", "/api/v1/lines/{number}/route"} <= {
        path for path, _ in routes
    }
    missing = [path for path, _ in routes if f"`{path}`" not in readme and path not in readme]
    assert not missing, f"API paths not in README: {missing}"
    # And each method with its path, as in the endpoint table ("`GET /api/v1/users`").
    undocumented = [
        f"{method} {path}"
        for path, methods in routes
        for method in sorted(methods)
        if f"{method} {path}`" not in readme
    ]
    assert not undocumented, f"API endpoints not in README's table: {undocumented}"


# -- (d) the two set-up commands first -------------------------------------------------------
def test_readme_starts_with_the_two_setup_commands(readme: str) -> None:
    first = [line for line in readme.splitlines() if line.strip()][:4]
    head = "\n".join(first)
    assert "make run" in head, first
    assert "make test" in head, first


# -- (e) deployment files --------------------------------------------------------------------
def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in unit.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_unit_is_hardened() -> None:
    unit = _directives(_text(DEPLOY / "bridge.service"))
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("Restart", "on-failure"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ]:
        assert value in unit.get(key, []), f"{key}={value} missing from bridge.service"
    users = unit.get("User", [])
    assert users and all(u not in ("", "root", "0") for u in users), users
    assert any("bridge run" in cmd and "--config" in cmd for cmd in unit.get("ExecStart", []))
    assert any("-HUP" in cmd for cmd in unit.get("ExecReload", []))
    # The stop timeout must cover the default drain timeout.
    stop = unit.get("TimeoutStopSec", [])
    assert stop and float(stop[-1].rstrip("s")) > Settings().daemon.drain_timeout_seconds


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    dockerfile = _text(DEPLOY / "Dockerfile")
    instructions = [line.strip() for line in dockerfile.splitlines() if line.strip()]
    users = [line.split(None, 1)[1] for line in instructions if line.upper().startswith("USER ")]
    assert users, "no USER in the Dockerfile"
    final_user = users[-1].split(":")[0]
    assert final_user not in ("root", "0"), final_user
    # The HEALTHCHECK instruction with its continuation lines.
    health = re.search(r"^HEALTHCHECK\b(?:.*\\\n)*.*$", dockerfile, re.MULTILINE)
    assert health, "no HEALTHCHECK in the Dockerfile"
    assert "/healthz" in health.group(0), "HEALTHCHECK does not call /healthz"
    assert "NONE" not in health.group(0).split()[1:2]


# -- (f) Prometheus files --------------------------------------------------------------------
PROM_FILES = sorted((DEPLOY / "prometheus").glob("*.yml"))


def test_prometheus_files_exist() -> None:
    assert {p.name for p in PROM_FILES} >= {"scrape.yml", "alerts.yml"}


@pytest.mark.parametrize("path", PROM_FILES, ids=[p.name for p in PROM_FILES])
def test_prometheus_files_parse_as_yaml(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus, which `make test` installs)",
)
def test_promtool_accepts_the_alert_rules_and_the_scrape_config() -> None:
    for command in (["check", "rules", "alerts.yml"], ["check", "config", "scrape.yml"]):
        result = subprocess.run(
            ["promtool", *command],
            cwd=DEPLOY / "prometheus",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


def test_scrape_job_targets_metrics() -> None:
    config = yaml.safe_load(_text(DEPLOY / "prometheus" / "scrape.yml"))
    jobs = config["scrape_configs"]
    assert any(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs)


def _exported_series() -> set[str]:
    """Every series name a scrape of a fresh daemon can show, even before any sample exists.

    A labelled counter with no children renders only its `# TYPE` line, so names come from
    the TYPE lines expanded by type, plus the sample lines themselves."""
    text = Metrics().render().decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            if kind == "counter":
                base = name.removesuffix("_total")
                names |= {base + "_total", base + "_created"}
            elif kind == "histogram":
                names |= {name + s for s in ("_bucket", "_count", "_sum", "_created")}
            elif kind == "summary":
                names |= {name, name + "_count", name + "_sum", name + "_created"}
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def _alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(_text(DEPLOY / "prometheus" / "alerts.yml"))
    return [
        (rule.get("alert") or rule.get("record"), str(rule["expr"]))
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: selectors (a name followed by `{` or `[`, or a bare
    name compared to a number) and anything named like ours."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    selectors = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", without_strings))
    ours = set(re.findall(r"\bbridge_[a-z0-9_]+\b", without_strings))
    return selectors | ours


def test_alerts_cover_the_operational_cases() -> None:
    exprs = "\n".join(expr for _, expr in _alert_exprs())
    assert "bridge_directory_reloads_total{" in exprs and '"refused"' in exprs
    assert "histogram_quantile" in exprs and "bridge_route_decision_seconds_bucket" in exprs
    assert "bridge_http_requests_total" in exprs and "5.." in exprs
    assert "bridge_auth_failures_total" in exprs
    assert re.search(r"\bup\b", exprs)


def test_alerts_only_use_exported_metrics() -> None:
    exported = _exported_series()
    assert "bridge_directory_reloads_total" in exported
    assert "bridge_route_decision_seconds_bucket" in exported
    unknown = {
        (alert, name)
        for alert, expr in _alert_exprs()
        for name in _metric_names(expr)
        if name not in exported and name not in PROMETHEUS_SYNTHETIC
    }
    assert not unknown, f"alerts use metrics the daemon does not export: {sorted(unknown)}"


def test_readme_lists_every_bridge_metric(readme: str) -> None:
    families = {
        re.sub(r"_(bucket|count|sum|created)$", "", name)
        for name in _exported_series()
        if name.startswith("bridge_")
    }
    missing = sorted(name for name in families if name not in readme)
    assert not missing, f"metrics not in README: {missing}"
