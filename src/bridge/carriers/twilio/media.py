"""The audio of a recording the carrier keeps (a voicemail left on a carrier call): fetched
from the carrier's media URL when a user plays it, with the account's credentials, never
stored by the bridge (docs/recordings.md).

The recording callback's `RecordingUrl` is the carrier's (`https://api.twilio.com/...`);
`<url>.wav` is its audio. With `[twilio] api_base` set (a test carrier, a region's edge), the
URL's origin is replaced by it, as for every REST request. Bounded: one try of
`timeout_seconds`, at most `max_bytes` read.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bridge.carriers.twilio.rest import RestSettings

MAX_BYTES = 64 * 1024 * 1024  # 2 hours of 8 kHz 16-bit mono is 115 MB; messages are minutes


class CarrierMediaError(Exception):
    """The carrier did not give the audio; `status` is what to answer (404, 502)."""

    def __init__(self, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RecordingMedia:
    def __init__(
        self, rest: RestSettings, *, timeout_seconds: float = 20.0, max_bytes: int = MAX_BYTES
    ) -> None:
        self.rest = rest
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes

    def media_url(self, url: str) -> str:
        """Where the WAV is: the recording URL + `.wav`, on `api_base` when one is set."""
        target = url if url.endswith(".wav") else f"{url.removesuffix('.json')}.wav"
        if self.rest.api_base:
            base, parts = urlsplit(self.rest.api_base), urlsplit(target)
            target = urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))
        return target

    async def fetch(self, url: str) -> bytes:
        """The WAV's bytes; `CarrierMediaError` when the carrier does not give them."""
        target = self.media_url(url)
        if urlsplit(target).scheme not in ("http", "https"):
            raise CarrierMediaError(f"not an http(s) media URL: {url!r}")
        auth = aiohttp.BasicAuth(self.rest.username, self.rest.password)
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(target, auth=auth, allow_redirects=True) as response,
            ):
                if response.status == 404:
                    raise CarrierMediaError("the carrier has no such recording (deleted?)", 404)
                if response.status != 200:
                    raise CarrierMediaError(f"the carrier answered {response.status}")
                data = await response.content.read(self.max_bytes + 1)
        except TimeoutError:
            raise CarrierMediaError(
                f"the carrier did not answer in {self.timeout_seconds:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise CarrierMediaError(f"the carrier cannot be reached: {exc}") from None
        if len(data) > self.max_bytes:
            raise CarrierMediaError("the recording is larger than a message can be")
        return data
