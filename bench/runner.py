"""Drive requests through a running edge (HTTP) and read the link's wire byte counters."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.stats import ratio_of_sums


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
    status: int = 200
    index: int = 0  # prompt index (pairs arms: same prompt, same seed)
    domain: str = ""  # prompt set it came from (code, english)
    started: float = 0.0  # time.monotonic() at send (concurrency pass)


@dataclass(frozen=True)
class Prompt:
    index: int
    domain: str
    text: str


def load_prompts(paths: Sequence[str], n: int) -> list[Prompt]:
    """n prompts alternating between the files (code, English, code, ...), each file in order."""
    per_file: list[list[str]] = []
    for path in paths:
        with Path(path).open() as fh:
            per_file.append([json.loads(line)["text"] for line in fh if line.strip()])
    out: list[Prompt] = []
    for i in range(n):
        k = i % len(paths)
        texts = per_file[k]
        out.append(Prompt(i, Path(paths[k]).stem, texts[(i // len(paths)) % len(texts)]))
    return out


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
    res = RequestResult(started=time.monotonic())
    up0, down0 = link_bytes(client, link_metrics)
    start = time.perf_counter()
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", f"{base_url}/v1/completions", json=payload, timeout=timeout) as resp:
        if resp.status_code != 200:
            resp.read()
            res.status = resp.status_code
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


def _sent_drafts(r: RequestResult) -> float:
    """Drafts sent (void ones too): mean_draft_len × blocks_sent."""
    return float((r.spec.get("mean_draft_len") or 0) * (r.spec.get("blocks_sent") or 0))


def prompt_record(r: RequestResult) -> dict[str, Any]:
    """The per-prompt figures the bootstrap and the paired comparisons resample."""
    s = r.spec
    return {
        "i": r.index,
        "domain": r.domain,
        "tokens": r.completion_tokens,
        "seconds": r.seconds,
        "ttft": r.ttft,
        "drafted": s.get("num_draft_tokens") or 0,
        "accepted": s.get("num_accepted_draft_tokens") or 0,
        "resampled": s.get("num_resampled") or 0,
        "blocks": s.get("blocks_sent") or 0,
        "payload": s.get("payload_bytes") or 0,
        "open": s.get("open_bytes") or 0,
        "wire_up": r.wire_up,
    }


def aggregate(results: Sequence[RequestResult], formula_bits: float | None) -> dict[str, Any]:
    """Cell-level figures from its requests: ratios of sums (method.md §9) with bootstrap CIs."""
    ok = [r for r in results if r.error is None]
    recs = [prompt_record(r) for r in ok]
    tokens = sum(r.completion_tokens for r in ok)
    seconds = sum(r.seconds for r in ok)
    drafted, accepted = _sum(ok, "num_draft_tokens"), _sum(ok, "num_accepted_draft_tokens")
    rounds, resampled = _sum(ok, "rounds"), _sum(ok, "num_resampled")
    sent = sum(_sent_drafts(r) for r in ok)
    payload, blocks = _sum(ok, "payload_bytes"), _sum(ok, "blocks_sent")
    wire_up = sum(r.wire_up for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tps = ratio_of_sums([x["tokens"] for x in recs], [x["seconds"] for x in recs])
    acc = ratio_of_sums([x["accepted"] for x in recs], [x["drafted"] for x in recs])
    res = ratio_of_sums([x["resampled"] for x in recs], [x["accepted"] + x["resampled"] for x in recs])
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_sample": next((r.error for r in results if r.error), None),
        "completion_tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else None,
        "tokens_per_s_ci": [tps.lo, tps.hi],
        "latency_per_token_s": seconds / tokens if tokens else None,
        "ttft_s": sum(ttfts) / len(ttfts) if ttfts else None,
        "drafted": drafted,
        "accepted": accepted,
        "rounds": rounds,
        "acceptance_rate": accepted / drafted if drafted else None,
        "acceptance_rate_ci": [acc.lo, acc.hi],
        "mean_acceptance_length": 1 + accepted / rounds if rounds else None,
        "resampling_rate": resampled / (accepted + resampled) if accepted + resampled else None,
        "resampling_rate_ci": [res.lo, res.hi],
        "payload_bits_per_draft_token": 8 * payload / sent if sent else None,
        "wire_bits_per_draft_token": 8 * wire_up / sent if sent and wire_up else None,
        "formula_bits_per_draft_token": formula_bits,
        "uplink_bytes_per_token": wire_up / tokens if tokens and wire_up else None,
        "wire_uplink_bytes": wire_up,
        "wire_downlink_bytes": sum(r.wire_down for r in ok),
        "blocks": blocks,
        "mean_draft_len": sent / blocks if blocks else None,
        "overhead_bytes_per_block": _overhead(ok),
        "void_draft_tokens": _sum(ok, "void_draft_tokens"),
        "mean_batch_size": _mean_batch(ok),
        "seconds": seconds,
        **{k: _sum(ok, k) for k in TIME_KEYS},
        "per_prompt": recs,
    }


# per-request time totals the edge reports (summed over the cell's requests)
TIME_KEYS = ("draft_seconds", "codec_seconds", "verify_seconds", "queue_seconds", "wait_seconds")


def _overhead(ok: Sequence[RequestResult]) -> float | None:
    """Uplink bytes per block beyond the codec payload: (link bytes − payload − OpenSession) / blocks."""
    rs = [r for r in ok if r.wire_up and r.spec.get("blocks_sent")]
    blocks = sum(int(r.spec["blocks_sent"]) for r in rs)
    if not blocks:
        return None
    extra = sum(r.wire_up - (r.spec.get("payload_bytes") or 0) - (r.spec.get("open_bytes") or 0) for r in rs)
    return extra / blocks


def _mean_batch(ok: Sequence[RequestResult]) -> float | None:
    """Mean Verdict.batch_size over the cell's verdicts (sessions sharing a verifying forward)."""
    num = sum((r.spec.get("mean_batch_size") or 0) * (r.spec.get("rounds") or 0) for r in ok)
    rounds = _sum(ok, "rounds")
    return num / rounds if rounds and num else None
