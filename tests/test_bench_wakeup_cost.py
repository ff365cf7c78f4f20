"""bench/wakeup_cost.py runs and prints its ratios (a smoke test: it asserts no figure)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "wakeup_cost.py"


def test_wakeup_cost_prints_one_ratio_per_sleep_pattern() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--units", "400", "--core", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^continuous: [\d.]+ us of CPU per unit$", done.stdout, re.M)
    ratios = re.findall(r"\(([\d.]+) x continuous\)", done.stdout)
    assert len(ratios) == 4 and all(float(r) > 0 for r in ratios)
