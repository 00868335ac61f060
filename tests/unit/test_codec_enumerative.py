"""Enumerative ranks: exhaustive bijections on small sets, big-int round trips on large ones."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec.enumerative import (
    composition_bound,
    composition_rank,
    composition_unrank,
    subset_rank,
    subset_unrank,
    support_rank,
    support_unrank,
)


def test_subsets_are_a_bijection_onto_the_rank_range() -> None:
    for n in range(1, 10):
        for k in range(n + 1):
            ranks = []
            for s in itertools.combinations(range(n), k):
                r = support_rank(np.array(s, dtype=np.int64), n)
                assert tuple(support_unrank(r, n, k).tolist()) == s
                ranks.append(r)
            assert sorted(ranks) == list(range(math.comb(n, k)))


def test_compositions_are_a_bijection_onto_the_rank_range() -> None:
    for ell in range(1, 7):
        for k in range(1, 7):
            ranks = []
            for b in itertools.product(range(ell + 1), repeat=k):
                if sum(b) == ell:
                    r = composition_rank(np.array(b, dtype=np.int64), ell)
                    assert tuple(composition_unrank(r, ell, k).tolist()) == b
                    ranks.append(r)
            assert sorted(ranks) == list(range(composition_bound(ell, k)))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 10**6), k=st.integers(1, 80), frac=st.integers(0, 2**64 - 1))
def test_large_subset_round_trip(n: int, k: int, frac: int) -> None:
    k = min(k, n)
    rank = (math.comb(n, k) * frac) >> 64  # anywhere in [0, C(n, k)), big ints included
    s = subset_unrank(rank, n, k)
    assert s == sorted(set(s))
    assert s[0] >= 0
    assert s[-1] < n
    assert subset_rank(s) == rank


@settings(max_examples=100, deadline=None)
@given(ell=st.integers(1, 1024), k=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1))
def test_large_composition_round_trip(ell: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = np.bincount(rng.integers(0, k, ell) if rng.random() < 0.5 else np.zeros(ell, int), minlength=k)
    r = composition_rank(counts, ell)
    assert 0 <= r < composition_bound(ell, k)
    np.testing.assert_array_equal(composition_unrank(r, ell, k), counts)


def test_extreme_ranks() -> None:
    n, k = 151_936, 64
    top = math.comb(n, k) - 1
    assert subset_unrank(top, n, k) == list(range(n - k, n))
    assert subset_unrank(0, n, k) == list(range(k))
