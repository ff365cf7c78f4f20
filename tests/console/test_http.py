"""The console's routes without a browser: what is served, with which headers, and nothing else."""

from __future__ import annotations

import re

import pytest

from bridge.console import http as console_http
from tests.conftest import Bridge


def test_the_page_is_served_without_a_token_and_with_a_strict_policy(bridge: Bridge) -> None:
    response = bridge.client.get("/console")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    # Only the bridge's own script and connections: a pasted token cannot be sent elsewhere.
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    page = response.text
    # The page's assets are the ones the router serves; no inline script (the policy forbids it).
    assert '<script type="module" src="/console/console.js"></script>' in page
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page)
    assert re.search(r'<label for="token">', page) and 'aria-live="assertive"' in page


@pytest.mark.parametrize(
    ("asset", "media_type"),
    [("console.js", "text/javascript; charset=utf-8"), ("console.css", "text/css; charset=utf-8")],
)
def test_the_assets(bridge: Bridge, asset: str, media_type: str) -> None:
    response = bridge.client.get(f"/console/{asset}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == console_http._FILES[asset]


@pytest.mark.parametrize("path", ["/console/index.html", "/console/..%2Fhttp.py", "/console/x.js"])
def test_nothing_else_is_served(bridge: Bridge, path: str) -> None:
    assert bridge.client.get(path).status_code == 404


def test_a_missing_asset_is_a_503_not_a_crash(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wheel built without the package data: the daemon runs, the console says why it cannot.
    monkeypatch.setattr(console_http, "_FILES", {})
    response = bridge.client.get("/console")
    assert response.status_code == 503
    assert response.json()["detail"] == (
        "console asset 'index.html' is not installed with this bridge"
    )
