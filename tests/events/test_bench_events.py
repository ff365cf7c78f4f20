"""bench/events.py runs: a smoke run (`--quick`) persists events in the outbox, sets up SIPp
calls through `bridge run` with events on and off, and delivers stored events to a receiver;
it prints the three sections with their figures. No timing is asserted: the machine is shared
and noisy. Without SIPp (Debian sip-tester, which `make test` installs) section 2 says it was
skipped and the rest is checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "events.py"


def test_the_quick_run_prints_the_three_sections_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "events.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--split", f"--json={out}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = run.stdout
    figures = json.loads(out.read_text())

    # 1. outbox persistence: every event stored, in batches, with a rate and the loop's lag
    assert "== 1. outbox persistence" in text
    assert re.search(r"0 endpoints: median [\d,]+ events/s -> [\d.]+ x target", text)
    assert re.search(r"1 endpoint: median [\d,]+ events/s -> [\d.]+ x target", text)
    persist = figures["persist"]
    assert {run["endpoints"] for run in persist["bursts"]} == {0, 1}
    for burst in persist["bursts"]:
        assert burst["written"] == burst["events"] == burst["rows"] > 0
        assert burst["dropped"] == 0 and burst["batches"] >= 1 and burst["per_s"] > 0
        assert burst["lag"]["max"] is not None
        # one delivery row per event with the endpoint, none without
        assert burst["deliveries"] == (burst["events"] if burst["endpoints"] else 0)
    assert persist["paced"]["written"] == persist["paced"]["events"] > 0

    # 2. call set-up, events on and off
    assert "== 2. call set-up with events on and off" in text
    if shutil.which("sipp") is None:
        assert "skipped: sipp is not installed" in text
    else:
        runs = {r["mode"]: r for r in figures["calls"]["runs"]}
        assert set(runs) == {"on", "off"}
        for mode in ("on", "off"):
            assert runs[mode]["succeeded"] > 0, runs[mode]
            assert runs[mode]["setup_p50_ms"] is not None
            assert runs[mode]["setup_p99_ms"] is not None
        assert runs["on"]["events_rows"] > 0  # the calls' events are in the outbox
        assert runs["on"]["events_written_total"] >= runs["on"]["events_rows"]
        assert runs["on"]["receiver"]["received"] > 0 and runs["on"]["receiver"]["bad"] == 0
        assert runs["off"]["events_rows"] is None  # no outbox: events effectively off
        for mode in ("on", "off"):
            if runs[mode]["setup_source"] == "wire":  # (AF_PACKET: root or CAP_NET_RAW)
                # --split: the bridge's shares and the phone's, each leg paired with its own
                split = runs[mode]["split_ms"]
                assert set(split) == {"bridge_invite", "bridge_answer", "phone"}, split
                assert all(0 <= p50 <= p99 for p50, p99 in split.values()), split
        if runs["on"]["setup_source"] == "wire":
            assert "the bridge: INVITE in -> out p50" in text
        assert re.search(r"on - off: set-up p50 [\d.]+ ms -> [\d.]+ ms", text)

    # 3. delivery throughput: every stored event delivered once, signed
    assert "== 3. delivery throughput" in text
    deliveries = figures["deliver"]["runs"]
    assert [d["concurrency"] for d in deliveries] == [8, 32]
    for delivery in deliveries:
        assert delivery["complete"] and delivery["delivered"] == delivery["events"] > 0
        assert delivery["unique"] == delivery["events"] and delivery["bad"] == 0
        assert delivery["verified"] == delivery["received"]
        assert delivery["per_s"] > 0
    assert re.search(r"concurrency 32 / 8: [\d.]+ x the deliveries per second", text)
