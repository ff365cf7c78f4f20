"""A finished call leaves no cyclic garbage: its objects die by reference counting.

Why it matters: the daemon's collector policy (`GarbageCollectorPolicy`) moves whatever lives
past a quarter of a second to the old generation, so garbage in reference cycles waits for the
ten-minute full collection. bench/soak.py found calls leaving about 183 objects each in cycles
(the relay's reader holding its endpoint, the app-offer callback holding the call): at 150
calls/s the sweep then froze the daemon for 1.4-3.8 s and lost hundreds of calls each time. The
call here is the benchmark's (trunk INVITE, a desk phone answers, ACK, BYE), its audio anchored.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _inproc_bench():  # bench/sip_inproc.py's harness (the same call as bench/sip_cps.py)
    spec = importlib.util.spec_from_file_location("sip_inproc", REPO / "bench" / "sip_inproc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finished_calls_leave_no_cyclic_garbage() -> None:
    inproc = _inproc_bench()
    # Without the daemon's collector policy: its ticks would collect (and freeze) what the
    # calls leave before the count below, and hide it.
    inproc.tune_garbage_collector = lambda: None
    # Nor its logging set-up (warning level, loggers cached for good): the tests after this
    # one in the same process read info lines.
    inproc.configure_logging = lambda *args, **kwargs: None

    async def scenario() -> tuple[int, int]:
        bench = inproc.Bench(10)
        await bench.start()
        try:
            for i in range(10):
                assert bench.register_phone(i, f"7{i:04d}", f"pw-7{i:04d}", 20000 + i)
            for n in range(20):  # warm-up: caches, first-call imports
                assert bench.call(-1 - n)
            await bench.drain()
            gc.collect()
            gc.disable()  # (the policy's ticks and the interpreter's own: only ours below)
            try:
                calls = 200
                for n in range(calls):
                    assert bench.call(n)
                await bench.drain()
                return gc.collect(), calls
            finally:
                gc.enable()
        finally:
            await bench.stop()

    found, calls = asyncio.run(scenario())
    assert found < calls, f"{found} objects in reference cycles after {calls} calls"
