"""Target sampling and the exact speculative verification rule (method.md §1–2)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import numpy as np

from common.codec.draft import Draft
from common.codec.lattice import sample_counts, sample_probs

__all__ = [
    "DRAFTER_SEED_TAG",
    "VERIFIER_SEED_TAG",
    "RngSource",
    "accepts",
    "drafter_rng",
    "fresh_seed",
    "position_rng",
    "probs_from_logits",
    "residual",
    "sample_counts",
    "sample_probs",
    "verifier_rng",
    "verify",
]


def probs_from_logits(logits: np.ndarray, temperature: float, top_p: float = 1.0) -> np.ndarray:
    """softmax(z/T) in float32, then float64 [n, V] (or [V] for 1-D logits); T == 0 → one-hot argmax."""
    z: np.ndarray = np.asarray(logits, dtype=np.float32)  # [n, V]
    squeeze = z.ndim == 1
    if squeeze:
        z = z[None, :]
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits must be [n, V], got shape {z.shape}")
    if not temperature >= 0.0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"bad sampling params: temperature={temperature}, top_p={top_p}")
    if temperature == 0.0:  # greedy: one-hot at the argmax, lowest id on ties (np.argmax)
        p = np.zeros(z.shape, dtype=np.float64)  # [n, V]
        p[np.arange(z.shape[0]), np.argmax(z, axis=1)] = 1.0
    else:
        s = z / np.float32(temperature)  # [n, V] float32
        e = np.exp(s - s.max(axis=1, keepdims=True))  # [n, V] float32
        p = (e / e.sum(axis=1, keepdims=True)).astype(np.float64)  # [n, V] float64
        p /= p.sum(axis=1, keepdims=True)  # one float64 normalisation, identical on edge and cloud
        if top_p < 1.0:
            p = _nucleus(p, top_p)
    if not np.isfinite(p).all():
        raise ValueError("logits produced non-finite probabilities (NaN, or a row of all -inf)")
    return p[0] if squeeze else p


def _nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest prefix of tokens sorted by (−p, id) whose mass reaches top_p; renormalise."""
    order = np.argsort(-p, axis=1, kind="stable")  # [n, V] ties → lower id first
    sorted_p = np.take_along_axis(p, order, axis=1)  # [n, V]
    before = np.cumsum(sorted_p, axis=1) - sorted_p  # [n, V] mass strictly before each token
    keep_sorted = before < top_p  # the first token always has before == 0
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    out: np.ndarray = np.where(keep, p, 0.0)  # [n, V]
    out /= out.sum(axis=1, keepdims=True)
    return out


def accepts(draft: Draft, p: np.ndarray, r: float) -> bool:
    """Accept x̃ iff r < p(x̃)/q̂(x̃), without division: r·b[x̃] < ℓ·p(x̃) (lattice) or r·q̂ < p (dense)."""
    x = draft.token
    if draft.is_lattice:
        return r * draft.count(x) < draft.ell * float(p[x])
    return r * draft.prob(x) < float(p[x])


def residual(draft: Draft, p: np.ndarray) -> np.ndarray:
    """(p − q̂)⁺ as float64 weights [V] (sample_probs normalises); p itself when that is all zero."""
    w = np.maximum(p - draft.dense(p.shape[0]), 0.0)  # [V] float64
    return w if w.sum() > 0.0 else p


RngSource = np.random.Generator | Callable[[int], np.random.Generator]


def _per_offset(rng: RngSource) -> Callable[[int], np.random.Generator]:
    """Block offset → generator: one shared stream, or the caller's position-keyed streams."""
    if isinstance(rng, np.random.Generator) or not callable(rng):  # a Generator (or a stand-in)
        shared: Any = rng
        return lambda _n: shared
    return rng


@overload
def verify(
    drafts: Sequence[Draft], target_probs: np.ndarray, rng: RngSource, bonus: Literal[True] = True
) -> tuple[int, int]: ...


@overload
def verify(
    drafts: Sequence[Draft], target_probs: np.ndarray, rng: RngSource, bonus: bool
) -> tuple[int, int | None]: ...


def verify(
    drafts: Sequence[Draft], target_probs: np.ndarray, rng: RngSource, bonus: bool = True
) -> tuple[int, int | None]:
    """Exact verification of one block: (accepted, next_token), P(output) = p for any q̂.

    Invariant: each draft's q̂ is the very distribution its token was drawn from (integer counts
    on the wire), so min(p, q̂)(x) + (p − q̂)⁺(x) = p(x) at every position (method.md §2).
    `rng` is one generator for the whole block, or a function giving the generator of block
    offset n (position-keyed randomness: the acceptance test and the residual or bonus draw at
    offset n all come from rng(n)). With bonus=False (a continuation follows the block) a fully
    accepted block returns next_token None instead of drawing from p_{L+1}.
    """
    p_all = np.asarray(target_probs, dtype=np.float64)  # [L+1, V]
    if p_all.ndim != 2 or p_all.shape[0] != len(drafts) + 1:
        raise ValueError(f"target_probs must be [L+1={len(drafts) + 1}, V], got {p_all.shape}")
    at = _per_offset(rng)
    for n, draft in enumerate(drafts):
        p = p_all[n]  # [V] target at draft position n
        g = at(n)
        if accepts(draft, p, g.random()):
            continue
        return n, sample_probs(residual(draft, p), g)  # first rejection: resample and stop
    if not bonus:
        return len(drafts), None
    return len(drafts), sample_probs(p_all[-1], at(len(drafts)))  # all accepted: bonus from p_{L+1}


# Tags mixed into the request seed so the drafter's draws (draft tokens) never share a random
# stream with the verifier's (acceptance tests, residual and bonus draws): equal uniforms on both
# sides would correlate the draft with its acceptance test and bias the output away from p.
DRAFTER_SEED_TAG = 0x65646765  # "edge"
VERIFIER_SEED_TAG = 0x76657269  # "veri"


def position_rng(seed: int, position: int, tag: int) -> np.random.Generator:
    """The generator of one absolute token position: a function of (seed, tag, position) only.

    Why keyed by position: a resumed session (or one whose blocks were cut differently) draws the
    same uniforms at the same position, so a seeded request reproduces its text exactly.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, tag, position])))


def drafter_rng(seed: int, position: int) -> np.random.Generator:
    """The drafter's generator for the draft at absolute `position` of a request with `seed`."""
    return position_rng(seed, position, DRAFTER_SEED_TAG)


def verifier_rng(seed: int, position: int) -> np.random.Generator:
    """The verifier's generator for absolute `position` (acceptance test, residual or bonus draw)."""
    return position_rng(seed, position, VERIFIER_SEED_TAG)


def fresh_seed() -> int:
    """A random request seed (unseeded requests): 63 bits of OS entropy."""
    return secrets.randbits(63)
