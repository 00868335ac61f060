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

    def distortion(self, window: Sequence[Observed], tops: np.ndarray, sizes: np.ndarray | None) -> float:
        """Mean δ = d_TV(q, q̂) over the window (dense fp16: 0; QS: recorded exactly by the probe)."""
        if self.kind.startswith("dense") or tops.shape[0] == 0:
            return 0.0
        if self.kind == "qs":
            got = [o.full.get(self.ell) for o in window]
            vals = [v for v in got if v is not None]
            return float(np.mean(vals)) if vals else 1.0
        k = np.minimum(self.k, TOP) if sizes is None else sizes[:, None]
        return float(sparse_distortion(tops, np.asarray(k), np.array([max(self.ell, 1)])).mean())

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
    tops = np.stack([o.top for o in window if o.top is not None]) if window else np.zeros((0, TOP))
    table, deltas = [], []
    for cand, seconds in zip(cands, cpu, strict=True):
        sizes, rows = (shadows.sizes(cand.spec), tops) if cand.kind == "csqs" else (None, tops)
        if sizes is not None:  # the shadow's supports over the positions it has seen
            m = min(sizes.shape[0], tops.shape[0])
            sizes, rows = sizes[sizes.shape[0] - m :], tops[tops.shape[0] - m :]
        if cand.kind == "csqs" and (sizes is None or sizes.shape[0] == 0) and tops.shape[0]:
            sizes, rows = csqs_operating_point(tops, cand.alpha, cand.kmax)[1], tops  # no trajectory yet
        deltas.append(cand.distortion(window, rows, sizes))
        table.append(Candidate(cand.bits(sizes), seconds, deltas[-1]))
    flat = float(np.mean([o.flat for o in window])) if window else 0.0
    return table, np.array(deltas), flat
