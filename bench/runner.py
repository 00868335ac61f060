"""Drive requests through a running edge (HTTP) and read the link's wire byte counters."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class RequestResult:
    """One completion as the client saw it, plus the edge's metrics and the link's byte counts."""

    completion_tokens: int = 0
    seconds: float = 0.0
    ttft: float | None = None
    text: str = ""
    spec: dict[str, Any] = field(default_factory=dict)  # metrics.speculative_decoding
    wire_up: int = 0  # link bytes edge → cloud during the request
    wire_down: int = 0
    error: str | None = None


def link_bytes(client: httpx.Client, metrics_url: str | None) -> tuple[int, int]:
    """(uplink, downlink) totals from the link's /metrics; (0, 0) when there is no link."""
    if not metrics_url:
        return 0, 0
    text = client.get(metrics_url, timeout=10).text
    totals = {"uplink": 0.0, "downlink": 0.0}
    for fam in text_string_to_metric_families(text):
        if fam.name != "draftlink_link_bytes":
            continue
        for sample in fam.samples:
            if sample.name.endswith("_total") and sample.labels.get("direction") in totals:
                totals[sample.labels["direction"]] += sample.value
    return int(totals["uplink"]), int(totals["downlink"])


def _events(resp: httpx.Response) -> Any:
    """Yield decoded SSE `data:` payloads until [DONE]."""
    for line in resp.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            return
        yield json.loads(data)


def complete(
    client: httpx.Client,
    base_url: str,
    body: dict[str, Any],
    link_metrics: str | None,
    timeout: float,
) -> RequestResult:
    """POST one streaming completion; measure TTFT and end-to-end time at the client."""
    res = RequestResult()
    up0, down0 = link_bytes(client, link_metrics)
    start = time.perf_counter()
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", f"{base_url}/v1/completions", json=payload, timeout=timeout) as resp:
        if resp.status_code != 200:
            resp.read()
            res.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            return res
        for event in _events(resp):
            if "error" in event:
                res.error = str(event["error"].get("message"))
                break
            for choice in event.get("choices", []):
                if choice.get("text") and res.ttft is None:
                    res.ttft = time.perf_counter() - start
                res.text += choice.get("text") or ""
            if event.get("usage"):
                res.completion_tokens = int(event["usage"]["completion_tokens"])
            spec = (event.get("metrics") or {}).get("speculative_decoding")
            if spec:
                res.spec = spec
    res.seconds = time.perf_counter() - start
    up1, down1 = link_bytes(client, link_metrics)
    res.wire_up, res.wire_down = up1 - up0, down1 - down0
    return res


def _sum(results: Sequence[RequestResult], key: str) -> float:
    return float(sum((r.spec.get(key) or 0) for r in results))


def aggregate(results: Sequence[RequestResult], formula_bits: float | None) -> dict[str, Any]:
    """Cell-level figures from its requests (ratios of sums, method.md §9 definitions)."""
    ok = [r for r in results if r.error is None]
    tokens = sum(r.completion_tokens for r in ok)
    seconds = sum(r.seconds for r in ok)
    drafted = _sum(ok, "num_draft_tokens")
    accepted = _sum(ok, "num_accepted_draft_tokens")
    rounds = _sum(ok, "rounds")
    # the edge reports bits_per_draft_token = 8·payload_bytes / num_draft_tokens per request
    payload_bits = sum(
        (r.spec.get("bits_per_draft_token") or 0) * (r.spec.get("num_draft_tokens") or 0) for r in ok
    )
    wire_up = sum(r.wire_up for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_sample": next((r.error for r in results if r.error), None),
        "completion_tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else None,
        "latency_per_token_s": seconds / tokens if tokens else None,
        "ttft_s": sum(ttfts) / len(ttfts) if ttfts else None,
        "drafted": drafted,
        "accepted": accepted,
        "rounds": rounds,
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_acceptance_length": 1 + accepted / rounds if rounds else None,
        "resampling_rate": _resampling_from_spec(ok),
        "payload_bits_per_draft_token": payload_bits / drafted if drafted else None,
        "wire_bits_per_draft_token": 8 * wire_up / drafted if drafted and wire_up else None,
        "formula_bits_per_draft_token": formula_bits,
        "uplink_bytes_per_token": wire_up / tokens if tokens and wire_up else None,
        "wire_uplink_bytes": wire_up,
        "wire_downlink_bytes": sum(r.wire_down for r in ok),
    }


def _resampling_from_spec(ok: Sequence[RequestResult]) -> float | None:
    """Pool per-request rates R/(A+R) back into counts: R = rate·A/(1 − rate)."""
    acc = res = 0.0
    for r in ok:
        rate, a = r.spec.get("resampling_rate"), float(r.spec.get("num_accepted_draft_tokens") or 0)
        if rate is None:
            continue
        if rate >= 1.0:  # every verified position was a rejection: R = rounds
            res += float(r.spec.get("rounds") or 0)
            continue
        acc += a
        res += rate * a / (1.0 - rate)
    return res / (acc + res) if acc + res else None
