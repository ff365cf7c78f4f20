"""bench/media.py runs: a smoke run of the embedded engine (no rtpengine) relays packets and
reports its figures. No timing is asserted: the machine is shared and noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "media.py"

RELAY_FIELDS = {
    "sent",
    "received",
    "lost",
    "lost_pct",
    "pdv_p99_ms",
    "d_p99_ms",
    "transit_p50_ms",
    "cpu_s",
    "cpu_us_per_packet",
    "gen_cpu_share",
    "passed",
}


def test_the_quick_run_relays_packets_and_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "media.json"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--seconds=1",
            "--no-rtpengine",
            "--loops=uvloop",
            "--mix-calls=5",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "== summary (relay)" in run.stdout
    figures = json.loads(out.read_text())
    steps = figures["steps"]
    relay = [s for s in steps if s["mode"] == "relay" and s["calls"] == 20]
    assert len(relay) == 1 and relay[0]["label"] == "embedded/uvloop"
    step = relay[0]
    assert step.keys() >= RELAY_FIELDS
    assert step["sent"] > 0 and step["received"] > 0  # packets went through the engine
    assert 0 <= step["lost"] <= step["sent"]
    assert step["cpu_us_per_packet"] is not None
    mixed = {s["mode"]: s for s in steps if s["calls"] == 5}
    assert set(mixed) == {"relay", "mix2", "mix3"}
    for mode in ("mix2", "mix3"):
        assert mixed[mode]["engine_in"] > 0  # the mixer's legs received packets
        assert mixed[mode]["ticks"] > 0 and mixed[mode]["tick_us"] is not None
        assert mixed[mode]["received"] > 0  # and sent mixed frames back
    assert "embedded/uvloop" in figures["summary"]
