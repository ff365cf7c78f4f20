"""Many app users, each with several sessions, answering offers by an `AnswerPolicy`.

`AppFleet` connects users x sessions (a bounded number of handshakes at a time), keeps them
connected (the clients answer the server's pings) and sums up what their offers did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.apps.client import AnswerPolicy, AppAudio, AppClient, AuthMode, CallStats, Closed


@dataclass
class FleetReport:
    connected: int = 0
    refused: list[str] = field(default_factory=list)  # why sessions could not connect
    stats: CallStats = field(default_factory=CallStats)


class AppFleet:
    def __init__(
        self,
        url: str,
        users: list[str],
        token_for: Callable[[str], str],
        *,
        sessions_per_user: int = 1,
        policy: AnswerPolicy | None = None,
        auth: AuthMode = "frame",
        connect_concurrency: int = 200,
        keep_frames: bool = False,
        audio: AppAudio | None = None,
    ) -> None:
        self.url = url
        self.audio = audio
        self.users = users
        self.token_for = token_for
        self.sessions_per_user = sessions_per_user
        self.policy = policy
        self.auth = auth
        self.connect_concurrency = connect_concurrency
        self.keep_frames = keep_frames
        self.clients: list[AppClient] = []
        self.report = FleetReport()

    async def connect(self) -> FleetReport:
        """Connect every session; those refused are counted, not raised."""
        gate = asyncio.Semaphore(self.connect_concurrency)

        async def one(user: str, index: int) -> None:
            client = AppClient(
                self.url,
                self.token_for(user),
                device=f"sim-{index}",
                auth=self.auth,
                policy=self.policy,
                keep_frames=self.keep_frames,
                audio=self.audio,
            )
            async with gate:
                try:
                    await client.connect()
                except (Closed, OSError, TimeoutError) as exc:
                    self.report.refused.append(f"{user}: {exc}")
                    return
            self.clients.append(client)
            self.report.connected += 1

        await asyncio.gather(
            *(one(user, i) for user in self.users for i in range(self.sessions_per_user))
        )
        return self.report

    def collect(self) -> FleetReport:
        stats = CallStats()
        for client in self.clients:
            stats.merge(client.stats)
        self.report.stats = stats
        return self.report

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
