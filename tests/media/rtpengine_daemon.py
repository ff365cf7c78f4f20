"""A real rtpengine 10.5 for tests (Debian `rtpengine-daemon`, which `make test` installs):
userspace only (`--table=-1`), in the foreground, no config file, its own ng port and a small
free port range on loopback, `--delete-delay=0`, pcap recording into the test's directory,
DTMF events logged to a UDP port of the test; stopped on exit (SIGTERM, then SIGKILL after
5 s)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARY = os.environ.get("RTPENGINE", "/usr/bin/rtpengine")
HOST = "127.0.0.1"
PORTS = 60  # rtpengine's media range (even/odd pairs, a branch takes 2-4)

needs_rtpengine = pytest.mark.skipif(
    shutil.which(BINARY) is None,
    reason=f"rtpengine is not installed ({BINARY}; Debian package rtpengine-daemon, "
    "which `make test` installs)",
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_range(size: int) -> int:
    """The first port of `size` consecutive free UDP ports (checked by binding them all)."""
    for _ in range(50):
        base = free_udp_port() & ~1
        if base + size > 65535:
            continue
        held = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {size} consecutive free UDP ports")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    ng_port: int
    recording_dir: Path
    dtmf_port: int
    log: Path


@contextlib.contextmanager
def running_rtpengine(tmp: Path, ports: int = PORTS) -> Iterator[Daemon]:
    """An rtpengine on loopback for the `with` block (see the module doc)."""
    recordings = tmp / "spool"
    recordings.mkdir()
    ng_port, dtmf_port = free_udp_port(), free_udp_port()
    base = free_range(ports)
    log = tmp / "rtpengine.log"
    command = [
        BINARY,
        "--config-file=none",
        "--table=-1",
        "--foreground",
        f"--interface={HOST}",
        f"--listen-ng={HOST}:{ng_port}",
        f"--port-min={base}",
        f"--port-max={base + ports - 1}",
        "--delete-delay=0",
        "--num-threads=2",
        "--log-stderr",
        "--log-level=6",
        f"--recording-dir={recordings}",
        "--recording-method=pcap",
        f"--dtmf-log-dest={HOST}:{dtmf_port}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        deadline = time.monotonic() + 10
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(0.2)
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"rtpengine did not start: {log.read_text()[-2000:]}")
                probe.sendto(b"probe d7:command4:pinge", (HOST, ng_port))
                with contextlib.suppress(OSError):
                    if probe.recv(1000).startswith(b"probe "):
                        break
        yield Daemon(proc, ng_port, recordings, dtmf_port, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
