"""Test statistics shared by the distribution tests (one chi-square for every exactness check)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def chi_square_pvalue(counts: np.ndarray, p: np.ndarray) -> float:
    """Pearson chi-square over cells with expected count >= 5; the rest pooled into one cell."""
    n = counts.sum()
    expected = p * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    assert obs[~keep].sum() == 0, "a token with p = 0 was produced"
    return float(stats.chisquare(obs[keep], exp[keep] * obs.sum() / exp[keep].sum()).pvalue)
