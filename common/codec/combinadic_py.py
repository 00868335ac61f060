"""Colex subset ranks over CPython ints: the fallback big-int backend of common.codec.enumerative."""

from __future__ import annotations

import math

_WALK_LIMIT = 48  # exact steps allowed after the float estimate before falling back to bisection


def subset_rank(elems: list[int]) -> int:
    """Colex rank Σ_j C(s_j, j+1) of an ascending list of distinct naturals; < C(n, k) if all < n."""
    comb = math.comb
    total = 0
    prev_c, prev_v = -2, 0
    for j, c in enumerate(elems):
        # A run c = prev + 1 (stars of one part) costs one small mul/div: C(c, m) = C(c-1, m-1)·c/m.
        v = prev_v * c // (j + 1) if c == prev_c + 1 and j else comb(c, j + 1)
        total += v
        prev_c, prev_v = c, v
    return total


def _estimate(log_r: float, m: int, lo: int, hi: int) -> int:
    """Float guess of the largest c in [lo, hi) with C(c, m) <= e^log_r (error ~ m²/(24x) → ±1)."""
    x0 = math.exp((log_r + math.lgamma(m + 1)) / m)  # C(c,m) ≈ x^m/m! · e^{-m³/(24x²)}, x = c-(m-1)/2
    x = x0 * math.exp(m * m / (24.0 * x0 * x0)) if x0 > m else x0
    c = x + (m - 1) / 2.0
    if not c < hi:  # also catches inf/nan
        return hi - 1
    return max(int(c), lo)


def _largest_below(r: int, m: int, lo: int, hi: int) -> tuple[int, int]:
    """Largest c in [lo, hi) with C(c, m) <= r, and C(c, m). Requires C(lo, m) <= r < C(hi, m)."""
    if m == 1:
        return r, r
    lo = max(lo, m)  # r >= 1 = C(m, m), so the answer is >= m (and the step formulas stay defined)
    c = _estimate(math.log(r), m, lo, hi)
    v = math.comb(c, m)
    steps = 0
    while v > r and steps < _WALK_LIMIT:  # C(c-1, m) = C(c, m)·(c-m)/c
        v = v * (c - m) // c
        c -= 1
        steps += 1
    while c + 1 < hi and steps < _WALK_LIMIT:  # C(c+1, m) = C(c, m)·(c+1)/(c+1-m)
        w = v * (c + 1) // (c + 1 - m)
        if w > r:
            return c, v
        c, v = c + 1, w
        steps += 1
    if v <= r and (c + 1 >= hi or math.comb(c + 1, m) > r):
        return c, v
    while hi - lo > 1:  # bad estimate (not seen in practice): exact bisection
        mid = (lo + hi) // 2
        if math.comb(mid, m) <= r:
            lo = mid
        else:
            hi = mid
    return lo, math.comb(lo, m)


def subset_unrank(rank: int, n: int, k: int) -> list[int]:
    """Inverse of subset_rank: the ascending k-subset of [0, n) with that rank (rank < C(n, k))."""
    comb, log, exp, lgamma = math.comb, math.log, math.exp, math.lgamma  # hot loop: local names
    out = [0] * k
    hi, r = n, rank
    prev_c, prev_v = 0, 0
    for j in range(k - 1, -1, -1):
        m = j + 1
        if r == 0:  # the rest is {0, 1, ..., j}
            out[: j + 1] = range(j + 1)
            break
        if prev_c and (cand := prev_v * (m + 1) // prev_c) <= r:
            c, v = prev_c - 1, cand  # C(c-1, m) with c = prev: a run of stars of one part, no search
        elif m == 1:
            c, v = r, r
        else:
            # Float estimate (usually exact or off by one), then exact ±1 steps on the big ints.
            x0 = exp((log(r) + lgamma(m + 1)) / m)
            x = x0 * exp(m * m / (24.0 * x0 * x0)) if x0 > m else x0
            c = min(max(int(x + (m - 1) / 2.0), m), hi - 1) if x < hi else hi - 1
            v = comb(c, m)
            if v > r:
                c -= 1
                v = v * (c + 1 - m) // (c + 1)  # C(c, m) from C(c+1, m)
                if v > r:
                    c, v = _largest_below(r, m, m, c)
            elif c + 1 < hi and (w := v * (c + 1) // (c + 1 - m)) <= r:
                c, v = _largest_below(r, m, c + 1, hi) if c + 2 < hi else (c + 1, w)
        out[j] = c
        r -= v
        hi, prev_c, prev_v = c, c, v
    return out
