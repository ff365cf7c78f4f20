"""The console's routes: the page and its two assets, read from `static/` at start-up.

    GET /console           the page (HTML)
    GET /console/{asset}   console.js, console.css

No token is needed to load them: the page asks for one and keeps it in the tab's
sessionStorage. The headers keep the page's token where it belongs: a Content-Security-Policy
that allows only the bridge's own scripts and connections (no inline script, no third-party
origin a stolen token could be sent to), no framing, no MIME sniffing, and no caching so a
new bridge version's assets are never mixed with an old page.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(tags=["console"])

# name -> media type; nothing outside this list is served (no path handling at all).
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, bytes]:
    """The assets that are installed. A wheel carries them only when the package data lists
    `console/static/*`; without them the daemon still runs and `/console` says why (503)."""
    folder = resources.files("bridge.console") / "static"
    found = {}
    for name in ASSETS:
        try:
            found[name] = (folder / name).read_bytes()
        except OSError:
            continue
    return found


_FILES = _load()


def _serve(name: str) -> Response:
    body = _FILES.get(name)
    if body is None:
        raise HTTPException(
            status_code=503, detail=f"console asset {name!r} is not installed with this bridge"
        )
    return Response(body, media_type=ASSETS[name], headers=HEADERS)


@router.get("/console", summary="The agent and supervisor console (HTML page)")
def page() -> Response:
    return _serve("index.html")


@router.get("/console/{asset}", summary="The console's script and stylesheet")
def asset(asset: str) -> Response:
    if asset not in ASSETS or asset == "index.html":
        raise HTTPException(status_code=404, detail=f"no console asset {asset!r}")
    return _serve(asset)
