"""App clients of the bridge's WebSocket gateway: one session (`AppClient`), many (`load`)."""

from sim.apps.client import AnswerPolicy, AppClient, CallStats, Closed

__all__ = ["AnswerPolicy", "AppClient", "CallStats", "Closed"]
