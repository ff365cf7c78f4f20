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

import ipaddress
from collections.abc import Callable

from bridge.calls.runner import CallRunner
from bridge.config import Settings
from bridge.directory.model import AccountStatus, Directory
from bridge.directory.store import DirectoryStore
from bridge.observability.metrics import Metrics
from bridge.presence.service import ReachabilityPort
from bridge.sip.b2bua import TrunkSettings
from bridge.sip.service import SipService


def build_sip(
    settings: Settings,
    *,
    store: DirectoryStore,
    reachability: ReachabilityPort,
    metrics: Metrics,
    runner: CallRunner,
) -> SipService | None:
    if not settings.sip.enabled:
        return None
    sip = SipService.from_settings(settings, lambda: store.current, reachability, metrics)
    sip.enable_calls(runner=runner, trunk=trunk_settings(settings))
    store.subscribe(forget_users_without_access(sip.forget_user))
    return sip


def trunk_settings(settings: Settings) -> TrunkSettings:
    sip = settings.sip
    return TrunkSettings(
        allow=tuple(ipaddress.ip_network(n, strict=False) for n in sip.trunk_allow),
        uri=sip.trunk_uri,
        caller_id=sip.trunk_caller_id,
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
