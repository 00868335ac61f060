"""The Draft record: one drafted token with the compressed distribution q̂ it was drawn from."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Draft:
    """A draft token and q̂: integer counts on a support (lattice codecs) or a float vector (dense)."""

    token: int  # vocab id that was drawn from q̂
    support: np.ndarray | None  # [K] int64 ascending vocab ids; None = the whole vocabulary
    counts: np.ndarray | None  # [K] (or [V] when support is None) int64, Σ == ell
    ell: int  # lattice resolution; 0 for dense float codecs
    probs: np.ndarray | None = None  # [V] float64 q̂ for dense float codecs (sums to 1)
    dropped_mass: float = math.nan  # 1 − q(S) at the edge (nan after decode: not on the wire)
    wire: np.ndarray | None = field(default=None, repr=False)  # [V] fp16/fp32 as sent (dense)

    def count(self, token: int) -> int:
        """b[token]: the lattice count of a vocab id (0 when outside the support)."""
        if self.counts is None:
            raise ValueError("dense draft has no counts")
        if self.support is None:
            return int(self.counts[token])
        i = int(np.searchsorted(self.support, token))
        if i < self.support.shape[0] and int(self.support[i]) == token:
            return int(self.counts[i])
        return 0

    def prob(self, token: int) -> float:
        """q̂(token)."""
        if self.probs is not None:
            return float(self.probs[token])
        return self.count(token) / self.ell

    def dense(self, vocab_size: int) -> np.ndarray:
        """q̂ as a [V] float64 vector."""
        if self.probs is not None:
            return self.probs.astype(np.float64, copy=True)
        assert self.counts is not None
        out = np.zeros(vocab_size, dtype=np.float64)  # [V]
        if self.support is None:
            out[:] = self.counts / self.ell
        else:
            out[self.support] = self.counts / self.ell
        return out

    @property
    def is_lattice(self) -> bool:
        """True when q̂ is integer counts over ℓ (accept test r·b < ℓ·p)."""
        return self.counts is not None
