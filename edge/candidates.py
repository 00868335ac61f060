"""The codecs `codec: "auto"` chooses from, and their bits and distortion predicted from recent q shapes."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.codec import Codec, CSQSState, make_codec, parse_codec_spec
from edge.control import TOP, Candidate, csqs_operating_point, sparse_distortion
from edge.probe import Observed

KSQS_SIZES = (1, 2, 4, 8, 16, 32, 64)
ELL_PER_K = (4, 16)  # candidate resolutions ℓ = 4K and 16K
CSQS_ALPHAS = (0.02, 0.05, 0.15)
CSQS_TAIL = "eta=0.02,ell=256,kmax=64"
QS_ELLS = (256,)
QS_MAX_VOCAB = 8192  # dense QS ranks all of V: past this its bits and CPU never pay


def candidate_specs(kinds: frozenset[str], vocab_size: int, default: str) -> list[str]:
    """K-SQS over K ∈ {1..64} × ℓ ∈ {4K, 16K}, C-SQS at three α, dense QS (small V), dense fp16, default.

    Only kinds the cloud decodes (empty = it did not say: all), K below V, ℓ within the codec limits.
    K above 64 is left out: its exact coding costs more CPU than any link saves (docs/BENCHMARKS.md).
    """

    def ok(kind: str) -> bool:
        return not kinds or kind in kinds

    specs: list[str] = []
    if ok("ksqs"):
        for k in (k for k in KSQS_SIZES if k < vocab_size):
            ells = (1,) if k == 1 else tuple(min(1024, m * k) for m in ELL_PER_K)
            specs += [f"ksqs:k={k},ell={ell}" for ell in ells]
    if ok("csqs"):
        specs += [parse_codec_spec(f"csqs:alpha={a},{CSQS_TAIL}").canonical for a in CSQS_ALPHAS]
    if ok("qs") and vocab_size <= QS_MAX_VOCAB:
        specs += [f"qs:ell={ell}" for ell in QS_ELLS]
    if ok("dense"):
        specs.append("dense:fp16")
    default = parse_codec_spec(default).canonical
    if default not in specs and (ok(default.split(":")[0]) or not specs):
        specs.append(default)  # decodable (or nothing else is: the request then fails with a clear 400)
    return specs


class CandidateCodec:
    """A candidate spec as the model sees it: per-draft bits and distortion over recent positions."""

    def __init__(self, spec: str, vocab_size: int) -> None:
        self.codec: Codec = make_codec(spec, vocab_size)
        self.spec = self.codec.spec
        p = self.codec.params
        self.kind, self.ell, self.vocab_size = p.kind, p.ell, vocab_size
        self.k = min(p.k or 1, vocab_size)
        self.alpha, self.eta = p.alpha or 0.0, p.eta or 0.0
        self.kmax = min(p.kmax or TOP, TOP)
        self.bits_by_k = (
            [float(self.codec.formula_bits(k)) for k in range(1, TOP + 1)] if p.kind == "csqs" else []
        )

    def bits(self, sizes: np.ndarray | None) -> float:
        if sizes is not None and self.bits_by_k and sizes.shape[0]:
            return float(np.mean(np.asarray(self.bits_by_k)[sizes - 1]))
        return float(self.codec.formula_bits())

    def distortion(
        self, window: Sequence[Observed], rows: Sequence[Observed], sizes: np.ndarray | None
    ) -> float:
        """Mean δ = d_TV(q, q̂) over the window (dense fp16: 0; QS: recorded exactly by the probe).

        rows: the positions (with top probabilities) the sparse δ is averaged over; sizes: their
        support sizes (C-SQS), else K. Each position's δ is computed once per (spec, K) and cached
        on it, so a block only pays for the positions that entered the window since the last one.
        """
        if self.kind.startswith("dense") or not rows:
            return 0.0
        if self.kind == "qs":
            got = [o.full.get(self.ell) for o in window]
            vals = [v for v in got if v is not None]
            return float(np.mean(vals)) if vals else 1.0
        ks = [min(self.k, TOP)] * len(rows) if sizes is None else [int(k) for k in sizes]
        missing = [i for i, (o, k) in enumerate(zip(rows, ks, strict=True)) if (self.spec, k) not in o.sparse]
        if missing:
            tops = np.stack([_top(rows[i]) for i in missing])  # [n, TOP]
            k_new = np.array([ks[i] for i in missing], dtype=np.int64)[:, None]  # [n, 1]
            fresh = sparse_distortion(tops, k_new, np.array([max(self.ell, 1)]))[:, 0]  # [n]
            for i, value in zip(missing, fresh, strict=True):
                rows[i].sparse[(self.spec, ks[i])] = float(value)
        return float(np.mean([o.sparse[(self.spec, k)] for o, k in zip(rows, ks, strict=True)]))

    def prior_cpu(self) -> float:
        """Seconds per draft (compress + encode) before any measurement: O(V) pass + O(K) coding."""
        v = self.vocab_size
        if self.kind.startswith("dense"):
            return 20e-6 + 10e-9 * v
        if self.kind == "qs":
            return 50e-6 + 500e-9 * v
        k = self.kmax if self.kind == "csqs" else self.k
        return 30e-6 + 1e-9 * v + 1.5e-6 * (k + min(self.ell, k))


@dataclass
class Shadow:
    """A C-SQS threshold run over every drafted position, whether or not that codec sent it.

    It follows the same update as CSQSCodec (β ← min(β + η(α − L_t), 1)) on the same q (its top
    kmax ≤ 64 entries are all a K_t can hold), so a C-SQS codec created later starts from it and
    its supports over the window are the ones the codec would actually have used (β moves, and
    the mean K along the moving β is well above K at the fixed point).
    """

    beta: float | None
    steps: int = 0
    sizes: deque[int] | None = None

    def step(self, top: np.ndarray, cand: CandidateCodec) -> None:
        if self.beta is None:
            return
        k = max(1, min(cand.kmax, int((top[: cand.kmax] >= self.beta).sum())))
        dropped = max(0.0, 1.0 - float(top[:k].sum()))
        self.beta = min(self.beta + cand.eta * (cand.alpha - dropped), 1.0)
        self.steps += 1
        if self.sizes is not None:
            self.sizes.append(k)


class Shadows:
    """Shadow C-SQS thresholds of one generation, by spec (seeded from the client's kept state)."""

    def __init__(self, cands: Sequence[CandidateCodec], kept: dict[str, CSQSState], window: int) -> None:
        self.cands = {c.spec: c for c in cands if c.kind == "csqs"}
        self.window = window
        self.by_spec = {
            s: Shadow(
                kept[s].beta if s in kept else None, kept[s].steps if s in kept else 0, deque(maxlen=window)
            )
            for s in self.cands
        }

    def step(self, top: np.ndarray, window: Sequence[Observed]) -> None:
        """Advance every shadow by one drafted position; unset ones start at the window's fixed point."""
        for spec, shadow in self.by_spec.items():
            cand = self.cands[spec]
            if shadow.beta is None and len(window) >= 4:
                recent = np.stack([o.top for o in window if o.top is not None])
                shadow.beta = csqs_operating_point(recent, cand.alpha, cand.kmax)[0]
            shadow.step(top, cand)

    def sync(self, spec: str, beta: float, steps: int) -> None:
        """The codec itself ran on these positions: its β is the truth."""
        shadow = self.by_spec.get(spec)
        if shadow is not None:
            shadow.beta, shadow.steps = beta, steps

    def sizes(self, spec: str) -> np.ndarray | None:
        shadow = self.by_spec.get(spec)
        if shadow is None or not shadow.sizes:
            return None
        return np.asarray(shadow.sizes, dtype=np.int64)

    def states(self) -> dict[str, CSQSState]:
        return {s: CSQSState(s, sh.beta, sh.steps) for s, sh in self.by_spec.items() if sh.beta is not None}


def evaluate(
    cands: Sequence[CandidateCodec], cpu: Sequence[float], window: Sequence[Observed], shadows: Shadows
) -> tuple[list[Candidate], np.ndarray, float]:
    """(per candidate: bits, CPU, mean δ; [C] δ̄; the window's mean flatness 1 − max q)."""
    seen = [o for o in window if o.top is not None]  # positions with top probabilities
    _fill_fixed_k([c for c in cands if c.kind == "ksqs"], seen)
    table, deltas = [], []
    for cand, seconds in zip(cands, cpu, strict=True):
        sizes, rows = (shadows.sizes(cand.spec), seen) if cand.kind == "csqs" else (None, seen)
        if sizes is not None:  # the shadow's supports over the positions it has seen
            m = min(sizes.shape[0], len(seen))
            sizes, rows = sizes[sizes.shape[0] - m :], seen[len(seen) - m :]
        if cand.kind == "csqs" and (sizes is None or sizes.shape[0] == 0) and seen:
            tops = np.stack([_top(o) for o in seen])  # [n, TOP]; no trajectory yet
            sizes, rows = csqs_operating_point(tops, cand.alpha, cand.kmax)[1], seen
        deltas.append(cand.distortion(window, rows, sizes))
        table.append(Candidate(cand.bits(sizes), seconds, deltas[-1]))
    flat = float(np.mean([o.flat for o in window])) if window else 0.0
    return table, np.array(deltas), flat


def _top(o: Observed) -> np.ndarray:
    """[TOP] the position's top probabilities (only positions that have them are rows)."""
    assert o.top is not None
    return o.top


def _fill_fixed_k(cands: Sequence[CandidateCodec], seen: Sequence[Observed]) -> None:
    """Cache δ of every fixed-K candidate at the positions that lack it, in one batched call."""
    keys = [(c.spec, min(c.k, TOP)) for c in cands]
    new = [o for o in seen if any(key not in o.sparse for key in keys)]
    if not new or not cands:
        return
    tops = np.stack([_top(o) for o in new])  # [n, TOP]
    ks = np.array([k for _, k in keys], dtype=np.int64)  # [C]
    ells = np.array([max(c.ell, 1) for c in cands])  # [C]
    table = sparse_distortion(tops, ks, ells)  # [n, C]
    for o, row in zip(new, table, strict=True):
        for key, value in zip(keys, row, strict=True):
            o.sparse[key] = float(value)
