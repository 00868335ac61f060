"""Bootstrap confidence intervals over prompts: ratios of sums, and paired ratios between two arms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

REPS = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (None when there is no data)."""

    value: float | None
    lo: float | None = None
    hi: float | None = None

    def as_list(self) -> list[float | None]:
        return [self.value, self.lo, self.hi]

    def overlaps(self, other: Estimate) -> bool:
        """True when the two intervals overlap (or either is missing)."""
        if None in (self.lo, self.hi, other.lo, other.hi):
            return True
        lo, hi, olo, ohi = (float(x) for x in (self.lo, self.hi, other.lo, other.hi))  # type: ignore[arg-type]
        return not (hi < olo or ohi < lo)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def ratio_of_sums(num: Sequence[float], den: Sequence[float], seed: int = 0) -> Estimate:
    """Σnum/Σden with a percentile-bootstrap interval, resampling the items (prompts) with replacement."""
    n_arr, d_arr = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if n_arr.size == 0 or d_arr.sum() <= 0:
        return Estimate(None)
    point = float(n_arr.sum() / d_arr.sum())
    if n_arr.size < 2:
        return Estimate(point)
    idx = np.random.default_rng(seed).integers(0, n_arr.size, size=(REPS, n_arr.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = n_arr[idx].sum(axis=1) / d_arr[idx].sum(axis=1)
    lo, hi = _interval(samples)
    return Estimate(point, lo, hi)


def paired_ratio(
    a: Mapping[int, tuple[float, float]], b: Mapping[int, tuple[float, float]], seed: int = 0
) -> Estimate:
    """(Σa_num/Σa_den) / (Σb_num/Σb_den) over the prompts both arms completed, resampled jointly.

    a, b: prompt index → (numerator, denominator), e.g. (tokens, seconds). Resampling the same
    prompts for both arms keeps the pairing (same prompt, same seed), which removes the
    prompt-to-prompt variance from the comparison.
    """
    keys = sorted(set(a) & set(b))
    if not keys:
        return Estimate(None)
    an, ad = (np.array([a[k][j] for k in keys], dtype=np.float64) for j in (0, 1))
    bn, bd = (np.array([b[k][j] for k in keys], dtype=np.float64) for j in (0, 1))
    if ad.sum() <= 0 or bd.sum() <= 0 or bn.sum() <= 0:
        return Estimate(None)
    point = float((an.sum() / ad.sum()) / (bn.sum() / bd.sum()))
    if len(keys) < 2:
        return Estimate(point)
    idx = np.random.default_rng(seed).integers(0, len(keys), size=(REPS, len(keys)))
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = (an[idx].sum(1) / ad[idx].sum(1)) / (bn[idx].sum(1) / bd[idx].sum(1))
    lo, hi = _interval(samples)
    return Estimate(point, lo, hi)


def verdict(ratio: Estimate, target: float = 1.0) -> str:
    """'ahead' / 'behind' when the paired interval excludes `target`, else 'not separated'."""
    if ratio.lo is None or ratio.hi is None or ratio.value is None:
        return "no interval"
    if ratio.lo > target:
        return "ahead"
    if ratio.hi < target:
        return "behind"
    return "not separated"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation); None for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None
