"""Wiring of the SIP path (like a Wazo plugin's `plugin.py`): what it depends on, passed in
explicitly; what the rest of the daemon uses of it, returned.

- `build_sip(...)` in `bridge.context.build_context`: the `SipService` (registrar, B2BUA on the
  call runner, trunk registration) when `[sip] enabled`, subscribed to directory changes so a
  deleted or suspended user's desk phones are dropped at once;
- the daemon starts it on a `SipEndpoint` (`bridge.daemon`) and stops it at shutdown.

The SIP path has no HTTP routes of its own: its state shows in Test Routing (`can receive
calls`), `/readyz` (the trunk registration) and `/metrics`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

from bridge.calls.ports import MediaPort
from bridge.calls.runner import CallRunner
from bridge.config import Settings
from bridge.directory.model import AccountStatus, Directory
from bridge.directory.store import DirectoryStore
from bridge.media.engine import EmbeddedMedia
from bridge.media.ng import NgClient
from bridge.media.ports import PortPool
from bridge.media.prompts import beep, resolve_prompt_async
from bridge.media.rtpengine import RtpengineMedia
from bridge.observability.metrics import Metrics
from bridge.presence.service import ReachabilityPort
from bridge.sip.b2bua import MessageStore, SipMediaOptions, TrunkSettings
from bridge.sip.service import SipService
from bridge.sip.sources import parse_trunk_source


def build_sip(
    settings: Settings,
    *,
    store: DirectoryStore,
    reachability: ReachabilityPort,
    metrics: Metrics,
    runner: CallRunner,
    messages: MessageStore | None = None,
) -> SipService | None:
    if not settings.sip.enabled:
        return None
    sip = SipService.from_settings(settings, lambda: store.current, reachability, metrics)
    media = settings.media
    sip.enable_calls(
        runner=runner,
        trunk=trunk_settings(settings),
        media=media_engine(settings, metrics) if media.engine == "embedded" else None,
        media_options=SipMediaOptions(
            voicemail_max_seconds=media.voicemail_max_seconds,
            voicemail_silence_seconds=media.voicemail_silence_seconds,
            confirm_timeout_seconds=settings.twilio.confirm_timeout_seconds,
        ),
        prompts=PromptLibrary(settings.config_dir, settings.recordings_path.parent / "prompts"),
        messages=messages,
        relay=rtpengine_relay(settings) if media.engine == "rtpengine" else None,
    )
    store.subscribe(forget_users_without_access(sip.forget_user))
    return sip


def media_engine(
    settings: Settings, metrics: Metrics
) -> Callable[[asyncio.AbstractEventLoop], MediaPort]:
    """The embedded engine of `[media]`, made on the daemon's loop when SIP starts."""
    media = settings.media

    def make(loop: asyncio.AbstractEventLoop) -> MediaPort:
        pool = PortPool(media.address, media.port_min, media.port_max)
        engine = EmbeddedMedia(
            pool,
            advertised_address=media.advertised_address,
            clock=loop.time,
            loop=loop,
            timeout_seconds=media.timeout_seconds,
            connect_timeout_seconds=media.webrtc_connect_seconds,
        )
        metrics.watch_media(engine)
        return engine

    return make


def rtpengine_relay(settings: Settings) -> Callable[[], RtpengineMedia]:
    """The rtpengine of `[media.rtpengine]` (its ng socket opened when SIP starts). Its own
    `--interface` sets the address in its SDP (a public one behind NAT): not ours."""
    rtpengine = settings.media.rtpengine

    def make() -> RtpengineMedia:
        host, port = rtpengine.address
        client = NgClient(host, port, timeout=rtpengine.timeout_seconds, retries=rtpengine.retries)
        # one prefix per daemon start: calls of an earlier run still in rtpengine never clash
        return RtpengineMedia(client, call_prefix=f"bridge-{secrets.token_hex(3)}-")

    return make


class PromptLibrary:
    """The SIP path's prompts (`bridge.sip.b2bua.Prompts`): a `voicemail_prompt` setting as a
    WAV file or text spoken by espeak-ng (rendered once, cached under `cache_dir`), else the
    stock prompts shipped with the package; never silence, never an error."""

    def __init__(self, config_dir: Path, cache_dir: Path) -> None:
        self.config_dir = config_dir
        self.cache_dir = cache_dir

    async def voicemail_greeting(self, spec: str | None) -> bytes:
        greeting = await resolve_prompt_async(
            spec, config_dir=self.config_dir, cache_dir=self.cache_dir, default="voicemail"
        )
        return greeting.pcm + bytes(2400) + beep().pcm  # 150 ms, then the tone

    async def announcement(self, spec: str) -> bytes:
        prompt = await resolve_prompt_async(
            spec, config_dir=self.config_dir, cache_dir=self.cache_dir, default="unavailable"
        )
        return prompt.pcm

    async def confirm(self) -> bytes:
        prompt = await resolve_prompt_async(
            None, config_dir=self.config_dir, cache_dir=self.cache_dir, default="confirm"
        )
        return prompt.pcm


def trunk_settings(settings: Settings) -> TrunkSettings:
    sip = settings.sip
    return TrunkSettings(
        allow=tuple(parse_trunk_source(n) for n in sip.trunk_allow),
        uri=sip.trunk_uri,
        caller_id=sip.trunk_caller_id,
        overload_control=sip.trunk_overload_control,
        username=sip.trunk_username,
        password=sip.trunk_password,
    )


def forget_users_without_access(
    forget_user: Callable[[str], None],
) -> Callable[[Directory, Directory | None], None]:
    """A directory listener: a deleted user's desk-phone registrations are dropped, and so are
    a suspended user's (their phones stop ringing at once; they must register again once
    active)."""

    def on_change(new: Directory, old: Directory | None) -> None:
        if old is None:
            return
        for gone in old.users_by_id.keys() - new.users_by_id.keys():
            forget_user(gone)
        for user in new.users:
            if user.status is AccountStatus.SUSPENDED:
                forget_user(user.id)

    return on_change
