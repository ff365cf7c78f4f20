"""A carrier-kept recording's audio (`bridge.carriers.twilio.media.RecordingMedia`) fetched from
a local HTTP server standing in for the carrier: the `.wav` of the recording URL, on
`api_base` when set, with the account's credentials; its refusals and silences bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bridge.carriers.twilio.media import CarrierMediaError, RecordingMedia
from bridge.carriers.twilio.rest import RestSettings

WAV = b"RIFF" + b"\0" * 40 + b"audio"


@pytest.fixture
async def carrier() -> AsyncIterator[str]:
    async def media(request: web.Request) -> web.StreamResponse:
        auth = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        if (auth.login, auth.password) != ("AC1", "token"):
            return web.Response(status=401)
        name = request.match_info["name"]
        if name == "RE404.wav":
            return web.Response(status=404)
        if name == "REslow.wav":
            await asyncio.sleep(5)
        if name == "REhuge.wav":
            return web.Response(body=b"x" * 3000, content_type="audio/wav")
        return web.Response(body=WAV, content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/2010-04-01/Accounts/AC1/Recordings/{name}", media)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def media(api_base: str, password: str = "token", **kw: float) -> RecordingMedia:
    rest = RestSettings(account_sid="AC1", username="AC1", password=password, api_base=api_base)
    return RecordingMedia(rest, **kw)  # type: ignore[arg-type]


URL = "https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1"


async def test_the_wav_of_the_recording_url_on_api_base(carrier: str) -> None:
    fetcher = media(carrier)
    assert fetcher.media_url(URL) == f"{carrier}/2010-04-01/Accounts/AC1/Recordings/RE1.wav"
    assert await fetcher.fetch(URL) == WAV


async def test_what_the_carrier_refuses_is_said(carrier: str) -> None:
    with pytest.raises(CarrierMediaError) as missing:
        await media(carrier).fetch(URL.replace("RE1", "RE404"))
    assert missing.value.status == 404
    with pytest.raises(CarrierMediaError, match="answered 401"):
        await media(carrier, password="wrong").fetch(URL)
    with pytest.raises(CarrierMediaError, match=r"did not answer in 0\.3 s"):
        await media(carrier, timeout_seconds=0.3).fetch(URL.replace("RE1", "REslow"))
    with pytest.raises(CarrierMediaError, match="larger"):
        await media(carrier, max_bytes=1000).fetch(URL.replace("RE1", "REhuge"))
    with pytest.raises(CarrierMediaError, match="cannot be reached"):
        await media("http://127.0.0.1:9").fetch(URL)
