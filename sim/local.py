"""Loopback helpers shared by the tests, the benchmarks and the load runs: free ports, and
reading a running bridge's Prometheus metrics."""

from __future__ import annotations

import socket
import urllib.request


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (SIP listens on both; HTTP needs TCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
            with socket.socket(socket.AF_INET, other) as second:
                try:
                    second.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class MetricsScrape:
    """For a running bridge with an `http` port: its /metrics text, or one sample."""

    http: int

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, sample: str) -> float | None:
        """The value of the sample written exactly so (name and labels), or None."""
        for line in self.metrics().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return None
