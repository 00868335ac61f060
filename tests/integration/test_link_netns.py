"""Kernel check: bulk TCP through `tc tbf` on a veth pair vs through draftlink-link at the same rate."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.procs import ManagedProcess, python_module_argv

pytestmark = [pytest.mark.netns, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
RATE_BPS = 8_000_000
NBYTES = 2_000_000  # 2 s at 8 Mbit/s per measurement
SINK_PORT = 5001

# Receiver: accept one connection, read to EOF, report the rate seen from first to last byte
# (the first read is excluded so a token-bucket burst does not inflate the figure).
SINK = r"""
import json, socket, sys, time
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as srv:
    print("ready", flush=True)
    conn, _ = srv.accept()
    with conn:
        total = first_len = 0
        first = last = 0.0
        while data := conn.recv(65536):
            now = time.monotonic()
            if not total:
                first, first_len = now, len(data)
            total += len(data)
            last = now
print(json.dumps({"bytes": total, "bps": (total - first_len) * 8 / max(last - first, 1e-9)}), flush=True)
"""

SOURCE = r"""
import socket, sys
n = int(sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    block = bytes(65536)
    sent = 0
    while sent < n:
        k = min(len(block), n - sent)
        s.sendall(block[:k])
        sent += k
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
"""


@dataclass(frozen=True)
class Pair:
    """Two namespaces joined by a veth; `a` is the sender (edge) side, `b` the receiver."""

    a: str
    b: str
    dev_a: str
    addr_b: str


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def veth_pair() -> Iterator[Pair]:
    # Per-process names so parallel runs never collide; addresses exist only inside the namespaces.
    tag = f"dl{os.getpid() % 100000}"
    pair = Pair(a=f"{tag}a", b=f"{tag}b", dev_a=f"{tag}va", addr_b="10.203.0.2")
    try:
        sh("ip", "netns", "add", pair.a)
        sh("ip", "netns", "add", pair.b)
        sh(
            "ip",
            "link",
            "add",
            pair.dev_a,
            "netns",
            pair.a,
            "type",
            "veth",
            "peer",
            "name",
            f"{tag}vb",
            "netns",
            pair.b,
        )
        sh("ip", "-n", pair.a, "addr", "add", "10.203.0.1/24", "dev", pair.dev_a)
        sh("ip", "-n", pair.b, "addr", "add", f"{pair.addr_b}/24", "dev", f"{tag}vb")
        for ns, dev in ((pair.a, pair.dev_a), (pair.b, f"{tag}vb")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in (pair.a, pair.b):  # deleting a namespace also deletes its end of the veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


def measure(pair: Pair, dial: tuple[str, int]) -> float:
    """Start the sink in `b`, push NBYTES from `a` to `dial`, return the receiver-side bits/s."""
    sink = subprocess.Popen(
        ["ip", "netns", "exec", pair.b, sys.executable, "-c", SINK, pair.addr_b, str(SINK_PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == "ready"
        source = [sys.executable, "-c", SOURCE, dial[0], str(dial[1]), str(NBYTES)]
        subprocess.run(["ip", "netns", "exec", pair.a, *source], check=True, timeout=60)
        out, _ = sink.communicate(timeout=30)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait(5)
    result = json.loads(out)
    assert result["bytes"] == NBYTES
    return float(result["bps"])


def test_relay_rate_matches_kernel_tbf(tmp_path: Path) -> None:
    with veth_pair() as pair:
        tbf = ["tc", "-n", pair.a, "qdisc", "add", "dev", pair.dev_a, "root", "tbf"]
        sh(*tbf, "rate", f"{RATE_BPS}bit", "burst", "32kb", "latency", "400ms")
        kernel = measure(pair, (pair.addr_b, SINK_PORT))
        sh("tc", "-n", pair.a, "qdisc", "del", "dev", pair.dev_a, "root")

        argv = python_module_argv(
            "link",
            *("--listen", "127.0.0.1:50052", "--upstream", f"{pair.addr_b}:{SINK_PORT}"),
            *("--uplink-bps", str(RATE_BPS), "--metrics-port", "0"),
        )
        relay = ManagedProcess(
            "link", ["ip", "netns", "exec", pair.a, *argv], env={"PYTHONPATH": str(REPO)}, log_dir=tmp_path
        )
        with relay:
            relay.wait_ready(lambda: "link listening" in relay.logs(), timeout=30)
            userspace = measure(pair, ("127.0.0.1", 50052))
            assert relay.stop() == 0, relay.logs()
    print(
        f"\ntbf {kernel / 1e6:.3f} Mbit/s, relay {userspace / 1e6:.3f} Mbit/s, "
        f"configured {RATE_BPS / 1e6:.3f} Mbit/s"
    )
    assert userspace == pytest.approx(kernel, rel=0.10)
    assert userspace == pytest.approx(RATE_BPS, rel=0.10)
