"""Colex subset ranks over GMP big ints (gmpy2): the fast backend of common.codec.enumerative."""

from __future__ import annotations

import math
from bisect import bisect_right
from itertools import accumulate
from typing import Any

import gmpy2

_comb = gmpy2.comb  # mpz_bin_uiui: C(150000, 64) in ~0.4 µs; CPython's math.comb needs ~10-25 µs
_divexact = gmpy2.divexact
_mpz = gmpy2.mpz
_LN2 = math.log(2.0)
_FLOAT_BITS = 1000  # below this many bits float(r) is finite and keeps 53 significant bits
TABLE_CAP = 1 << 17  # most entries in one Pascal table: ~17 MB, ~0.2 s to build, at its largest
_TABLE_WIDTH = 1 << 11  # subsets of [0, n) with n up to this (compositions) get a table
_MIN_WIDTH = 1 << 9

# Pascal tables by width (a power of two >= 512): rows[m][c] = C(c, m) for c < width; small
# binomials by lookup, digits by bisection. One table per width, so specs with different ℓ+K
# never evict each other's rows (three widths at most: <= ~50 MB in all, one table typically).
# Grown row by row, replaced whole, so a concurrent reader keeps a consistent table.
_tables: dict[int, list[list[Any]]] = {}


def _next_row(row: list[Any]) -> list[Any]:
    """C(c, m) = Σ_{i<c} C(i, m−1) (hockey stick) from the row of m−1: one GMP add per entry."""
    return [_mpz(0), *accumulate(row[:-1])]


def pascal_rows(n: int, s: int) -> list[list[Any]]:
    """The table of the smallest width >= n, grown towards rows 0..s as far as TABLE_CAP allows."""
    width = max(_MIN_WIDTH, 1 << max(n - 1, 1).bit_length())
    rows = _tables.get(width) or [[_mpz(1)] * width]
    height = min(s + 1, TABLE_CAP // width)
    if height <= len(rows):
        return rows
    new = list(rows)
    while len(new) < height:
        new.append(_next_row(new[-1]))
    _tables[width] = new
    return new


def subset_rank(elems: list[int]) -> int:
    """Colex rank Σ_j C(s_j, j+1) of an ascending list of distinct naturals (== combinadic_py's)."""
    # map/sum run in C: one GMP binomial per element and no Python bytecode in the loop.
    return int(sum(map(_comb, elems, range(1, len(elems) + 1))))


def _log(r: Any) -> float:
    """ln r for an mpz r >= 1 of any size (float(r) overflows past 2**1024)."""
    shift: int = max(r.bit_length() - 64, 0)
    return math.log(float(r >> shift)) + shift * _LN2


def _consts(k: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per-digit constants of the float estimate for m = 0..k at least: 1/m, (m!)^(1/m), m²/24
    and (m−1)/2 (list lookups are cheaper than recomputing them in the digit loop)."""
    global _const_lists
    got = _const_lists
    if len(got[0]) <= k:
        ms = range(1, 2 * k + 2)
        got = (
            [0.0, *(1.0 / m for m in ms)],
            [0.0, *(math.exp(math.lgamma(m + 1) / m) for m in ms)],
            [0.0, *(m * m / 24.0 for m in ms)],
            [0.0, *((m - 1) * 0.5 for m in ms)],
        )
        _const_lists = got
    return got


_const_lists: tuple[list[float], list[float], list[float], list[float]] = ([0.0], [0.0], [0.0], [0.0])
_consts(1024)


def _big_root(r: Any, inv_m: float) -> float:
    """r^(1/m) for an mpz r too large for float(r) (>= 2**1024)."""
    shift: int = max(r.bit_length() - 64, 0)  # r shrinks below 64 bits in the last digits
    # Capped far above any digit (< 2**24) so that the caller's float stays finite.
    return math.exp(min((math.log(float(r >> shift)) + shift * _LN2) * inv_m, 600.0))


def newton_estimate(x0: float, log_r: float, m: int, hi: int) -> int:
    """Digit guess for c < 4m, where the closed form is poor; -1 when [m, hi) is empty.

    Newton steps on f(c) = lnΓ(c+1) − lnΓ(c−m+1) − ln(m!) − ln r with f' ≈ ln((c+½)/(c−m+½));
    the answer is >= m (r >= 1 = C(m, m)), which also keeps lnΓ's argument positive.
    """
    if hi <= m:
        return -1
    c = max(x0 + m * m / (24.0 * x0) + (m - 1) * 0.5, float(m))
    rhs = math.lgamma(m + 1) + log_r
    for _ in range(6):
        step = (math.lgamma(c + 1) - math.lgamma(c - m + 1) - rhs) / math.log((c + 0.5) / (c - m + 0.5))
        c = max(c - step, float(m))
        if abs(step) < 1e-3:
            break
    # f is concave, so the iterates approach the root from below: round up the last 1e-2, since a
    # digit one too high costs one exact step down and one too low costs the checked retry.
    return min(int(c + 1e-2), hi - 1)


def _bisect(r: Any, m: int, lo: int, hi: int) -> tuple[int, Any]:
    """Largest c in [lo, hi) with C(c, m) <= r, and C(c, m); requires C(lo, m) <= r."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _comb(mid, m) <= r:
            lo = mid
        else:
            hi = mid
    return lo, _comb(lo, m)


def _estimated_digits(
    out: list[int], r: Any, hi: int, k: int, checked: bool, width: int, top: int
) -> tuple[int, Any, int] | None:
    """Digits m = k, k−1, … from the float estimate until r = 0 or the table covers the rest (the
    search range is below `width` and m <= top). (index of the next digit, r, hi), or None.

    C(c, m) ≈ x^m/m!·e^{−m³/24x²} with x = c − (m−1)/2, solved to first order: x ≈ x0 + m²/(24·x0)
    with x0 = (r·m!)^(1/m). Unchecked, a digit is corrected downwards only (C(c, m) <= r keeps
    r >= 0), which saves a big-int mul/div/compare per digit; see _greedy for why that is safe.
    """
    inv, root_fact, corr, half = _consts(k)
    comb, divexact = _comb, _divexact  # hot loop: local names
    small = r.bit_length() < _FLOAT_BITS  # r only shrinks: once small, always small
    for m in range(k, 0, -1):
        if not r or (hi <= width and m <= top):
            return m - 1, r, hi
        if not small:
            small = r.bit_length() < _FLOAT_BITS
        x0 = (float(r) ** inv[m] if small else _big_root(r, inv[m])) * root_fact[m]
        if x0 >= 4 * m:
            c = int(x0 + corr[m] / x0 + half[m])
            if c >= hi:
                c = hi - 1
                if c < m:  # [m, hi) is empty: only after a low digit (unchecked)
                    return None
        elif (c := newton_estimate(x0, math.log(float(r)) if small else _log(r), m, hi)) < 0:
            return None
        v = comb(c, m)
        if v > r:
            c -= 1
            v = divexact(v * (c + 1 - m), c + 1)  # C(c, m) from C(c+1, m)
            if v > r:
                c, v = _bisect(r, m, m, c)
        elif checked and c + 1 < hi and divexact(v * (c + 1), c + 1 - m) <= r:
            c, v = _bisect(r, m, c + 1, hi)
        out[m - 1] = c
        r -= v
        hi = c
    return -1, r, hi


def _greedy(rank: int, n: int, k: int, checked: bool, rows: list[list[Any]]) -> list[int] | None:
    """Greedy combinadic digits c_{k−1} > … > c_0 of rank, largest first: digit c for m = j+1 is
    the largest c < hi with C(c, m) <= r.

    Above the Pascal table's width digits come from _estimated_digits. Unchecked, a digit that
    came out one too low leaves a remainder the later digits cannot absorb; the combinadic
    representation is unique, so digits that end strictly decreasing in [0, n) with remainder 0
    are exact. None otherwise (the caller retries checked, which also corrects upwards). Below
    the width, digits are exact bisections of a table row.
    """
    out = [0] * k
    got = _estimated_digits(out, _mpz(rank), n, k, checked, len(rows[0]), len(rows) - 1)
    if got is None:
        return None
    j, r, hi = got
    while j >= 0 and r:
        row = rows[j + 1]
        c = hi - 1  # consecutive elements (runs of zero counts) need no search
        if row[c] > r:
            c = bisect_right(row, r, j + 1, c) - 1  # the largest c in [m, hi) with C(c, m) <= r
        if c <= j:  # row[m] = 1 <= r, so only a low digit upstream (unchecked) gets here
            return None
        out[j] = c
        r -= row[c]
        hi = c
        j -= 1
    if r:
        return None
    out[: j + 1] = range(j + 1)  # remainder 0: the rest is {0, 1, ..., j}
    return out


def rows_for(n: int, k: int) -> list[list[Any]]:
    """The Pascal table an unrank of a k-subset of [0, n) uses."""
    if n <= _TABLE_WIDTH:  # compositions (n = ℓ+K−1): every digit by table lookup if it fits
        return pascal_rows(n, k)
    return _tables.get(_MIN_WIDTH) or [[_mpz(1)] * 2]  # supports: few digits below 512, if any


def subset_unrank(rank: int, n: int, k: int) -> list[int]:
    """Inverse of subset_rank: the ascending k-subset of [0, n) with that rank (rank < C(n, k))."""
    rows = rows_for(n, k)
    got = _greedy(rank, n, k, False, rows)
    if got is None:
        got = _greedy(rank, n, k, True, rows)
    if got is None:  # checked mode always finishes for rank < C(n, k); callers check that bound
        raise ValueError(f"rank out of range for C({n}, {k})")
    return got
