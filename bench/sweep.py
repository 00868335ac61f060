"""The sweep: every pass through cloud → link → edge (arms interleaved per prompt), then references."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from bench.grid import Profile
from bench.headline import link_label
from bench.methods import CLOUD_ONLY, codec_of, parse_method
from bench.references import inprocess_references
from bench.runner import Prompt, RequestResult, aggregate, complete, load_prompts
from common.codec import make_codec
from launcher.stack import Stack, StackConfig

Progress = Callable[[str], None]


def formula_bits(method: str, vocab_size: int, draft_len: int, ksizes: Sequence[int] | None) -> float | None:
    """Codec formula bits per draft token, the 32-bit block header spread over draft_len drafts.

    C-SQS's formula depends on K_t: it is averaged over the K_t the in-process analysis saw
    (the formula is concave in K, so the formula at the mean K would understate it).
    """
    spec = codec_of(method)
    if spec is None:
        return None
    codec = make_codec(spec, vocab_size)
    if spec.startswith("csqs") and ksizes:
        per_token = sum(codec.formula_bits(k) for k in ksizes) / len(ksizes)
    else:
        per_token = codec.formula_bits(None)
    return float(per_token) + 32.0 / draft_len


def body(method: str, prompt: Prompt, temp: float, profile: Profile) -> dict[str, Any]:
    """The completion request of one arm: same prompt, same seed in every cell (paired arms)."""
    return {
        "prompt": prompt.text,
        "max_tokens": profile.max_tokens,
        "temperature": temp,
        "seed": profile.seed_base + prompt.index,
        "ignore_eos": True,  # every request generates max_tokens: equal work per prompt across arms
        "draftlink": parse_method(method).options(profile.draft_len),
    }


@dataclass(frozen=True)
class Pass:
    """One link setting and the (temperature, method) cells run on it."""

    name: str
    rate_bps: float
    delay_ms: float
    temperatures: tuple[float, ...]
    methods: tuple[str, ...]
    num_prompts: int
    schedule: str | None = None  # link --schedule (markov pass)

    @property
    def min_rate_bps(self) -> float:
        """The slowest rate of the pass (the bad state of a Markov channel)."""
        if self.schedule:
            kv = dict(x.split("=", 1) for x in self.schedule.partition(":")[2].split(",") if "=" in x)
            return min(float(kv["good"]), float(kv["bad"]))
        return self.rate_bps


def plan(profile: Profile) -> list[Pass]:
    """The request passes in order (the concurrency pass is planned by bench.concurrency)."""
    t_ref, passes = profile.temperatures[0], []
    want = set(profile.passes)
    if "unshaped" in want:
        ref = (CLOUD_ONLY, profile.inprocess_method)
        passes.append(Pass("unshaped", 0.0, 0.0, (t_ref,), ref, profile.num_prompts))
    if "greedy" in want:
        passes.append(Pass("greedy", 0.0, 0.0, (0.0,), profile.methods, min(2, profile.num_prompts)))
    if "grid" in want:
        for rate in profile.rates_bps:
            for delay in profile.delays_ms:
                passes.append(
                    Pass("grid", rate, delay, profile.temperatures, profile.methods, profile.num_prompts)
                )
    if "markov" in want:
        for sched in profile.markov:
            for delay in profile.delays_ms:
                p = Pass(
                    "markov", 0.0, delay, profile.temperatures, profile.methods, profile.num_prompts, sched
                )
                passes.append(p)
    return passes


def count_requests(profile: Profile) -> int:
    """Requests in the plan (for the progress bar)."""
    return sum(len(p.temperatures) * len(p.methods) * p.num_prompts for p in plan(profile))


def _round_upload_s(method: str, rate_bps: float, vocab_size: int, draft_len: int) -> float:
    """Seconds one full block's formula payload takes on the uplink (0 when unshaped)."""
    bits = formula_bits(method, vocab_size, draft_len, None)
    return 0.0 if not rate_bps or bits is None else bits * draft_len / rate_bps


Cell = tuple[float, str]  # (temperature, method)


def run_pass(
    stack: Stack, client: httpx.Client, profile: Profile, p: Pass, prompts: list[Prompt], ctx: RunContext
) -> dict[Cell, tuple[list[RequestResult], str | None]]:
    """Every prompt through every live cell, arms interleaved per prompt (drift hits all arms alike).

    Stops starting new prompt rounds once cells × cell_budget_s has passed. Returns per cell its
    results and why it was skipped (None if it ran).
    """
    cells = [(t, m) for t in p.temperatures for m in p.methods]
    out: dict[Cell, tuple[list[RequestResult], str | None]] = {}
    for t, m in cells:
        upload = _round_upload_s(m, p.min_rate_bps, ctx.vocab_size, profile.draft_len)
        skip = f"{upload:.0f} s of uplink per round" if upload > profile.max_round_upload_s else None
        out[(t, m)] = ([], skip)
    live = [c for c in cells if out[c][1] is None]
    budget, start = profile.cell_budget_s * max(1, len(live)), time.monotonic()
    timeout = max(600.0, profile.cell_budget_s * 4)
    for prompt in prompts[: p.num_prompts]:
        if prompt.index and time.monotonic() - start > budget:
            ctx.say(f"[{p.name}] budget spent after {prompt.index} prompt rounds")
            break
        k = prompt.index % max(1, len(live))
        for cell in live[k:] + live[:k]:  # rotate the order per prompt: no arm always goes first
            r = complete(
                client,
                stack.edge_url,
                body(cell[1], prompt, cell[0], profile),
                stack.link_metrics_url,
                timeout,
            )
            r.index, r.domain = prompt.index, prompt.domain
            out[cell][0].append(r)
            ctx.tick()
            if r.status == 400:  # the edge does not take this arm's options (e.g. no "auto"): drop it
                out[cell] = (out[cell][0], f"edge refused the options: {(r.error or '')[:160]}")
                live.remove(cell)
    return out


@dataclass
class RunContext:
    say: Progress
    tick: Callable[[], None]
    vocab_size: int = 0


def _stack_config(profile: Profile) -> StackConfig:
    edge_args = (*profile.edge_args, "--max-tokens-limit", str(max(4096, profile.max_tokens)))
    return StackConfig(
        cloud_model=profile.target,
        edge_model=profile.drafter,
        link=True,
        uplink_bps=0.0,
        downlink_bps=profile.downlink_bps,
        delay_ms=0.0,
        cloud_args=profile.cloud_args,
        edge_args=edge_args,
        ready_timeout=600.0,
        edges=profile.edges,
    )


def warm_up(stack: Stack, client: httpx.Client, profile: Profile, prompt: Prompt) -> None:
    """One unrecorded request per mode on every edge: first forwards pay allocation and lazy init."""
    for url in stack.edge_urls:
        for method in (CLOUD_ONLY, profile.inprocess_method):
            complete(client, url, body(method, prompt, 0.0, profile), None, 600.0)


def served_config(client: httpx.Client, edge_url: str) -> dict[str, Any]:
    """The edge's GET /v1/draftlink/config (drafter and cloud model options, defaults, limits)."""
    resp = client.get(f"{edge_url}/v1/draftlink/config", timeout=30)
    resp.raise_for_status()
    return dict(resp.json())


def _row(
    p: Pass, method: str, temp: float, results: list[RequestResult], skip: str | None, L: int
) -> dict[str, Any]:
    row = {
        "pass": p.name,
        "method": method,
        "temperature": temp,
        "rate_bps": p.rate_bps,
        "delay_ms": p.delay_ms,
        "schedule": p.schedule,
        "draft_len": L,
        "cut_short": len(results) < p.num_prompts and skip is None,
        "skipped": skip,
        **aggregate(results, None),
    }
    return row


def sweep(
    profile: Profile, say: Progress, tick: Callable[[], None]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every pass on one stack, then the in-process references with the served options."""
    from bench.concurrency import run_concurrency

    prompts = load_prompts(profile.prompt_files, max(profile.num_prompts, 1))
    rows: list[dict[str, Any]] = []
    texts: dict[tuple[str, float, float, str | None, float, str], list[str]] = {}
    ctx = RunContext(say, tick)
    with Stack(_stack_config(profile)) as stack, httpx.Client() as client:
        served = served_config(client, stack.edge_url)
        ctx.vocab_size = int(served["cloud"]["vocab_size"])
        warm_up(stack, client, profile, prompts[0])
        for p in plan(profile):
            link_args = ("--schedule", p.schedule) if p.schedule else ()
            stack.restart_link(p.rate_bps, p.delay_ms, profile.downlink_bps, link_args)
            for (temp, method), (results, skip) in run_pass(stack, client, profile, p, prompts, ctx).items():
                row = _row(p, method, temp, results, skip, profile.draft_len)
                texts[(p.name, p.rate_bps, p.delay_ms, p.schedule, temp, method)] = [
                    r.text for r in results if r.error is None
                ]
                rows.append(row)
                tps = row["tokens_per_s"]
                say(
                    f"[{p.name}] {method} T={temp} {link_label(row)} delay={p.delay_ms}: "
                    f"{tps and round(tps, 3)} tok/s, accept={row['acceptance_rate']}, errors={row['errors']}"
                )
        if "concurrency" in profile.passes:
            stack.restart_link(profile.concurrency_rate_bps, profile.delays_ms[0], profile.downlink_bps, ())
            rows += run_concurrency(stack, profile, prompts, say)
    _greedy_check(rows, texts)
    refs: dict[str, Any] = (
        inprocess_references(profile, prompts, served, say, need_bounds=True)
        if plan(profile) and profile.references
        else {"bounds": {}, "inprocess": {}, "vocab_size": ctx.vocab_size}
    )
    _attach_bounds(rows, refs, profile.draft_len)
    meta = {
        "profile": asdict(profile),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "models": f"{profile.drafter} → {profile.target}",
        "served": served,
        "prompts": f"{', '.join(profile.prompt_files)} (first {profile.num_prompts}, alternating)",
        "max_tokens": profile.max_tokens,
        "vocab_size": refs["vocab_size"],
        "inprocess": refs["inprocess"],
        "ksizes": {k: v["support_sizes"] for k, v in refs["bounds"].items() if k.startswith("csqs")},
    }
    return meta, rows


def _attach_bounds(rows: list[dict[str, Any]], refs: dict[str, Any], L: int) -> None:
    """§7 bound terms and formula bits per (codec, T) from the in-process analysis."""
    for row in rows:
        codec = codec_of(row["method"])
        if codec is None or "temperature" not in row:
            continue
        bound = refs["bounds"].get(f"{codec}|{row['temperature']}", {})
        row["formula_bits_per_draft_token"] = formula_bits(
            codec, refs["vocab_size"], L, bound.get("support_sizes")
        )
        row.update({f"bound_{k}": bound.get(k) for k in ("mismatch", "sparsification", "lattice")})
        row["bound_total"] = bound.get("bound")
        row["expected_resampling"] = bound.get("resampling")


def _greedy_check(
    rows: list[dict[str, Any]], texts: dict[tuple[str, float, float, str | None, float, str], list[str]]
) -> None:
    """At T = 0 every method's texts must equal cloud-only's on the same link (exactness end to end)."""
    for row in rows:
        if row.get("temperature") != 0.0 or row.get("pass") == "concurrency":
            continue
        key = (row["pass"], row["rate_bps"], row["delay_ms"], row["schedule"], 0.0)
        ref, mine = texts.get((*key, CLOUD_ONLY)), texts.get((*key, row["method"]))
        if ref and mine:  # both ran (a skipped arm has no texts)
            n = min(len(ref), len(mine))
            row["greedy_equals_cloud_only"] = n > 0 and ref[:n] == mine[:n]
