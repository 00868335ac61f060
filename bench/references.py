"""In-process references of a sweep: §7 bound terms per (codec, T) and one-process tokens/s.

The models are loaded with the options the running services reported (the edge's
GET /v1/draftlink/config, which carries the cloud's Info.model_options), not guessed from flags.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bench.grid import Profile
from bench.inprocess import BoundTerms, bound_terms, speculative_generate
from bench.methods import codec_of
from common.models import LoadedModel, load_model
from common.types import SamplingParams


class _Prompt(Protocol):
    @property
    def text(self) -> str: ...


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def load_served(served: dict[str, Any], side: str) -> LoadedModel:
    """Load the drafter ("drafter") or target ("cloud") as the running service loaded it."""
    if side == "drafter":
        d = served["drafter"]
        return load_model(d["model"], fast_linear=bool(d["fast_linear"]), int8=bool(d["int8"]))
    c = served["cloud"]
    opts = c.get("model_options") or {}
    return load_model(
        c["model_id"], dtype=opts.get("dtype", "float32"), fast_linear=_truthy(opts.get("fast_linear", False))
    )


def inprocess_references(
    profile: Profile,
    prompts: Sequence[_Prompt],
    served: dict[str, Any],
    say: Callable[[str], None],
    need_bounds: bool = True,
) -> dict[str, Any]:
    """§7 bound terms per (codec, T), and one-process speculative decoding tokens/s (unshaped reference)."""
    drafter, target = load_served(served, "drafter"), load_served(served, "cloud")
    tok = target.tokenizer
    n = min(len(prompts), profile.num_prompts)
    codecs = list(dict.fromkeys(c for m in profile.methods if (c := codec_of(m)) is not None))
    bounds: dict[str, dict[str, Any]] = {}
    greedy = {0.0} if "greedy" in profile.passes else set()
    temps = sorted({*greedy, *profile.temperatures}) if need_bounds else []
    for temp in temps:
        conts = []
        for i, prompt in enumerate(prompts[:n]):  # a target continuation to teacher-force along
            ids = tok.encode(prompt.text)
            params = SamplingParams(temperature=temp, max_new_tokens=profile.max_tokens, seed=i)
            run = speculative_generate(drafter, target, ids, "dense:fp32", params, profile.draft_len)
            conts.append((ids, run.tokens))
        for codec in codecs:
            total = BoundTerms()
            for i, (ids, cont) in enumerate(conts):
                total.add(bound_terms(drafter, target, ids + cont, len(ids), codec, temp, seed=i))
            bounds[f"{codec}|{temp}"] = {**total.mean(), "support_sizes": total.support_sizes}
            say(f"bound terms {codec} T={temp}: {total.mean()}")
    ref: dict[str, Any] = {"method": profile.inprocess_method, "temperature": profile.temperatures[0]}
    tokens = seconds = 0.0
    if "unshaped" in profile.passes:
        for i, prompt in enumerate(prompts[:n]):
            params = SamplingParams(
                temperature=ref["temperature"], max_new_tokens=profile.max_tokens, seed=profile.seed_base + i
            )
            run = speculative_generate(
                drafter, target, tok.encode(prompt.text), ref["method"], params, profile.draft_len
            )
            tokens, seconds = tokens + len(run.tokens), seconds + run.seconds
    ref["tokens_per_s"] = tokens / seconds if seconds else None
    say(f"in-process speculative reference: {ref}")
    vocab = target.vocab_size
    del drafter, target
    gc.collect()
    return {"bounds": bounds, "inprocess": ref, "vocab_size": vocab}
