"""Exact resume through real processes: kill -9 the cloud or the link mid-stream, lose one of two clouds;
then 32 clients for a minute on the same stack.

Every request is seeded and both sides key their randomness by (seed, absolute position), so a
stream that lost its cloud session and was resumed must produce exactly the tokens of the same
request run without interruption. The client must see one uninterrupted stream (no error event).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.stack import Stack
from tests.integration.stack import metric, start_stack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

N = 8
# Loaded CI machines take tens of seconds to restart a cloud (torch import): the resume window
# must outlast that; the request deadline outlasts the window.
EDGE_ARGS = ("--max-concurrency", "40", "--resume-timeout", "240", "--request-timeout", "600")
CLOUD_ARGS = ("--max-sessions", "40")


def request_body(i: int) -> dict[str, Any]:
    """Seeded streams of every kind: serial rounds, streamed rounds (pipeline), cloud-only (Generate)."""
    kind = {3: {"mode": "cloud-only"}, 1: {"pipeline": True}}.get(i % 4, {})
    return {
        "prompt": f"Stream {i}: the quick brown fox",
        "max_tokens": 64,
        "temperature": 0.9,
        "seed": 1000 + i,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
        "draftlink": kind,
    }


@dataclass
class Stream:
    """One streaming completion read on its own thread."""

    i: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    resumes: int | None = None
    status: int = 0
    started: threading.Event = field(default_factory=threading.Event)  # first token arrived
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, url: str) -> None:
        try:
            with (
                httpx.Client(timeout=600) as client,
                client.stream("POST", f"{url}/v1/completions", json=request_body(self.i)) as r,
            ):
                self.status = r.status_code
                for line in r.iter_lines():
                    self._event(line.removeprefix("data: "))
        except Exception as exc:  # reported by the test, never swallowed
            self.errors.append(repr(exc))
        finally:
            self.started.set()
            self.done.set()

    def _event(self, data: str) -> None:
        if not data or data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            self.errors.append(event["error"])
            return
        choice = event["choices"][0]
        self.text += choice.get("text") or ""
        self.started.set()
        if "token_ids" in choice:
            self.token_ids = choice["token_ids"]
        if "metrics" in event:
            self.resumes = event["metrics"]["speculative_decoding"]["resumes"]


def run_streams(url: str, fault: Callable[[], None] | None = None) -> tuple[list[Stream], set[int]]:
    """N concurrent seeded streams; `fault` runs once every stream has produced a token.

    Returns the streams and the indices that were still running when the fault began.
    """
    streams = [Stream(i) for i in range(N)]
    threads = [threading.Thread(target=s.run, args=(url,), daemon=True) for s in streams]
    for t in threads:
        t.start()
    live: set[int] = set()
    if fault is not None:
        for s in streams:
            assert s.started.wait(300), f"stream {s.i} produced no token"
        live = {s.i for s in streams if not s.done.is_set()}
        fault()
    for t in threads:
        t.join(900)
    assert all(s.done.is_set() for s in streams)
    return streams, live


def check_exact(streams: list[Stream], reference: list[Stream], live: set[int]) -> None:
    for s, ref in zip(streams, reference, strict=True):
        assert (s.status, s.errors) == (200, []), s.i
        assert s.token_ids == ref.token_ids, f"stream {s.i}: tokens differ from the uninterrupted run"
        assert s.text == ref.text
        assert s.resumes in (0, 1)
    assert sum(s.resumes or 0 for s in streams) >= 1, "no stream was resumed: the fault came too late"
    assert all(s.resumes == 0 for s in streams if s.i not in live)


def reference_run(stack: Stack) -> list[Stream]:
    streams, _ = run_streams(stack.edge_url)
    for s in streams:
        assert (s.status, s.errors, len(s.token_ids), s.resumes) == (200, [], 64, 0), s.i
    return streams


def resumes_total(stack: Stack) -> float:
    return metric(f"{stack.edge_url}/metrics", "draftlink_resumes_total")


def health(stack: Stack) -> int:
    return httpx.get(f"{stack.edge_url}/health", timeout=5).status_code


# ── one cloud behind the link: kill and restart either ───────────────────────────────────────


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(
        request,
        tmp_path_factory.mktemp("resume"),
        edge_args=EDGE_ARGS,
        cloud_args=CLOUD_ARGS,
        ready_timeout=300.0,
    )


def print_resume_times(stack: Stack, what: str) -> None:
    """The edge's own account of each resume (seen with -s; the figures for the closing notes)."""
    times = [float(t) for t in re.findall(r"resumed on \S+ after ([0-9.]+)s", stack.edge.logs(200_000))]
    if times:
        print(f"{what}: {len(times)} resumes so far, {min(times):.2f}-{max(times):.2f} s after the failure")


@pytest.fixture(scope="module")
def reference(stack: Stack) -> list[Stream]:
    return reference_run(stack)


def test_cloud_killed_and_restarted_mid_stream(stack: Stack, reference: list[Stream]) -> None:
    before = resumes_total(stack)

    def kill_and_restart() -> None:
        assert stack.cloud.proc is not None
        stack.cloud.proc.kill()  # SIGKILL: no drain, every connection reset
        stack.cloud.proc.wait(10)
        stack.restart_cloud()

    streams, live = run_streams(stack.edge_url, kill_and_restart)
    check_exact(streams, reference, live)
    assert resumes_total(stack) - before == sum(s.resumes or 0 for s in streams)
    print_resume_times(stack, "cloud kill -9 + restart")
    wait_for(lambda: health(stack) == 200, timeout=30, what="edge healthy after the restart")


def test_new_requests_work_right_after_a_cloud_restart(stack: Stack) -> None:
    """No reconnect backoff left over: the first request after the cloud is back succeeds."""
    assert stack.cloud.proc is not None
    stack.cloud.proc.kill()
    stack.cloud.proc.wait(10)
    stack.restart_cloud()  # returns once the new cloud reports SERVING
    r = httpx.post(f"{stack.edge_url}/v1/completions", json={"prompt": "x", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text


def test_link_killed_and_restarted_mid_stream(stack: Stack, reference: list[Stream]) -> None:
    def kill_and_restart() -> None:
        assert stack.link is not None
        assert stack.link.proc is not None
        stack.link.proc.kill()
        stack.link.proc.wait(10)
        stack.restart_link(uplink_bps=0.0, delay_ms=0.0)

    streams, live = run_streams(stack.edge_url, kill_and_restart)
    check_exact(streams, reference, live)
    print_resume_times(stack, "link kill -9 + restart")


# ── load: 32 clients for a minute (edge --max-concurrency and cloud --max-sessions 40) ──────────

LOAD_CLIENTS, LOAD_SECONDS, WARM_SECONDS = 32, 60.0, 15.0
RSS_GROWTH_MIB = 48  # measured: ~1 MiB over the minute for edge and cloud alike


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _load_client(url: str, k: int, until: float, outcomes: list[str]) -> None:
    """Back-to-back seeded completions, streaming and not, until `until`; one outcome each."""
    n = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        while time.monotonic() < until:
            n += 1
            stream = n % 2 == 0
            body = {
                "prompt": f"client {k} request {n}",
                "max_tokens": 8,
                "seed": k * 100_000 + n,
                "stream": stream,
            }
            try:
                r = client.post("/v1/completions", json=body)
                ok = r.status_code == 200 and '"error"' not in r.text
                ok = ok and (not stream or r.text.rstrip().endswith("data: [DONE]"))
                outcomes.append("ok" if ok else f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                outcomes.append(repr(exc))


def test_32_clients_for_a_minute(stack: Stack) -> None:
    wait_for(lambda: health(stack) == 200, timeout=60, what="a healthy stack")
    procs = {"edge": stack.edge.proc, "cloud": stack.cloud.proc}
    pids = {name: p.pid for name, p in procs.items() if p is not None}
    outcomes: list[str] = []
    until = time.monotonic() + LOAD_SECONDS
    threads = [
        threading.Thread(target=_load_client, args=(stack.edge_url, k, until, outcomes), daemon=True)
        for k in range(LOAD_CLIENTS)
    ]
    for t in threads:
        t.start()
    time.sleep(WARM_SECONDS)  # pools, caches and buffers fill up first
    warm = {name: _rss_mib(pid) for name, pid in pids.items()}
    for t in threads:
        t.join(LOAD_SECONDS + 180)
    end = {name: _rss_mib(pid) for name, pid in pids.items()}
    errors = [o for o in outcomes if o != "ok"]
    rss = ", ".join(f"{n} {warm[n]:.0f} -> {end[n]:.0f} MiB" for n in pids)
    print(f"load: {len(outcomes)} requests from {LOAD_CLIENTS} clients, {len(errors)} errors; RSS {rss}")
    assert not errors, f"{len(errors)} of {len(outcomes)} failed: {errors[:3]}"
    assert len(outcomes) >= LOAD_CLIENTS  # every client completed requests
    for name in pids:
        assert end[name] - warm[name] < RSS_GROWTH_MIB, f"{name} RSS {warm[name]:.0f} -> {end[name]:.0f} MiB"
    wait_for(lambda: metric(f"{stack.edge_url}/metrics", "draftlink_running_requests") == 0, what="edge idle")
    wait_for(lambda: metric(stack.cloud_metrics_url, "draftlink_running_sessions") == 0, what="cloud idle")


# ── two cloud targets: the first dies for good ─────────────────────────────────────────────────


@pytest.fixture(scope="module")
def two_clouds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(
        request,
        tmp_path_factory.mktemp("two-clouds"),
        edge_args=EDGE_ARGS,
        cloud_args=CLOUD_ARGS,
        link=False,
        extra_clouds=1,
        ready_timeout=300.0,
    )


def test_first_of_two_clouds_dies_for_good(two_clouds: Stack) -> None:
    stack = two_clouds
    reference = reference_run(stack)
    second = f"http://{stack.cfg.host}:{stack.extra_ports[0][1]}/metrics"

    def kill_first() -> None:
        assert stack.cloud.proc is not None
        stack.cloud.proc.kill()
        stack.cloud.proc.wait(10)

    streams, live = run_streams(stack.edge_url, kill_first)
    check_exact(streams, reference, live)
    assert health(stack) == 200  # one healthy target is enough
    finished_before = metric(second, 'draftlink_sessions_total{outcome="finished"}')
    r = httpx.post(f"{stack.edge_url}/v1/completions", json={"prompt": "y", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text
    wait_for(
        lambda: metric(second, 'draftlink_sessions_total{outcome="finished"}') > finished_before,
        what="the new request served by the second cloud",
    )
    assert f"resumed on {stack.cfg.host}:{stack.extra_ports[0][0]}" in stack.edge.logs(5000)
