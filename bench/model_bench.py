"""Model forward costs on this CPU: decode step and L-token verify times, stock vs fast_linear, fp32 vs int8.

Usage: ``.venv/bin/python bench/model_bench.py [--threads N] [--repeats 7] [--prompts 10] [--tiny]``
(= ``make bench-models``; needs ``make fetch-models`` unless --tiny). Prints markdown tables: ms
(best of --repeats) per forward of L = 1..8 new tokens after a cached code-prompt context (L = 1
is the decode step), and greedy draft/target agreement on the committed code prompts.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a source checkout

from common.models import CachedLM, LoadedModel, load_model  # noqa: E402
from common.models.agreement import greedy_continuation, path_agreement  # noqa: E402
from common.models.fast import use_fast_linear  # noqa: E402

PROMPTS = ROOT / "bench" / "prompts" / "code.jsonl"
MAX_L = 8


@dataclass(frozen=True)
class Arm:
    """One row of the timing table: a cached model and the Linear mode to time it in."""

    label: str
    cached: CachedLM
    fast: bool | None  # FastLinear on/off before each call; None = leave as loaded (int8)


def label(lm: LoadedModel, mode: str) -> str:
    """Row name, e.g. ``qwen2.5-coder-0.5b fast_linear fp32``."""
    return f"{lm.spec.removeprefix('builtin:')} {mode}"


def code_prompts(n: int) -> list[str]:
    """First n committed code prompts."""
    with PROMPTS.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:n]


def time_arms(arms: Sequence[Arm], context: Sequence[int], repeats: int) -> list[list[float]]:
    """Best-of-``repeats`` seconds per arm to extend a cached ``context`` by L = 1..MAX_L tokens.

    Arms and lengths are interleaved inside each repeat and the minimum is kept: the CPU is
    shared with other jobs, whose interference only ever adds time and now hits every arm alike.
    """
    block = list(context[-MAX_L:])  # realistic token ids; the values do not change the cost
    for arm in arms:
        if arm.cached.num_tokens == 0:
            arm.cached.extend(context)
        arm.cached.extend(block[:2])  # warm-up: the first small forward allocates workspaces
        arm.cached.crop(len(context))
    best = [[float("inf")] * MAX_L for _ in arms]  # [arm][L-1] seconds
    for _ in range(repeats):
        for L in range(1, MAX_L + 1):
            for i, arm in enumerate(arms):
                if arm.fast is not None:
                    use_fast_linear(arm.cached.lm.model, enabled=arm.fast)
                start = time.perf_counter()
                arm.cached.extend(block[:L])
                best[i][L - 1] = min(best[i][L - 1], time.perf_counter() - start)
                arm.cached.crop(len(context))
    return best


def timing_table(arms: Sequence[Arm], context: Sequence[int], repeats: int) -> str:
    """Markdown rows (no header): ms per forward for L = 1..8, and verify(5) / decode."""
    lines = []
    for arm, secs in zip(arms, time_arms(arms, context, repeats), strict=True):
        cells = " | ".join(f"{1000 * s:.0f}" if s >= 0.01 else f"{1000 * s:.1f}" for s in secs)
        lines.append(f"| {arm.label} | {cells} | {secs[4] / secs[0]:.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def agreement_rows(
    paths: Sequence[Sequence[int]],
    drafts: Sequence[tuple[str, LoadedModel]],
    prompts: Sequence[Sequence[int]],
) -> str:
    """Markdown rows: greedy agreement of each drafter with the target's greedy ``paths``."""
    lines = []
    for name, draft in drafts:
        a = path_agreement(draft, prompts, paths)
        lines.append(f"| {name} | {a.rate:.3f} | {a.positions} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """CLI flags."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--draft", default="builtin:qwen2.5-coder-0.5b")
    parser.add_argument("--target", default="builtin:qwen2.5-coder-1.5b")
    parser.add_argument("--tiny", action="store_true", help="use the builtin tiny pair (smoke run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=10, help="code prompts for agreement")
    parser.add_argument("--n-new", type=int, default=16, help="greedy tokens per prompt for agreement")
    args = parser.parse_args(argv)
    if args.tiny:
        args.draft, args.target = "builtin:tiny-draft", "builtin:tiny-target"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the timing and agreement benchmarks and print markdown."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    # one big model in memory at a time (the CPU box is shared and has ~24 GB)
    target = load_model(args.target)
    prompts = code_prompts(args.prompts)
    ids = [target.tokenizer(t)["input_ids"] for t in prompts]
    context = ids[0]
    head = "| model / variant | " + " | ".join(f"L={L}" for L in range(1, MAX_L + 1)) + " | L=5 / L=1 |"
    t_cached = CachedLM(target)
    arms = [
        Arm(label(target, "stock fp32"), t_cached, False),
        Arm(label(target, "fast_linear fp32"), t_cached, True),
    ]
    timing = "\n".join([head, "|" + "---|" * (MAX_L + 2), timing_table(arms, context, args.repeats)])
    use_fast_linear(target.model, enabled=False)
    paths = [greedy_continuation(target, p, args.n_new) for p in ids]
    del target, t_cached, arms
    gc.collect()
    draft, draft8 = load_model(args.draft), load_model(args.draft, int8=True)
    d_cached = CachedLM(draft)
    arms = [
        Arm(label(draft, "stock fp32"), d_cached, False),
        Arm(label(draft, "fast_linear fp32"), d_cached, True),
        Arm(label(draft, "int8 dynamic"), CachedLM(draft8), None),
    ]
    timing += "\n" + timing_table(arms, context, args.repeats)
    use_fast_linear(draft.model, enabled=False)
    drafts = [(label(draft, "fp32"), draft), (label(draft, "int8 dynamic"), draft8)]
    agree = "| drafter | greedy agreement | positions |\n|---|---|---|\n" + agreement_rows(paths, drafts, ids)
    cpu = platform.processor() or platform.machine()
    print(
        f"\nDate: {datetime.date.today()}; torch {torch.__version__}, {args.threads} threads ({cpu}); ",
        end="",
    )
    print(
        f"context {len(context)} tokens; best of {args.repeats}; total {time.perf_counter() - start:.0f}s\n"
    )
    print("Forward time per call, ms (L new tokens on a cached context; L=1 is a decode step):\n")
    print(timing)
    print(f"\nGreedy agreement with {args.target} (stock fp32), {args.prompts} code prompts", end="")
    print(f" × {args.n_new} tokens:\n")
    print(agree)


if __name__ == "__main__":
    main()
