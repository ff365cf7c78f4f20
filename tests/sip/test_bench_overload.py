"""bench/overload.py runs: a smoke run (`--quick`: 20 calls/s as the clean maximum, 3 s of
3 x that, 3 s of recovery) through `bridge run` with SIPp prints the burst's and the
recovery's figures and writes them. No timing is asserted (a shared machine); what is checked
is that every call offered is accounted for."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sip.peers import needs_sipp, run_bench_quick


@needs_sipp
def test_the_quick_run_accounts_for_every_call(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    output = run_bench_quick("overload.py", out)
    assert "goodput" in output and "back to normal from second" in output
    figures = json.loads(out.read_text())
    burst = figures["burst"]
    assert burst["asked"] == burst["attempted"] == 180
    assert burst["completed"] + burst["refused_503"] + burst["failed"] == burst["attempted"]
    assert burst["completed"] > 0 and burst["setup_p99_ms"] is not None
    admitted = burst["admission"].get("call:admitted", 0)
    assert admitted >= burst["completed"] - 10  # (the counters are read twice a second)
    assert figures["recovery"]["attempted"] == figures["recovery"]["asked"]


@needs_sipp
def test_the_feedback_quick_run_accounts_for_every_call_and_the_trunk_holds_back(
    tmp_path: Path,
) -> None:
    """bench/overload_feedback.py --quick: 60 calls/s offered against a limit of 20 for 3 s,
    by a trunk that honours the bridge's RFC 7339 feedback, then by one that ignores it."""
    out = tmp_path / "feedback.json"
    assert "honour against ignore" in run_bench_quick("overload_feedback.py", out)
    modes = json.loads(out.read_text())["modes"]
    for figures in modes.values():
        assert figures["offered"] == 180
        assert figures["offered"] == figures["held_back"] + figures["sent"]
        assert figures["sent"] == figures["refused"] + figures["ended"] + figures["failed"]
        assert figures["ended"] > 0
    # Ignoring, every call is sent and the limit refuses most; honouring, the feedback made
    # the trunk keep a share back itself, so the bridge was sent fewer and refused fewer.
    honour, ignore = modes["honour"], modes["ignore"]
    assert ignore["held_back"] == 0 and ignore["refused"] > 60
    assert honour["held_back"] > 30
    assert honour["refused"] < ignore["refused"]
