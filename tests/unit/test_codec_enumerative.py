"""Enumerative ranks under each big-int backend: exhaustive bijections, big-int round trips."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec.enumerative import Ranker, composition_bound

# `bigint_backend` (tests/unit/conftest.py) is each backend in turn: gmpy2, then pure Python.


def test_subsets_are_a_bijection_onto_the_rank_range(bigint_backend: Ranker) -> None:
    for n in range(1, 10):
        for k in range(n + 1):
            ranks = []
            for s in itertools.combinations(range(n), k):
                r = bigint_backend.support_rank(np.array(s, dtype=np.int64), n)
                assert tuple(bigint_backend.support_unrank(r, n, k).tolist()) == s
                ranks.append(r)
            assert sorted(ranks) == list(range(math.comb(n, k)))


def test_compositions_are_a_bijection_onto_the_rank_range(bigint_backend: Ranker) -> None:
    for ell in range(1, 7):
        for k in range(1, 7):
            ranks = []
            for b in itertools.product(range(ell + 1), repeat=k):
                if sum(b) == ell:
                    r = bigint_backend.composition_rank(np.array(b, dtype=np.int64), ell)
                    assert tuple(bigint_backend.composition_unrank(r, ell, k).tolist()) == b
                    ranks.append(r)
            assert sorted(ranks) == list(range(composition_bound(ell, k)))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 10**6), k=st.integers(1, 80), frac=st.integers(0, 2**64 - 1))
def test_large_subset_round_trip(bigint_backend: Ranker, n: int, k: int, frac: int) -> None:
    k = min(k, n)
    rank = (math.comb(n, k) * frac) >> 64  # anywhere in [0, C(n, k)), big ints included
    s = bigint_backend.subset_unrank(rank, n, k)
    assert s == sorted(set(s))
    assert s[0] >= 0
    assert s[-1] < n
    assert bigint_backend.subset_rank(s) == rank
    assert type(bigint_backend.subset_rank(s)) is int  # never a backend type on the wire side


@settings(max_examples=100, deadline=None)
@given(ell=st.integers(1, 1024), k=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1))
def test_large_composition_round_trip(bigint_backend: Ranker, ell: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = np.bincount(rng.integers(0, k, ell) if rng.random() < 0.5 else np.zeros(ell, int), minlength=k)
    r = bigint_backend.composition_rank(counts, ell)
    assert 0 <= r < composition_bound(ell, k)
    np.testing.assert_array_equal(bigint_backend.composition_unrank(r, ell, k), counts)


def test_extreme_ranks(bigint_backend: Ranker) -> None:
    for n, k in ((151_936, 64), (151_936, 256), (303, 63), (5000, 2500)):
        top = math.comb(n, k) - 1
        assert bigint_backend.subset_unrank(top, n, k) == list(range(n - k, n))
        assert bigint_backend.subset_unrank(0, n, k) == list(range(k))
        assert bigint_backend.subset_unrank(1, n, k) == [*range(k - 1), k]
