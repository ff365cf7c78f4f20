"""bench/overload.py runs: a smoke run (`--quick`: 20 calls/s as the clean maximum, 3 s of
3 x that, 3 s of recovery) through `bridge run` with SIPp prints the burst's and the
recovery's figures and writes them. No timing is asserted (a shared machine); what is checked
is that every call offered is accounted for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.sip.peers import needs_sipp

REPO = Path(__file__).resolve().parents[2]


@needs_sipp
def test_the_quick_run_accounts_for_every_call(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "overload.py"), "--quick", f"--json={out}"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "goodput" in run.stdout and "back to normal from second" in run.stdout
    figures = json.loads(out.read_text())
    burst = figures["burst"]
    assert burst["asked"] == burst["attempted"] == 180
    assert burst["completed"] + burst["refused_503"] + burst["failed"] == burst["attempted"]
    assert burst["completed"] > 0 and burst["setup_p99_ms"] is not None
    admitted = burst["admission"].get("call:admitted", 0)
    assert admitted >= burst["completed"] - 10  # (the counters are read twice a second)
    assert figures["recovery"]["attempted"] == figures["recovery"]["asked"]
