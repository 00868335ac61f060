"""Reznik lattice quantizer, deterministic top-K selection and integer/float draws."""

from __future__ import annotations

import numpy as np

from common.errors import CodecError

_ROWS = 64  # rows of the [_ROWS, V/_ROWS] view used by the top-K prefilter
_SORT_MAX = 512  # lattice ties: argsort below this length, O(M) partition above
_TAUS = (0.25, 1 / 16, 1 / 256, 1 / 4096, 0.0)  # thresholds tried by lattice_quantize_sparse


def smallest_k(key: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest keys, ties to the lower index (== stable sort by (key, id)), O(n)."""
    n = int(key.shape[0])
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(key, k - 1)[k - 1]
    below = np.flatnonzero(key < kth)  # all of them are in
    ties = np.flatnonzero(key == kth)[: k - below.shape[0]]  # lowest ids among the ties
    return np.concatenate((below, ties)).astype(np.int64)


def _scaled(p: np.ndarray, ell: int) -> np.ndarray:
    """Validate p and return x = ℓ·p/Σp [M] float64 (Σx == ℓ up to rounding)."""
    if ell < 1:
        raise CodecError(f"ell must be >= 1, got {ell}")
    p64 = np.asarray(p, dtype=np.float64).reshape(-1)  # [M]
    total = float(p64.sum())
    if not np.isfinite(total) or total <= 0.0 or p64.min(initial=0.0) < 0.0:
        raise CodecError("lattice_quantize needs a finite, non-negative vector with positive mass")
    return p64 * (ell / total)


def _adjust(b: np.ndarray, x: np.ndarray, ell: int) -> np.ndarray:
    """Reznik steps 2–3 on b' [M]: Δ = ℓ − Σb'; Δ > 0: +1 where ζ = b' − x is smallest, Δ < 0:
    −1 where ζ is largest; ties to the lower index both ways (stable sort by (±ζ, id))."""
    delta = ell - int(b.sum())
    if delta != 0:
        key = b - x if delta > 0 else x - b  # [M]
        n = abs(delta)
        idx = np.argsort(key, kind="stable")[:n] if key.shape[0] <= _SORT_MAX else smallest_k(key, n)
        b[idx] += 1 if delta > 0 else -1
    if b.min(initial=0) < 0:  # impossible for a probability vector; never emit a bad lattice point
        raise CodecError("lattice quantization produced a negative count")
    return b


def lattice_quantize(p: np.ndarray, ell: int) -> np.ndarray:
    """Reznik (DCC 2011) quantization of p [M] to counts [M] int64 >= 0 with Σ == ell (method.md §3)."""
    if np.asarray(p).size > _SORT_MAX:
        ids, nz = lattice_quantize_sparse(p, ell)
        out = np.zeros(np.asarray(p).size, dtype=np.int64)  # [M]
        out[ids] = nz
        return out
    x = _scaled(p, ell)  # [M]
    return _adjust(np.floor(x + 0.5).astype(np.int64), x, ell)


def lattice_quantize_sparse(p: np.ndarray, ell: int) -> tuple[np.ndarray, np.ndarray]:
    """lattice_quantize(p, ell) as (ascending ids [N], counts [N] >= 1) of its non-zero entries.

    Entries with x = ℓp <= τ (τ <= 1/4) have b' = 0 and ζ = −x ∈ [−τ, 0]. If Δ > 0 and at least Δ
    entries above τ have ζ < −τ, or Δ < 0 (the |Δ| largest ζ are > 0, hence above τ), the entries
    below τ cannot be touched: work on the few above τ. τ shrinks for flat inputs.
    """
    x = _scaled(p, ell)  # [M]
    for tau in _TAUS:
        cand = np.flatnonzero(x > tau)  # [C] ascending
        xc = x[cand]
        b = np.floor(xc + 0.5).astype(np.int64)  # [C] b' (zero below τ)
        delta = ell - int(b.sum())
        if delta <= 0 or np.count_nonzero(b - xc < -tau) >= delta:
            b = _adjust(b, xc, ell)
            keep = b > 0
            return cand[keep], b[keep]
    full = _adjust(np.floor(x + 0.5).astype(np.int64), x, ell)  # [M] (only for pathological inputs)
    cand = np.flatnonzero(full)
    return cand, full[cand]


def top_k_support(q: np.ndarray, k: int) -> np.ndarray:
    """Ascending ids [k] int64 of the k largest entries of q [V], ties by (-q, id), without sorting V.

    Raises CodecError when q has NaN or infinite entries (checked on the way, at no extra pass).
    """
    n = int(q.shape[0])
    cols = n // _ROWS
    if k >= n or cols <= 2 * k:  # small vocabulary: partition everything
        if not np.isfinite(q).all():
            raise CodecError("probs must be finite")
        return np.arange(n, dtype=np.int64) if k >= n else np.sort(smallest_k(-q, k))
    # View q as [_ROWS, cols] (group c = ids c, c+cols, ...). The k-th largest group maximum t is
    # <= the k-th largest entry, so the top k lie among the entries >= t, all of them in a group
    # whose maximum is >= t (or in the ragged tail): one fast contiguous reduction over V, then
    # exact selection among those few entries.
    grid = q[: _ROWS * cols].reshape(_ROWS, cols)
    col_max = grid.max(axis=0)  # [cols]; NaN/inf propagate
    tail = q[_ROWS * cols :]  # [< _ROWS]
    if not (np.isfinite(col_max).all() and np.isfinite(tail).all()):
        raise CodecError("probs must be finite")
    t = np.partition(col_max, cols - k)[cols - k]
    hot = np.flatnonzero(col_max >= t)  # [>= k] groups
    sub = grid[:, hot]  # [_ROWS, |hot|]
    rows, at = np.nonzero(sub >= t)  # row-major, so the ids below come out ascending
    ids = rows * cols + hot[at]  # [C >= k]
    vals = sub[rows, at]
    if tail.shape[0]:  # tail ids exceed every grid id: appending keeps them ascending
        keep = np.flatnonzero(tail >= t)
        ids = np.concatenate((ids, keep + _ROWS * cols))
        vals = np.concatenate((vals, tail[keep]))
    # Over ascending ids, a stable sort (or smallest_k) on −q orders by (−q, id).
    key = -vals
    top = np.argsort(key, kind="stable")[:k] if key.shape[0] <= _SORT_MAX else smallest_k(key, k)
    return np.sort(ids[top]).astype(np.int64, copy=False)


def sample_counts(counts: np.ndarray, rng: np.random.Generator) -> int:
    """Index i drawn with probability counts[i]/Σcounts using integers only (u ~ U{0..ℓ-1})."""
    cum = np.cumsum(counts)  # [K] int64
    u = int(rng.integers(0, int(cum[-1])))
    return int(np.searchsorted(cum, u, side="right"))  # first i with cum[i] > u


def sample_probs(w: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn from non-negative weights w [V] (float64 inverse CDF); never a zero-weight index."""
    cum = np.cumsum(w)  # [V] float64; a zero weight repeats its predecessor, so owns no interval
    total = float(cum[-1])
    if not total > 0.0:
        raise ValueError("cannot sample from an all-zero weight vector")
    i = int(np.searchsorted(cum, rng.random() * total, side="right"))  # first i with cum[i] > u
    if i >= w.shape[0] or not w[i] > 0.0:  # u rounded up to the total: take the last positive
        i = int(np.flatnonzero(w > 0.0)[-1])
    return i
