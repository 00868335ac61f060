"""Concurrency pass (issue 10): N clients at once over one or more edges against one cloud."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.grid import Profile
from bench.runner import Prompt, RequestResult, aggregate, complete
from bench.stats import percentile
from launcher.stack import Stack

# cloud histograms read when present (the batched engine adds them); anything with "queue" too
BATCH_HISTOGRAMS = ("draftlink_batch_sessions", "draftlink_batch_tokens")


Hist = dict[str, Any]  # {"buckets": {le: cumulative count}, "sum": float, "count": float}


def scrape_histograms(url: str) -> dict[str, Hist]:
    """Histogram families of a Prometheus endpoint that describe batching and queueing."""
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, Hist] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram" or not (fam.name in BATCH_HISTOGRAMS or "queue" in fam.name):
            continue
        h: Hist = {"buckets": {}, "sum": 0.0, "count": 0.0}
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                le = s.labels["le"]
                h["buckets"][le] = h["buckets"].get(le, 0.0) + s.value
            elif s.name.endswith("_sum"):
                h["sum"] += s.value
            elif s.name.endswith("_count"):
                h["count"] += s.value
        out[fam.name] = h
    return out


def histogram_delta(before: dict[str, Hist], after: dict[str, Hist]) -> dict[str, Any]:
    """What each histogram gained during a level: count, mean, p50/p95 (bucket upper bounds), buckets."""
    out: dict[str, Any] = {}
    for name, h in after.items():
        b = before.get(name, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = h["count"] - b["count"]
        if count <= 0:
            continue
        buckets = {le: h["buckets"][le] - b["buckets"].get(le, 0.0) for le in h["buckets"]}
        ordered = sorted(buckets.items(), key=lambda kv: math.inf if kv[0] == "+Inf" else float(kv[0]))

        def q(p: float, ordered: list[tuple[str, float]] = ordered, count: float = count) -> str | None:
            return next((le for le, c in ordered if c >= p * count), None)

        out[name] = {
            "count": count,
            "mean": (h["sum"] - b["sum"]) / count,
            "p50": q(0.5),
            "p95": q(0.95),
            "buckets": dict(ordered),
        }
    return out


def _level(
    stack: Stack,
    profile: Profile,
    prompts: Sequence[Prompt],
    clients: int,
    body: Callable[[Prompt], dict[str, Any]],
) -> tuple[list[RequestResult], float]:
    """`clients` threads (spread over the edges) drain a shared queue of requests; returns results, wall."""
    n = clients * profile.requests_per_client
    queue: deque[Prompt] = deque(prompts[k % len(prompts)] for k in range(n))
    results: list[RequestResult] = []
    lock, gate = threading.Lock(), threading.Barrier(clients)
    urls = stack.edge_urls

    def client(i: int) -> None:
        with httpx.Client() as http:
            gate.wait()
            while True:
                with lock:
                    if not queue:
                        return
                    prompt = queue.popleft()
                r = complete(http, urls[i % len(urls)], body(prompt), None, 1800.0)
                r.index, r.domain = prompt.index, prompt.domain
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.monotonic() - start


def level_row(
    clients: int, results: list[RequestResult], wall: float, hist: dict[str, Any]
) -> dict[str, Any]:
    """Aggregate tokens/s, latency percentiles, fairness and the cloud's batching during one level."""
    ok = [r for r in results if r.error is None]
    tokens = sum(r.completion_tokens for r in ok)
    per_req = [r.completion_tokens / r.seconds for r in ok if r.seconds > 0]
    latencies = [r.seconds for r in ok]
    row = aggregate(results, None)
    row.update(
        {
            "pass": "concurrency",
            "concurrency": clients,
            "wall_s": wall,
            "aggregate_tokens_per_s": tokens / wall if wall > 0 else None,
            "latency_p50_s": percentile(latencies, 50),
            "latency_p95_s": percentile(latencies, 95),
            "request_tokens_per_s_min": min(per_req) if per_req else None,
            "request_tokens_per_s_max": max(per_req) if per_req else None,
            "fairness_max_over_min": max(per_req) / min(per_req) if per_req and min(per_req) > 0 else None,
            "cloud_histograms": hist,
        }
    )
    return row


def run_level(
    stack: Stack,
    profile: Profile,
    prompts: Sequence[Prompt],
    clients: int,
    body: Callable[[Prompt], dict[str, Any]],
) -> dict[str, Any]:
    """One level: `clients` at once, with what the cloud's batch histograms gained meanwhile."""
    before = scrape_histograms(stack.cloud_metrics_url)
    results, wall = _level(stack, profile, prompts, clients, body)
    return level_row(
        clients, results, wall, histogram_delta(before, scrape_histograms(stack.cloud_metrics_url))
    )


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def run_concurrency(
    stack: Stack, profile: Profile, prompts: Sequence[Prompt], say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One row per concurrency level; speed-ups are relative to the first level (usually 1 client)."""
    from bench.sweep import body as make_body

    method, temp = profile.concurrency_method, profile.temperatures[0]
    rows: list[dict[str, Any]] = []
    for clients in profile.concurrency:
        row = run_level(stack, profile, prompts, clients, lambda p: make_body(method, p, temp, profile))
        row.update(
            {
                "method": method,
                "temperature": temp,
                "rate_bps": profile.concurrency_rate_bps,
                "delay_ms": profile.delays_ms[0],
                "schedule": None,
                "draft_len": profile.draft_len,
                "edges": len(stack.edge_urls),
            }
        )
        base = rows[0] if rows else row
        for key, ref in (("speedup", "aggregate_tokens_per_s"), ("p95_vs_first", "latency_p95_s")):
            row[key] = row[ref] / base[ref] if row.get(ref) and base.get(ref) else None
        rows.append(row)
        say(
            f"[concurrency] {clients} clients: {_g(row['aggregate_tokens_per_s'])} tok/s aggregate "
            f"({_g(row['speedup'])}×), p50 {_g(row['latency_p50_s'])} s, p95 {_g(row['latency_p95_s'])} s, "
            f"fairness {row['fairness_max_over_min']}, errors {row['errors']}"
        )
    return rows
