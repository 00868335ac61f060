"""Batched forwards on this CPU: one PackedLM forward over B sessions vs B CachedLM forwards, alternatives.

Usage: ``.venv/bin/python bench/batch_bench.py [--models tiny,draft,target] [--repeats 5] [--threads 1]``
(``draft``/``target`` need ``make fetch-models``). Sessions hold ragged cached contexts (seeded,
64–512 tokens); each cell is the median over ``--repeats`` of one forward over the first B
sessions (a verify block of L+1 = 5 tokens each, or a decode step of 1), rolled back afterwards.
Arms, interleaved inside each repeat: ``separate`` (B CachedLM.extend calls), ``packed``
(PackedLM, per-segment attention, the chosen mechanism), ``gathered`` (PackedLM, one sdpa over
all segments' K/V concatenated with a block-diagonal mask: the layout transformers' continuous
batching uses on CPU), ``padded`` (per-session caches stacked left-padded into one DynamicCache,
4-D mask, per-row positions; the history is copied in and the new K/V copied back every step),
and ``hf-cb`` (transformers ``generate_batch`` decode steps, greedy; run apart, not interleaved).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import DynamicCache, GenerationConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a source checkout

from common.models import CachedLM, LoadedModel, load_model  # noqa: E402
from common.models.packed import PackedLM, SeqKV  # noqa: E402

SPECS = {
    "tiny": "builtin:tiny-target",
    "draft": "builtin:qwen2.5-coder-0.5b",
    "target": "builtin:qwen2.5-coder-1.5b",
}
ARMS = ("separate", "packed", "gathered", "padded")
KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer ([Hkv, len, D], [Hkv, len, D])


def session_lengths(n: int, seed: int = 0) -> list[int]:
    """n ragged cached-context lengths in [64, 512]."""
    return torch.randint(64, 513, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def token_ids(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class Sessions:
    """The same B_max cached contexts held by every arm (prefilled once, then copied)."""

    def __init__(self, lm: LoadedModel, lengths: Sequence[int]) -> None:
        self.lm = lm
        self.packed = PackedLM(lm)
        self.lengths = list(lengths)
        self.seqs: list[SeqKV] = []
        for i, n in enumerate(lengths):
            seq = self.packed.new_seq()
            self.packed.forward([(seq, token_ids(n, lm.vocab_size, 100 + i), 0)])
            self.seqs.append(seq)
        self.kv: list[KV] = [self._copy(seq) for seq in self.seqs]
        self.cached = [self._cached(kv, n) for kv, n in zip(self.kv, lengths, strict=True)]

    def _copy(self, seq: SeqKV) -> KV:
        views = (seq.layer_kv(layer, seq.num_tokens) for layer in range(self.packed.num_layers))
        return [(k[0].clone(), v[0].clone()) for k, v in views]

    def _cached(self, kv: KV, n: int) -> CachedLM:
        """A CachedLM holding the same context (its DynamicCache seeded with the same K/V)."""
        cached = CachedLM(self.lm)
        for layer, (k, v) in enumerate(kv):
            cached._cache.update(k[None].clone(), v[None].clone(), layer)
        cached._num_tokens = n
        return cached

    def rollback(self) -> None:
        for seq, cached, n in zip(self.seqs, self.cached, self.lengths, strict=True):
            seq.crop(n)
            cached.crop(n)


def padded_forward(lm: LoadedModel, kv: Sequence[KV], blocks: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The padded alternative: left-padded stacked caches, 4-D bool mask, per-row positions.

    Returns per-row logits [n, V]; the new K/V are copied back onto each history (discarded here,
    but paid for: a real implementation keeps them).
    """
    batch, n = len(blocks), len(blocks[0])
    lens = torch.tensor([kvs[0][0].shape[1] for kvs in kv])  # [B]
    maxlen = int(lens.max())
    device = torch.device(lm.device)
    cache = DynamicCache(config=lm.model.config)
    for layer in range(len(kv[0])):
        heads, _, dim = kv[0][layer][0].shape
        keys = torch.zeros(batch, heads, maxlen, dim, dtype=kv[0][layer][0].dtype, device=device)
        values = torch.zeros_like(keys)
        for b, kvs in enumerate(kv):
            k, v = kvs[layer]
            keys[b, :, maxlen - k.shape[1] :] = k  # left padding
            values[b, :, maxlen - k.shape[1] :] = v
        cache.update(keys, values, layer)
    pos = torch.arange(maxlen + n)  # [S]
    valid = pos[None, :] >= (maxlen - lens)[:, None]  # [B, S]: not padding
    causal = pos[None, :] <= (maxlen + torch.arange(n))[:, None]  # [n, S]
    mask = (valid[:, None, :] & causal[None])[:, None]  # [B, 1, n, S]
    positions = lens[:, None] + torch.arange(n)[None, :]  # [B, n]
    with torch.inference_mode():
        out = lm.model(
            input_ids=torch.tensor(blocks, device=device),
            position_ids=positions.to(device),
            attention_mask=mask.to(device),
            cache=cache,
            use_cache=True,
        )
        logits = out.logits[:, :, : lm.vocab_size].float().cpu()
        layers: list[Any] = list(cache.layers)
        for layer, cache_layer in enumerate(layers):
            for b, kvs in enumerate(kv):
                torch.cat([kvs[layer][0], cache_layer.keys[b, :, maxlen:]], dim=1)
                torch.cat([kvs[layer][1], cache_layer.values[b, :, maxlen:]], dim=1)
    return list(logits)


def arm_call(arm: str, s: Sessions, batch: int, blocks: list[list[int]]) -> Callable[[], list[torch.Tensor]]:
    """A zero-argument forward of ``arm`` over the first ``batch`` sessions."""
    if arm == "separate":
        return lambda: [c.extend(b) for c, b in zip(s.cached[:batch], blocks, strict=True)]
    if arm == "padded":
        return lambda: padded_forward(s.lm, s.kv[:batch], blocks)

    def packed() -> list[torch.Tensor]:
        s.packed.mode = "gathered" if arm == "gathered" else "segments"
        return s.packed.forward([(q, b, len(b)) for q, b in zip(s.seqs[:batch], blocks, strict=True)])

    return packed


def check_arms(s: Sessions, batch: int) -> str:
    """Max |Δlogit| of every arm against separate CachedLM forwards on one verify block."""
    blocks = [token_ids(5, s.lm.vocab_size, 7 + i) for i in range(batch)]
    ref = arm_call("separate", s, batch, blocks)()
    s.rollback()
    diffs = []
    for arm in ARMS[1:]:
        got = arm_call(arm, s, batch, blocks)()
        s.rollback()
        diffs.append(f"{arm} {max(float((g - r).abs().max()) for g, r in zip(got, ref, strict=True)):.1e}")
    return ", ".join(diffs)


def time_arms(s: Sessions, batches: Sequence[int], repeats: int) -> dict[tuple[str, int, int], list[float]]:
    """Seconds per (arm, L, B), all arms interleaved inside each repeat (rotating their order)."""
    times: dict[tuple[str, int, int], list[float]] = {}
    for rep in range(repeats + 1):  # repeat 0 warms up every shape and is dropped
        for L in (5, 1):
            for batch in batches:
                blocks = [token_ids(L, s.lm.vocab_size, 1000 * rep + i) for i in range(batch)]
                order = ARMS[rep % len(ARMS) :] + ARMS[: rep % len(ARMS)]
                for arm in order:
                    call = arm_call(arm, s, batch, blocks)
                    start = time.perf_counter()
                    call()
                    if rep:
                        times.setdefault((arm, L, batch), []).append(time.perf_counter() - start)
                    s.rollback()
    return times


def hf_cb_step(lm: LoadedModel, lengths: Sequence[int], steps: int) -> float:
    """Median seconds per decode step of transformers' continuous batching over these contexts."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    prompts = [token_ids(n, lm.vocab_size, 100 + i) for i, n in enumerate(lengths)]
    gen = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=steps + 1, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    cb = ContinuousBatchingConfig(
        num_blocks=4 * len(lengths) + 8,
        page_size=256,
        max_batch_tokens=sum(lengths) + 64,  # every prefill in one step: the timed steps are decode only
        use_cuda_graph=False,
    )
    out = lm.model.generate_batch(
        prompts, generation_config=gen, continuous_batching_config=cb, record_timestamps=True, warmup=False
    )
    stamps = next(iter(out.values())).timestamps  # one per generated token, batch-wide steps
    return float(statistics.median(b - a for a, b in itertools.pairwise(stamps[1:])))


def ms(x: float) -> str:
    return f"{1000 * x:.0f}" if x >= 0.01 else f"{1000 * x:.1f}"


def report(
    name: str, times: dict[tuple[str, int, int], list[float]], batches: Sequence[int], cb: dict[int, float]
) -> str:
    """Markdown table for one model: median ms per forward and speed-ups over separate forwards."""
    head = "| model | B | new tokens each | " + " | ".join(ARMS) + " | hf-cb | separate / packed |"
    lines = [head, "|" + "---|" * (len(ARMS) + 5)]
    for L in (5, 1):
        for batch in batches:
            med = {arm: statistics.median(times[(arm, L, batch)]) for arm in ARMS}
            cb_cell = ms(cb[batch]) if L == 1 and batch in cb else "–"
            cells = " | ".join(ms(med[a]) for a in ARMS)
            ratio = med["separate"] / med["packed"]
            lines.append(f"| {name} | {batch} | {L} | {cells} | {cb_cell} | {ratio:.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def bench_model(key: str, args: argparse.Namespace) -> str:
    """Load one model, run the hf-cb arm on it first (stock attention), then the interleaved arms."""
    lm = load_model(SPECS[key], fast_linear=args.fast_linear)
    batches = [b for b in args.batches if key == "tiny" or b <= 8]
    lengths = session_lengths(max(batches))
    cb = {b: hf_cb_step(lm, lengths[:b], args.cb_steps) for b in batches if b in args.cb_batches}
    start = time.perf_counter()
    sessions = Sessions(lm, lengths)
    print(f"{key}: prefilled {sum(lengths)} tokens in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    check = check_arms(sessions, min(4, max(batches)))
    print(f"{key}: max |Δlogit| vs separate: {check}", file=sys.stderr, flush=True)
    table = report(key, time_arms(sessions, batches, args.repeats), batches, cb)
    return f"{table}\n\n{key} sessions: cached lengths {lengths}; max |Δlogit| vs separate (B≤4): {check}\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default="tiny,draft,target")
    parser.add_argument("--batches", default="1,2,4,8,16", help="B values (Qwen: up to 8)")
    parser.add_argument("--cb-batches", default="1,4,8", help="B values for the hf-cb arm ('' = none)")
    parser.add_argument("--cb-steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fast-linear", action="store_true", help="load with fast_linear=True")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.cb_batches = [int(b) for b in args.cb_batches.split(",") if b]
    torch.set_num_threads(args.threads)
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)  # psutil nags on CPU
    start = time.perf_counter()
    out = []
    for key in args.models.split(","):
        out.append(bench_model(key, args))
        gc.collect()  # one model in memory at a time
    cpu = platform.processor() or platform.machine()
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    total = time.perf_counter() - start
    print(
        f"\nDate: {datetime.date.today()}; {versions}, {args.threads} threads ({cpu}); "
        f"median of {args.repeats}; total {total:.0f}s\n"
    )
    print("ms per forward over B sessions (each with its own ragged cached context):\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
