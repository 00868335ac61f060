"""A codec wrapper recording, per drafted position, what the controller may see of q (no extra forward).

The drafter hands q to `compress` only; wrapping the block's codec is how the controller sees the
distortion of the codec it used, the drafter's confidence, and q's largest probabilities (from which
it computes every candidate codec's distortion). Recording never changes the draft: `compress`
returns exactly what the wrapped codec returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.codec import Codec, Draft, lattice_quantize_sparse, top_k_support
from edge.control import TOP, top_probs


@dataclass(frozen=True)
class Observed:
    """One drafted position as the edge saw it before sending."""

    distortion: float  # δ_used = d_TV(q, q̂) of the codec that drew the draft
    flat: float  # 1 − max q: how unsure the drafter was at this position
    top: np.ndarray | None  # [TOP] q's largest probabilities, descending (when candidates need them)
    full: dict[int, float]  # ℓ → δ of dense QS at ℓ (when it is a candidate; needs all of q)
    # (spec, K) → δ of a sparse candidate here: filled on first use, then reused for as long as the
    # position stays in the controller's window (each block would otherwise redo the whole window)
    sparse: dict[tuple[str, int], float] = field(default_factory=dict, compare=False)


def qs_distortion(q: np.ndarray, ell: int) -> float:
    """d_TV(q, lattice(q, ℓ)) over the whole vocabulary (dense QS), O(V)."""
    ids, counts = lattice_quantize_sparse(q, ell)
    q_s = q[ids]
    return 0.5 * (max(0.0, 1.0 - float(q_s.sum())) + float(np.abs(q_s - counts / ell).sum()))


def distortion(q: np.ndarray, d: Draft) -> float:
    """d_TV(q, q̂) of a compressed draft: ½(dropped mass + Σ_S |q − q̂|) (dense: ½ Σ_V |q − q̂|)."""
    if d.support is not None and d.counts is not None:
        q_s = q[d.support]  # [K]
        return 0.5 * (max(0.0, 1.0 - float(q_s.sum())) + float(np.abs(q_s - d.counts / d.ell).sum()))
    return 0.5 * float(np.abs(q - d.dense(q.shape[0])).sum())


class Recorder:
    """Positions drafted by one generation → Observed; written on the drafter thread, read on the loop."""

    def __init__(
        self,
        want_top: bool,
        full_ells: Sequence[int] = (),
        keep: int = 512,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.want_top = want_top
        self.full_ells = tuple(full_ells)
        self.clock = clock
        self.keep = keep
        self._lock = threading.Lock()
        self._next = self._begin = 0
        self._seen: dict[int, Observed] = {}
        self.codec_seconds = 0.0  # compress + encode time since the last `take_seconds`

    def begin(self, position: int) -> None:
        """The next draft recorded is at absolute `position` (called when a block is planned)."""
        with self._lock:
            self._next = self._begin = position
            for old in [p for p in self._seen if p < position - self.keep]:
                del self._seen[old]

    def add(self, obs: Observed) -> None:
        with self._lock:
            self._seen[self._next] = obs
            self._next += 1

    def block(self) -> list[Observed]:
        """The positions recorded since the last `begin`, in order."""
        with self._lock:
            return [self._seen[p] for p in range(self._begin, self._next)]

    def get(self, position: int) -> Observed | None:
        with self._lock:
            return self._seen.get(position)

    def take_seconds(self) -> float:
        with self._lock:
            s, self.codec_seconds = self.codec_seconds, 0.0
        return s

    def add_seconds(self, s: float) -> None:
        with self._lock:
            self.codec_seconds += s


class ProbeCodec(Codec):
    """Delegates everything to `inner` (same spec, same bitstream, same state); records each compress."""

    def __init__(self, inner: Codec, recorder: Recorder) -> None:
        super().__init__(inner.params, inner.vocab_size)
        self.inner = inner
        self.recorder = recorder

    def compress(self, probs: np.ndarray, rng: np.random.Generator) -> Draft:
        clock = self.recorder.clock
        start = clock()
        d = self.inner.compress(probs, rng)
        self.recorder.add_seconds(clock() - start)
        q = np.asarray(probs, dtype=np.float64)  # [V]
        top = top_probs(q, top_k_support(q, TOP)) if self.recorder.want_top else None
        peak = float(top[0]) if top is not None else float(q.max())
        full = {ell: qs_distortion(q, ell) for ell in self.recorder.full_ells}
        self.recorder.add(Observed(distortion(q, d), 1.0 - peak, top, full))
        return d

    def encode(self, drafts: Sequence[Draft]) -> bytes:
        start = self.recorder.clock()
        out = self.inner.encode(drafts)
        self.recorder.add_seconds(self.recorder.clock() - start)
        return out

    def decode(self, payload: bytes, max_drafts: int | None = None) -> list[Draft]:
        return self.inner.decode(payload, max_drafts)

    def formula_bits(self, k: int | None = None) -> int:
        return self.inner.formula_bits(k)
