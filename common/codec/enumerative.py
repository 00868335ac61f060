"""Enumerative (combinatorial number system) ranks of supports and compositions, exact big ints."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.codec import combinadic_py
from common.errors import CodecError

try:  # bounds are the same integers either way; GMP only makes the first call per K cheaper
    from gmpy2 import comb as _gmp_comb
except ImportError:
    _gmp_comb = None

BIGINT_ENV = "DRAFTLINK_CODEC_BIGINT"  # "auto" (default): gmpy2 when importable; "python" | "gmpy2"


def bits_for(bound: int) -> int:
    """Bits of a field holding a value in [0, bound): ⌈log2 bound⌉ (0 when bound == 1)."""
    return (bound - 1).bit_length()


@functools.lru_cache(maxsize=8192)
def binomial(n: int, k: int) -> int:
    """C(n, k), exact and cached process-wide (field bounds: C-SQS needs one per K_t, every session)."""
    return int(_gmp_comb(n, k)) if _gmp_comb is not None else math.comb(n, k)


def composition_bound(ell: int, k: int) -> int:
    """Number of weak compositions of ell into k parts: C(ell+k-1, k-1)."""
    return binomial(ell + k - 1, k - 1)


@dataclass(frozen=True)
class Ranker:
    """One big-int backend: colex subset rank/unrank, and the support/composition codes built on it.

    Every backend computes the same integers (the bitstream does not depend on the backend).
    """

    name: str
    subset_rank: Callable[[list[int]], int]
    subset_unrank: Callable[[int, int, int], list[int]]

    def support_rank(self, support: np.ndarray, n: int) -> int:
        """Rank of an ascending K-subset of [0, n); codes the complement when it is smaller."""
        k = int(support.shape[0])
        if 2 * k <= n:
            return self.subset_rank(support.tolist())
        mask = np.ones(n, dtype=bool)
        mask[support] = False
        return self.subset_rank(np.flatnonzero(mask).tolist())

    def support_unrank(self, rank: int, n: int, k: int) -> np.ndarray:
        """Inverse of support_rank -> [k] int64 ascending."""
        if 2 * k <= n:
            return np.asarray(self.subset_unrank(rank, n, k), dtype=np.int64)
        mask = np.ones(n, dtype=bool)
        mask[np.asarray(self.subset_unrank(rank, n, n - k), dtype=np.int64)] = False
        return np.flatnonzero(mask).astype(np.int64)

    def composition_rank(self, counts: np.ndarray, ell: int) -> int:
        """Rank of a weak composition (counts [K] >= 0, Σ = ell) in [0, C(ell+K-1, K-1))."""
        k = int(counts.shape[0])
        if ell < k - 1:  # stars: the sorted multiset of part indices, shifted to a set
            parts = np.repeat(np.arange(k, dtype=np.int64), counts)  # [ell]
            return self.subset_rank((parts + np.arange(ell, dtype=np.int64)).tolist())
        bars = np.cumsum(counts)[:-1] + np.arange(k - 1, dtype=np.int64)  # [K-1] bar positions
        return self.subset_rank(bars.tolist())

    def composition_unrank(self, rank: int, ell: int, k: int) -> np.ndarray:
        """Inverse of composition_rank -> counts [k] int64."""
        n = ell + k - 1
        if ell < k - 1:
            stars = np.asarray(self.subset_unrank(rank, n, ell), dtype=np.int64)
            stars -= np.arange(ell, dtype=np.int64)
            return np.bincount(stars, minlength=k).astype(np.int64, copy=False)
        bars = np.asarray(self.subset_unrank(rank, n, k - 1), dtype=np.int64)
        bars -= np.arange(k - 1, dtype=np.int64)
        edges = np.concatenate(([0], bars, [ell])).astype(np.int64)  # [K+1] cumulative counts
        counts = np.diff(edges)
        if counts.min(initial=0) < 0:  # cannot happen for rank < bound; guard the invariant anyway
            raise CodecError("composition rank out of range")
        return counts


def _load() -> dict[str, Ranker]:
    """The importable backends, fastest first."""
    rankers: dict[str, Ranker] = {}
    try:
        from common.codec import combinadic_gmp
    except ImportError:  # gmpy2 missing (a dependency, but keep the codec usable without it)
        pass
    else:
        rankers["gmpy2"] = Ranker("gmpy2", combinadic_gmp.subset_rank, combinadic_gmp.subset_unrank)
    rankers["python"] = Ranker("python", combinadic_py.subset_rank, combinadic_py.subset_unrank)
    return rankers


_RANKERS = _load()
BIGINT_BACKENDS: tuple[str, ...] = tuple(_RANKERS)  # importable here, fastest first


def ranker(name: str | None = None) -> Ranker:
    """The backend called name ("gmpy2" | "python"), or the import-time default when None."""
    if name is None:
        return DEFAULT
    got = _RANKERS.get(name)
    if got is None:
        known = "gmpy2 (not importable here), python" if name == "gmpy2" else "gmpy2, python"
        raise CodecError(f"unknown or unavailable big-int backend {name!r} (known: {known})")
    return got


def _select(choice: str) -> Ranker:
    """Import-time default from $DRAFTLINK_CODEC_BIGINT; a backend named there must load."""
    choice = choice.strip().lower() or "auto"
    if choice == "auto":
        return next(iter(_RANKERS.values()))
    if choice not in ("gmpy2", "python"):
        raise ImportError(f"{BIGINT_ENV}={choice!r}: expected auto, gmpy2 or python")
    if choice not in _RANKERS:
        raise ImportError(f"{BIGINT_ENV}=gmpy2 but gmpy2 cannot be imported")
    return _RANKERS[choice]


DEFAULT: Ranker = _select(os.environ.get(BIGINT_ENV, ""))


def support_rank(support: np.ndarray, n: int) -> int:
    """support_rank with the default backend."""
    return DEFAULT.support_rank(support, n)


def support_unrank(rank: int, n: int, k: int) -> np.ndarray:
    """support_unrank with the default backend."""
    return DEFAULT.support_unrank(rank, n, k)


def composition_rank(counts: np.ndarray, ell: int) -> int:
    """composition_rank with the default backend."""
    return DEFAULT.composition_rank(counts, ell)


def composition_unrank(rank: int, ell: int, k: int) -> np.ndarray:
    """composition_unrank with the default backend."""
    return DEFAULT.composition_unrank(rank, ell, k)
