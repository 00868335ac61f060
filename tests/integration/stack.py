"""Integration harness: a real cloud (+ link) + edge stack on free ports, logs printed when a test fails.

Process launch itself lives in launcher.stack (shared with `make run` and the benchmark); this
module adds what tests need: tiny models, fast settings, metrics scraping and condition polling.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.procs import ProcessFailedError
from launcher.stack import Stack, StackConfig

# One torch thread per process: three processes share this machine's few cores.
TEST_ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def start_stack(
    request: pytest.FixtureRequest, tmp_path: Path, edge_args: tuple[str, ...] = (), **kw: Any
) -> Iterator[Stack]:
    """Generator body of a module-scoped fixture: start, yield, stop; dump logs if a test failed."""
    cfg = StackConfig(
        models="tiny",
        uplink_bps=0.0,  # the relay runs but does not shape: tests measure behaviour, not bandwidth
        delay_ms=0.0,
        edge_args=("--threads", "1", "--health-interval", "0.5", *edge_args),
        env=dict(TEST_ENV),
        log_dir=tmp_path,
        ready_timeout=kw.pop("ready_timeout", 120.0),
        **kw,
    )
    stack = Stack(cfg)
    failed_before = request.session.testsfailed
    try:
        stack.start()
    except ProcessFailedError as exc:
        pytest.fail(f"draftlink stack did not start: {exc}\n{stack.logs()}")
    try:
        yield stack
    finally:
        codes = stack.stop()
        if request.session.testsfailed > failed_before:
            report(request, f"exit codes {codes}\n{stack.logs()}")


def report(request: pytest.FixtureRequest, text: str) -> None:
    """Write straight to the terminal (shown even for module-teardown output)."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        print(text)
        return
    tr.write_sep("=", f"draftlink process logs ({request.node.nodeid})")
    tr.write_line(text)


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> None:
    """Poll a condition (no sleep-as-synchronisation); fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or cond}")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(url: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (labels as written by prometheus_client)."""
    out: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def metric(url: str, name: str) -> float:
    return scrape(url).get(name, 0.0)
