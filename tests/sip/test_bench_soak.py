"""bench/soak.py runs: a smoke run (`--quick`: 12 s at 20 calls/s, six phones re-registering
every 4 s) through `bridge run` with SIPp samples the bridge and writes the samples and the
call and registration counts. No slope or timing is asserted (a run of seconds on a shared
machine); what is checked is that the samples hold numbers and no call or refresh failed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sip.peers import needs_sipp, run_bench_quick


@needs_sipp
def test_the_quick_run_samples_the_bridge_and_loses_no_call(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    output = run_bench_quick("soak.py", out, timeout=120)
    assert "least-squares slope" in output and "no call lost" in output
    figures = json.loads(out.read_text())
    samples = figures["samples"]
    assert len(samples) >= 3
    for sample in samples:
        for key in ("rss_mib", "fds", "tasks", "transactions", "live_calls", "registrations"):
            assert isinstance(sample[key], int | float), (key, sample)
        assert sample["rss_mib"] > 0 and sample["fds"] > 0 and sample["tasks"] >= 1
        assert sample["registrations"] == figures["users"]
    calls = figures["calls"]
    assert calls["completed"] > 0
    assert calls["failed"] == calls["unfinished"] == calls["lost"] == 0
    assert calls["attempted"] == calls["asked"] == calls["completed"]
    registrations = figures["registrations"]
    assert registrations["refreshes_started"] > 0 and registrations["failed"] == 0
    assert figures["trends"]["rss_mib"]["slope_per_hour"] is not None
