"""The carrier rings at most ten nouns in one `<Dial>` (README, "Calls over the carrier",
limits of this build): a layer with more members rings its first ten, the others are skipped
(`carrier_leg_unreachable`), and the plan goes on as usual."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.carrier.conftest import client_for
from tests.carrier.helpers import Carrier, nouns, query_of
from tests.conftest import Bridge

LINE = "+15550300"
LIMIT = 10


def number_of(i: int) -> str:
    return f"+1555000{i:04d}"


def directory(members: int) -> dict[str, Any]:
    users = [{"id": "olivia", "name": "Olivia", "role": "admin", "answer_by": "will_not_answer"}]
    users += [
        {"id": f"u{i:02d}", "name": f"User {i}", "answer_by": "phone_number",
         "phone_number": number_of(i)}
        for i in range(1, members + 1)
    ]  # fmt: skip
    users.append({"id": "zed", "name": "Zed", "answer_by": "phone_number",
                  "phone_number": "+15550009999"})  # fmt: skip
    return {
        "timezone": "UTC",
        "users": users,
        "ring_groups": [
            {
                "id": "crowd",
                "name": "Crowd",
                "layers": [
                    {
                        "members": [f"u{i:02d}" for i in range(1, members + 1)],
                        "timeout_seconds": 20,
                    },
                    {"members": ["zed"], "timeout_seconds": 15},
                ],
                "fallback": {"action": "hangup"},
            }
        ],
        "lines": [{"number": LINE, "name": "Crowd line", "route_to": {"ring_group": "crowd"}}],
    }


@pytest.mark.parametrize("members", [LIMIT, LIMIT + 1, LIMIT + 3])
async def test_one_dial_rings_at_most_ten_numbers(
    make_bridge: Callable[..., Bridge], carrier_settings: None, members: int
) -> None:
    bridge = make_bridge(directory=directory(members))
    async with client_for(bridge) as client:
        carrier = Carrier(bridge, client)
        with capture_logs() as logs:
            call = await carrier.call(LINE)
        rung = min(members, LIMIT)
        # The layer's first ten members, in their order, and no one else.
        assert nouns(call.dial) == [("Number", number_of(i)) for i in range(1, rung + 1)]
        skipped = [e["user_id"] for e in logs if e["event"] == "carrier_leg_unreachable"]
        assert skipped == [f"u{i:02d}" for i in range(rung + 1, members + 1)]
        assert sorted(carrier.live_calls()[0]["ringing"]) == [
            f"u{i:02d}" for i in range(1, rung + 1)
        ]
        # The layer still lasts its timeout, and the next layer follows as usual.
        assert call.dial.get("timeout") == "20"
        await carrier.dial_ended(call, "no-answer")
        assert nouns(call.dial) == [("Number", "+15550009999")]
        assert query_of(call.dial.get("action", ""))["layer"] == "1"
