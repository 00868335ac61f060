"""The sweep: in-process references first, then every cell through cloud → link → edge over HTTP."""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.grid import CLOUD_ONLY, Profile
from bench.inprocess import BoundTerms, bound_terms, speculative_generate
from bench.runner import RequestResult, aggregate, complete
from common.codec import make_codec
from common.models import LoadedModel, load_model
from common.types import SamplingParams
from launcher.stack import Stack, StackConfig

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


def formula_bits(method: str, vocab_size: int, draft_len: int, ksizes: Sequence[int] | None) -> float | None:
    """Codec formula bits per draft token, the 32-bit block header spread over draft_len drafts.

    C-SQS's formula depends on K_t: it is averaged over the K_t the in-process analysis saw
    (the formula is concave in K, so the formula at the mean K would understate it).
    """
    if method == CLOUD_ONLY:
        return None
    codec = make_codec(method, vocab_size)
    if method.startswith("csqs") and ksizes:
        per_token = sum(codec.formula_bits(k) for k in ksizes) / len(ksizes)
    else:
        per_token = codec.formula_bits(None)
    return float(per_token) + 32.0 / draft_len


def _load(spec: str, args: tuple[str, ...]) -> LoadedModel:
    """Load a model with the options a served process's CLI flags imply."""
    return load_model(spec, fast_linear="--fast-linear" in args, int8="--int8" in args)


def inprocess_references(profile: Profile, prompts: list[str], say: Progress) -> dict[str, Any]:
    """§7 bound terms per (method, T), and one-process speculative decoding tokens/s (unshaped reference)."""
    # the same model options as the served processes, so the one-process reference is comparable
    drafter = _load(profile.drafter, profile.edge_args)
    target = _load(profile.target, profile.cloud_args)
    tok = target.tokenizer
    bounds: dict[str, dict[str, Any]] = {}
    for temp in sorted({0.0, *profile.temperatures}):  # T = 0 for the greedy exactness pass
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


@dataclass(frozen=True)
class Pass:
    """One link setting and the (temperature, method) cells run on it."""

    name: str
    rate_bps: float
    delay_ms: float
    temperatures: tuple[float, ...]
    methods: tuple[str, ...]
    num_prompts: int


def plan(profile: Profile) -> list[Pass]:
    """Unshaped reference (protocol overhead), greedy exactness (T = 0, every method), then the grid."""
    t_ref = profile.temperatures[0]
    passes = [
        Pass("unshaped", 0.0, 0.0, (t_ref,), (CLOUD_ONLY, profile.inprocess_method), profile.num_prompts),
        Pass("greedy", 0.0, 0.0, (0.0,), profile.methods, min(2, profile.num_prompts)),
    ]
    for rate in profile.rates_bps:
        for delay in profile.delays_ms:
            passes.append(
                Pass("grid", rate, delay, profile.temperatures, profile.methods, profile.num_prompts)
            )
    return passes


def _round_upload_s(method: str, rate_bps: float, vocab_size: int, draft_len: int) -> float:
    """Seconds one full block's formula payload takes on the uplink (0 when unshaped)."""
    bits = formula_bits(method, vocab_size, draft_len, None)
    return 0.0 if not rate_bps or bits is None else bits * draft_len / rate_bps


def warm_up(stack: Stack, client: httpx.Client, profile: Profile, prompt: str) -> None:
    """One unrecorded request per mode: first forwards pay one-off allocation and lazy init."""
    for method in (CLOUD_ONLY, profile.inprocess_method):
        complete(client, stack.edge_url, _body(method, prompt, 0.0, profile, 0), None, 600.0)


def count_cells(profile: Profile) -> int:
    """Cells in the plan (for the progress bar)."""
    return sum(len(p.temperatures) * len(p.methods) for p in plan(profile))


def _row(
    p: Pass, method: str, temp: float, results: list[RequestResult], cut: bool, refs: dict[str, Any], L: int
) -> dict[str, Any]:
    """One cell's figures: measured ones from the requests, bound terms from the in-process analysis."""
    bound = refs["bounds"].get(f"{method}|{temp}", {})
    formula = formula_bits(method, refs["vocab_size"], L, bound.get("support_sizes"))
    row = {
        "pass": p.name,
        "method": method,
        "temperature": temp,
        "rate_bps": p.rate_bps,
        "delay_ms": p.delay_ms,
        "draft_len": L,
        "cut_short": cut,
        **aggregate(results, formula),
    }
    row.update({f"bound_{k}": bound.get(k) for k in ("mismatch", "sparsification", "lattice")})
    row["bound_total"] = bound.get("bound")
    row["expected_resampling"] = bound.get("resampling")
    return row


def sweep(
    profile: Profile, say: Progress, tick: Callable[[], None]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every pass; returns (meta, rows)."""
    prompts = load_prompts(profile.prompt_file, profile.num_prompts)
    refs = inprocess_references(profile, prompts, say)
    edge_args = (*profile.edge_args, "--max-tokens-limit", str(max(4096, profile.max_tokens)))
    cfg = StackConfig(
        cloud_model=profile.target,
        edge_model=profile.drafter,
        link=True,
        uplink_bps=0.0,
        downlink_bps=profile.downlink_bps,
        delay_ms=0.0,
        cloud_args=profile.cloud_args,
        edge_args=edge_args,
        ready_timeout=600.0,
    )
    rows: list[dict[str, Any]] = []
    texts: dict[tuple[str, float, float, float, str], list[str]] = {}
    with Stack(cfg) as stack, httpx.Client() as client:
        warm_up(stack, client, profile, prompts[0])
        for p in plan(profile):
            stack.restart_link(uplink_bps=p.rate_bps, delay_ms=p.delay_ms, downlink_bps=profile.downlink_bps)
            for temp in p.temperatures:
                for method in p.methods:
                    upload_s = _round_upload_s(method, p.rate_bps, refs["vocab_size"], profile.draft_len)
                    skip = upload_s > profile.max_round_upload_s
                    results, cut = (
                        ([], False)
                        if skip
                        else run_cell(stack, client, profile, method, temp, prompts[: p.num_prompts])
                    )
                    row = _row(p, method, temp, results, cut, refs, profile.draft_len)
                    row["skipped"] = f"{upload_s:.0f} s of uplink per round" if skip else None
                    texts[(p.name, p.rate_bps, p.delay_ms, temp, method)] = [r.text for r in results]
                    rows.append(row)
                    tps = row["tokens_per_s"]
                    say(
                        f"[{p.name}] {method} T={temp} rate={p.rate_bps:g} delay={p.delay_ms}: "
                        f"{tps and round(tps, 3)} tok/s, accept={row['acceptance_rate']}, "
                        f"errors={row['errors']}"
                    )
                    tick()
    _greedy_check(rows, texts)
    meta = {
        "profile": asdict(profile),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "models": f"{profile.drafter} → {profile.target}",
        "prompts": f"{profile.prompt_file} (first {len(prompts)})",
        "max_tokens": profile.max_tokens,
        "inprocess": refs["inprocess"],
        "ksizes": {k: v["support_sizes"] for k, v in refs["bounds"].items() if k.startswith("csqs")},
    }
    return meta, rows


def _greedy_check(
    rows: list[dict[str, Any]], texts: dict[tuple[str, float, float, float, str], list[str]]
) -> None:
    """At T = 0 every method's texts must equal cloud-only's on the same link (exactness end to end)."""
    for row in rows:
        if row["temperature"] != 0.0:
            continue
        key = (row["pass"], row["rate_bps"], row["delay_ms"], 0.0)
        ref, mine = texts.get((*key, CLOUD_ONLY)), texts.get((*key, row["method"]))
        if ref is not None and mine is not None:
            n = min(len(ref), len(mine))
            row["greedy_equals_cloud_only"] = n > 0 and ref[:n] == mine[:n]
