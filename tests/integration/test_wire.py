"""Uplink bytes per draft block through the real processes stay at the HTTP/2 + gRPC framing floor."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from bench.runner import RequestResult, complete
from bench.wire import FrameCounts, TapRelay
from launcher.procs import free_port
from launcher.stack import Stack
from tests.integration.stack import start_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Per block on the uplink, from the protocol: one DATA frame header (9 B), the gRPC message prefix
# (5 B), the SessionRequest/DraftBlock envelope (oneof tag + length, round, payload tag + length,
# chain, more: ≤ 12 B for blocks under 16 KB), and the two WINDOW_UPDATE frames (2 × 13 B) that
# gRPC's chttp2 transport sends for each message it reads (stream + connection level; they ride in
# the same TCP write as the next block). Per request, once: the session's HEADERS, the
# CloseSession/END_STREAM frames.
PER_BLOCK_FLOOR = 9 + 5 + 12 + 2 * 13
PER_REQUEST_BYTES = 300


@pytest.fixture(scope="module")
def wired(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, TapRelay]]:
    """tiny stack with a frame-counting tap between the edge and the link; health checks every 0.3 s."""
    link_port = free_port()
    with TapRelay(("127.0.0.1", link_port)) as tap:
        edge_args = ("--cloud", f"127.0.0.1:{tap.port}", "--health-interval", "0.3")
        stacks = start_stack(
            request, tmp_path_factory.mktemp("wire"), edge_args=edge_args, link_port=link_port
        )
        stack = next(stacks)
        stack.restart_link(
            uplink_bps=0.0, delay_ms=25.0
        )  # rounds of ≥ 50 ms: a generation spans health intervals
        yield stack, tap
        next(stacks, None)


def _request(stack: Stack, tap: TapRelay, seed: int) -> tuple[RequestResult, FrameCounts]:
    body = {
        "prompt": "def add(a, b):",
        "max_tokens": 48,
        "temperature": 0.7,
        "seed": seed,
        "ignore_eos": True,
        "draftlink": {"codec": "ksqs:k=16,ell=100", "draft_len": 4},
    }
    with httpx.Client() as http:
        up0, _ = tap.snapshot()
        res = complete(http, stack.edge_url, body, stack.link_metrics_url, 120.0)
        time.sleep(0.1)
        up1, _ = tap.snapshot()
    assert res.error is None, res.error
    return res, up1.minus(up0)


def test_overhead_per_block_at_the_framing_floor(wired: tuple[Stack, TapRelay]) -> None:
    stack, tap = wired
    _request(stack, tap, seed=1)  # first session on the connection (SETTINGS, HPACK table warm-up)
    res, up = _request(stack, tap, seed=2)
    spec = res.spec
    blocks = int(spec["blocks_sent"])
    assert blocks >= 8
    assert spec["open_bytes"] > 0
    overhead = res.wire_up - spec["payload_bytes"] - spec["open_bytes"]
    assert overhead / blocks <= PER_BLOCK_FLOOR + PER_REQUEST_BYTES / blocks, (overhead / blocks, up.frames)


def test_no_liveness_or_probe_frames_during_a_generation(wired: tuple[Stack, TapRelay]) -> None:
    stack, tap = wired
    res, up = _request(stack, tap, seed=3)
    blocks = int(res.spec["blocks_sent"])
    # The generation lasts several health intervals (≥ 8 rounds × 50 ms RTT vs 0.3 s), yet no health
    # check shares the uplink while it runs. A Check request is an empty message: a 5-byte DATA frame
    # (gRPC prefix only); session messages are never that small. Checks resume once it ended.
    sizes = up.data_sizes
    last_block = max(i for i, n in enumerate(sizes) if n > 5)
    checks_during = [i for i, n in enumerate(sizes) if n == 5 and i < last_block]
    assert not checks_during, sizes
    checks_after = sum(1 for n in sizes[last_block:] if n == 5)
    assert up.frames.get("HEADERS", 0) == 1 + checks_after, up.frames  # the session's own, then checks
    assert up.frames.get("PING", 0) == 0, up.frames  # no BDP probes (keepalive is 30 s)
    assert up.frames.get("DATA", 0) <= blocks + 3, up.frames  # open + one frame per block + close
    assert up.frames.get("WINDOW_UPDATE", 0) <= 2 * blocks + 4, up.frames
