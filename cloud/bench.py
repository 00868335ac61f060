"""Cloud micro-benchmarks: verify time per block, and batched vs sequential verify forwards.

python -m cloud.bench --model builtin:tiny-target --draft-len 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from cloud.verifier import VerifierLimits, VerifySession
from common.codec import make_codec
from common.models import LoadedModel, load_model
from common.types import SamplingParams


def _interleaved_ms(fns: Sequence[Callable[[], object]], reps: int) -> list[tuple[float, float]]:
    """(min, median) ms per function, alternating them each rep so load noise hits all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(1000 * (time.perf_counter() - start))
    return [(min(t), statistics.median(t)) for t in times]


def verify_block_ms(
    lm: LoadedModel, draft_len: int, prompt_len: int, blocks: int, spec: str
) -> dict[str, float]:
    """Median VerifySession.verify_block time (decode + one forward + verify), after prefill."""
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(0, lm.vocab_size, prompt_len)]
    params = SamplingParams(temperature=1.0, seed=0, max_new_tokens=10 * blocks * (draft_len + 1))
    limits = VerifierLimits(max(draft_len, 1), prompt_len, params.max_new_tokens)
    codec = make_codec(spec, lm.vocab_size)
    sess = VerifySession(lm, params, prompt, limits, codec)
    q = rng.dirichlet(np.full(lm.vocab_size, 0.05))  # [V] a peaked draft distribution

    def block() -> bytes:
        return codec.encode([codec.compress(q, rng) for _ in range(draft_len)])

    first = block()
    start = time.perf_counter()
    sess.verify_block(0, first)
    prefill_ms = 1000 * (time.perf_counter() - start)
    times = []
    for r in range(1, blocks + 1):
        payload = block()
        start = time.perf_counter()
        sess.verify_block(r, payload)
        times.append(time.perf_counter() - start)
    return {
        "first_block_ms(with prefill)": prefill_ms,
        "min_ms": 1000 * min(times),
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * float(np.quantile(times, 0.9)),
    }


def _prefilled(lm: LoadedModel, batch: int, prefix: int) -> tuple[DynamicCache, torch.Tensor]:
    ids = torch.randint(0, lm.vocab_size, (batch, prefix))  # [B, P]
    cache = DynamicCache(config=lm.model.config)
    with torch.inference_mode():
        lm.model(input_ids=ids.to(lm.device), cache=cache, use_cache=True)
    return cache, ids


def batched_vs_sequential(
    lm: LoadedModel, batches: Sequence[int], draft_len: int, prefix: int, reps: int
) -> list[dict[str, float]]:
    """One [B, L+1] forward over B equal-length caches vs B [1, L+1] forwards (the ideal batch)."""
    return [_one_batch(lm, b, draft_len + 1, prefix, reps) for b in batches]


def _one_batch(lm: LoadedModel, b: int, n: int, prefix: int, reps: int) -> dict[str, float]:
    singles = [_prefilled(lm, 1, prefix)[0] for _ in range(b)]
    batched, _ = _prefilled(lm, b, prefix)
    new = torch.randint(0, lm.vocab_size, (b, n)).to(lm.device)  # [B, L+1]

    def seq() -> None:
        with torch.inference_mode():
            for i, cache in enumerate(singles):
                lm.model(input_ids=new[i : i + 1], cache=cache, use_cache=True)  # [1, L+1]
                cache.crop(-n)

    def bat() -> None:
        with torch.inference_mode():
            lm.model(input_ids=new, cache=batched, use_cache=True)  # [B, L+1]
            batched.crop(-n)

    seq()  # warm-up
    bat()
    (s_min, s_med), (b_min, b_med) = _interleaved_ms([seq, bat], reps)
    return {
        "batch": b,
        "sequential_min_ms": s_min,
        "sequential_median_ms": s_med,
        "batched_min_ms": b_min,
        "batched_median_ms": b_med,
        "speedup_min": s_min / b_min,
        "speedup_median": s_med / b_med,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloud.bench", description=__doc__)
    ap.add_argument("--model", default="builtin:tiny-target")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--draft-len", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--codec", default="ksqs:k=16,ell=100")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    out = {
        "model": args.model,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "verify_block": verify_block_ms(lm, args.draft_len, args.prompt_len, args.blocks, args.codec),
        "batching": batched_vs_sequential(
            lm, [int(b) for b in args.batches.split(",")], args.draft_len, args.prompt_len, args.reps
        ),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
