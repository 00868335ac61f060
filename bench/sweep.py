"""The sweep: in-process references first, then every cell through cloud → link → edge over HTTP."""

from __future__ import annotations

import gc
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from bench.grid import CLOUD_ONLY, Profile
from bench.inprocess import BoundTerms, bound_terms, speculative_generate
from bench.runner import RequestResult, aggregate, complete
from common.codec import make_codec
from common.launch import Stack, StackConfig
from common.models import load_model
from common.types import SamplingParams

Progress = Callable[[str], None]


def load_prompts(path: str, n: int) -> list[str]:
    """The first n prompt texts of a committed JSONL prompt file."""
    out: list[str] = []
    with Path(path).open() as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line)["text"])
            if len(out) >= n:
                break
    return out


def formula_bits(method: str, vocab_size: int, draft_len: int, mean_k: float | None) -> float | None:
    """Codec formula bits per draft token, the 32-bit block header spread over draft_len drafts."""
    if method == CLOUD_ONLY:
        return None
    codec = make_codec(method, vocab_size)
    k = round(mean_k) if method.startswith("csqs") and mean_k else None
    return float(codec.formula_bits(k)) + 32.0 / draft_len


def inprocess_references(profile: Profile, prompts: list[str], say: Progress) -> dict[str, Any]:
    """§7 bound terms per (method, T), and one-process speculative decoding tokens/s (unshaped reference)."""
    drafter, target = load_model(profile.drafter), load_model(profile.target)
    tok = target.tokenizer
    bounds: dict[str, dict[str, Any]] = {}
    for temp in profile.temperatures:
        conts = []
        for i, prompt in enumerate(prompts):  # a target continuation to teacher-force along
            ids = tok.encode(prompt)
            params = SamplingParams(temperature=temp, max_new_tokens=profile.max_tokens, seed=i)
            run = speculative_generate(drafter, target, ids, "dense:fp32", params, profile.draft_len)
            conts.append((ids, run.tokens))
        for method in profile.methods:
            if method == CLOUD_ONLY:
                continue
            total = BoundTerms()
            for i, (ids, cont) in enumerate(conts):
                total.add(bound_terms(drafter, target, ids + cont, len(ids), method, temp, seed=i))
            bounds[f"{method}|{temp}"] = {**total.mean(), "support_sizes": total.support_sizes}
            say(f"bound terms {method} T={temp}: {total.mean()}")
    ref: dict[str, Any] = {"method": profile.inprocess_method, "temperature": profile.temperatures[0]}
    tokens = seconds = 0.0
    for i, prompt in enumerate(prompts):
        params = SamplingParams(temperature=ref["temperature"], max_new_tokens=profile.max_tokens, seed=i)
        run = speculative_generate(
            drafter, target, tok.encode(prompt), ref["method"], params, profile.draft_len
        )
        tokens, seconds = tokens + len(run.tokens), seconds + run.seconds
    ref["tokens_per_s"] = tokens / seconds if seconds else None
    say(f"in-process speculative reference: {ref}")
    vocab = target.vocab_size
    del drafter, target
    gc.collect()
    return {"bounds": bounds, "inprocess": ref, "vocab_size": vocab}


def _body(method: str, prompt: str, temp: float, profile: Profile, seed: int) -> dict[str, Any]:
    opts: dict[str, Any] = (
        {"mode": "cloud-only"}
        if method == CLOUD_ONLY
        else {"mode": "speculative", "codec": method, "draft_len": profile.draft_len}
    )
    return {
        "prompt": prompt,
        "max_tokens": profile.max_tokens,
        "temperature": temp,
        "seed": seed,
        "draftlink": opts,
    }


def run_cell(
    stack: Stack, client: httpx.Client, profile: Profile, method: str, temp: float, prompts: list[str]
) -> tuple[list[RequestResult], bool]:
    """Send the prompts (sequentially) until the cell's time budget is spent; True if cut short."""
    results: list[RequestResult] = []
    start = time.monotonic()
    for i, prompt in enumerate(prompts):
        if results and time.monotonic() - start > profile.cell_budget_s:
            return results, True
        timeout = max(600.0, profile.cell_budget_s * 4)
        results.append(
            complete(
                client,
                stack.edge_url,
                _body(method, prompt, temp, profile, i),
                stack.link_metrics_url,
                timeout,
            )
        )
    return results, False


def sweep(
    profile: Profile, say: Progress, tick: Callable[[], None]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the whole grid; returns (meta, rows)."""
    prompts = load_prompts(profile.prompt_file, profile.num_prompts)
    refs = inprocess_references(profile, prompts, say)
    first_rate = profile.rates_bps[0]
    cfg = StackConfig(
        cloud_model=profile.target,
        edge_model=profile.drafter,
        link=True,
        uplink_bps=first_rate,
        downlink_bps=profile.downlink_bps,
        delay_ms=profile.delays_ms[0],
        cloud_args=profile.cloud_args,
        edge_args=(*profile.edge_args, "--max-tokens-limit", str(max(4096, profile.max_tokens))),
        ready_timeout=600.0,
    )
    rows: list[dict[str, Any]] = []
    texts: dict[tuple[float, float, float, str], list[str]] = {}
    with Stack(cfg) as stack, httpx.Client() as client:
        for rate in profile.rates_bps:
            for delay in profile.delays_ms:
                stack.restart_link(uplink_bps=rate, delay_ms=delay, downlink_bps=profile.downlink_bps)
                for temp in profile.temperatures:
                    for method in profile.methods:
                        results, cut = run_cell(stack, client, profile, method, temp, prompts)
                        bound = refs["bounds"].get(f"{method}|{temp}", {})
                        mean_k = bound.get("support")
                        row = {
                            "method": method,
                            "temperature": temp,
                            "rate_bps": rate,
                            "delay_ms": delay,
                            "draft_len": profile.draft_len,
                            "cut_short": cut,
                            **aggregate(
                                results, formula_bits(method, refs["vocab_size"], profile.draft_len, mean_k)
                            ),
                        }
                        row.update(
                            {f"bound_{k}": bound.get(k) for k in ("mismatch", "sparsification", "lattice")}
                        )
                        row["bound_total"] = bound.get("bound")
                        row["expected_resampling"] = bound.get("resampling")
                        texts[(rate, delay, temp, method)] = [r.text for r in results]
                        rows.append(row)
                        say(
                            f"{method} T={temp} rate={rate:g} delay={delay}: "
                            f"{row['tokens_per_s'] and round(row['tokens_per_s'], 3)} tok/s, "
                            f"accept={row['acceptance_rate']}, errors={row['errors']}"
                        )
                        tick()
    _greedy_check(rows, texts)
    meta = {
        "profile": asdict(profile),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {_cpus()} cores",
        "models": f"{profile.drafter} → {profile.target}",
        "prompts": f"{profile.prompt_file} (first {len(prompts)})",
        "max_tokens": profile.max_tokens,
        "inprocess": refs["inprocess"],
        "ksizes": {k: v["support_sizes"] for k, v in refs["bounds"].items() if k.startswith("csqs")},
    }
    return meta, rows


def _greedy_check(
    rows: list[dict[str, Any]], texts: dict[tuple[float, float, float, str], list[str]]
) -> None:
    """At T = 0 every method's texts must equal cloud-only's in the same link setting (exactness)."""
    for row in rows:
        if row["temperature"] != 0.0:
            continue
        key = (row["rate_bps"], row["delay_ms"], 0.0)
        ref = texts.get((*key, CLOUD_ONLY))
        mine = texts.get((*key, row["method"]))
        if ref is not None and mine is not None:
            n = min(len(ref), len(mine))
            row["greedy_equals_cloud_only"] = n > 0 and ref[:n] == mine[:n]


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
