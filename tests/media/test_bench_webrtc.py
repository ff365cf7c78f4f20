"""bench/webrtc.py runs: a smoke run of the embedded engine (no rtpengine) brings WebRTC legs
up (ICE, DTLS-SRTP), relays their SRTP to plain RTP callers and back, and reports its figures.
No timing is asserted: the machine is shared and noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "webrtc.py"


def test_the_quick_run_bridges_webrtc_legs_and_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "webrtc.json"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--seconds=1",
            "--no-rtpengine",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "== summary (WebRTC legs bridged to RTP, one core)" in lines
    rows = [line.split() for line in lines if line.startswith("embedded/uvloop ")]
    relay = [r for r in rows if len(r) > 5 and r[1] == "20" and r[2].isdigit()]
    assert relay, run.stdout  # the table has its step: 20 calls
    figures = json.loads(out.read_text())
    (step,) = figures["steps"]
    assert step["label"] == "embedded/uvloop" and step["calls"] == 20
    assert step["setup_up"] == 20  # every WebRTC leg came up (ICE + DTLS)
    assert step["setups_per_second"] > 0
    assert step["sent"] > 0 and step["received"] > 0  # packets went through, both ways
    assert step["lost"] == 0  # 20 calls: nothing lost, even on a busy machine
    assert step["cpu_us_per_packet"] is not None
    assert "embedded/uvloop" in figures["summary"]
