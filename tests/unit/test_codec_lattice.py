"""Lattice quantizer (Reznik) properties, deterministic ties, top-K selection and token draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec import lattice_quantize, make_codec, top_k_support
from common.codec.lattice import lattice_quantize_sparse
from common.errors import CodecError

FAST = settings(max_examples=150, deadline=None)


@st.composite
def prob_vectors(draw: st.DrawFn, max_m: int = 64) -> np.ndarray:
    m = draw(st.integers(1, max_m))
    kind = draw(st.sampled_from(["uniform", "peaked", "ties", "sparse"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        w = rng.random(m)
    elif kind == "peaked":
        w = np.exp(rng.standard_normal(m) * 6)
    elif kind == "ties":
        w = rng.integers(0, 3, m).astype(float)
    else:
        w = np.where(rng.random(m) < 0.7, 0.0, rng.random(m))
    if w.sum() == 0:
        w[0] = 1.0
    out: np.ndarray = w / w.sum()
    return out


@FAST
@given(p=prob_vectors(), ell=st.integers(1, 1000))
def test_lattice_properties(p: np.ndarray, ell: int) -> None:
    b = lattice_quantize(p, ell)
    m = p.shape[0]
    assert b.dtype == np.int64
    assert b.shape == p.shape
    assert (b >= 0).all()
    assert int(b.sum()) == ell
    assert np.abs(b / ell - p).max() <= (1 - 1 / m) / ell + 1e-12
    assert 0.5 * np.abs(b / ell - p).sum() <= min(1.0, m / (4 * ell)) + 1e-12


def test_lattice_worked_example_and_deterministic_ties() -> None:
    assert lattice_quantize(np.array([0.45, 0.35, 0.2]), 4).tolist() == [2, 1, 1]
    # ℓp = (1.5, 1.5, 1.5, 1.5) → b' = 2 each, Δ = −2: the two lowest ids among equal ζ lose 1.
    assert lattice_quantize(np.full(4, 0.25), 6).tolist() == [1, 1, 2, 2]
    # ℓp = (0.4,)*5 → b' = 0, Δ = +2: ties go to the lowest ids.
    assert lattice_quantize(np.full(5, 0.2), 2).tolist() == [1, 1, 0, 0, 0]


@pytest.mark.parametrize("bad", [np.array([0.5, -0.1, 0.6]), np.array([np.nan, 1.0]), np.zeros(3)])
def test_lattice_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(CodecError):
        lattice_quantize(bad, 10)
    with pytest.raises(CodecError):
        lattice_quantize(np.array([1.0]), 0)


@FAST
@given(p=prob_vectors(max_m=400), k=st.integers(1, 80))
def test_top_k_support_matches_stable_sort(p: np.ndarray, k: int) -> None:
    k = min(k, p.shape[0])
    want = np.sort(np.lexsort((np.arange(p.shape[0]), -p))[:k])
    np.testing.assert_array_equal(top_k_support(p, k), want)


def test_top_k_support_large_vocab_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.integers(0, 50, 151_936).astype(float)  # heavy ties across blocks
        k = int(rng.integers(1, 65))
        want = np.sort(np.lexsort((np.arange(q.shape[0]), -q))[:k])
        np.testing.assert_array_equal(top_k_support(q, k), want)


SPECS = [
    "qs:ell=30",
    "ksqs:k=5,ell=20",
    "csqs:alpha=0.1,eta=0.05,ell=16",
    "csqs:alpha=0.1,eta=0.1,ell=8,kmax=3",
]


@FAST
@given(p=prob_vectors(max_m=200), spec=st.sampled_from(SPECS), seed=st.integers(0, 2**32 - 1))
def test_sampled_token_is_in_support_with_positive_count(p: np.ndarray, spec: str, seed: int) -> None:
    codec = make_codec(spec, p.shape[0])
    rng = np.random.default_rng(seed)
    for _ in range(3):
        d = codec.compress(p, rng)
        assert d.counts is not None
        assert int(d.counts.sum()) == d.ell
        assert d.count(d.token) >= 1
        if d.support is not None:
            assert d.token in d.support.tolist()
            assert d.dropped_mass == pytest.approx(1 - p[d.support].sum(), abs=1e-12)
        assert math.isclose(d.dense(p.shape[0]).sum(), 1.0)


def test_ksqs_draft_matches_definition() -> None:
    q = np.array([0.05, 0.4, 0.05, 0.3, 0.2])
    d = make_codec("ksqs:k=3,ell=10", 5).compress(q, np.random.default_rng(0))
    assert d.support is not None
    assert d.counts is not None
    assert d.support.tolist() == [1, 3, 4]
    assert d.counts.tolist() == lattice_quantize(np.array([0.4, 0.3, 0.2]) / 0.9, 10).tolist()
    assert d.dropped_mass == pytest.approx(0.1)


def _reference_lattice(p: np.ndarray, ell: int) -> np.ndarray:
    """method.md §3 verbatim: full stable sort by (ζ, id)."""
    x = ell * p / p.sum()
    b = np.floor(x + 0.5).astype(np.int64)
    delta = ell - int(b.sum())
    zeta = b - x
    ids = np.arange(p.shape[0])
    if delta > 0:
        b[np.lexsort((ids, zeta))[:delta]] += 1
    elif delta < 0:
        b[np.lexsort((ids, -zeta))[:-delta]] -= 1
    out: np.ndarray = b
    return out


@settings(max_examples=80, deadline=None)
@given(
    m=st.integers(1, 6000),
    ell=st.integers(1, 1024),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["flat", "peaked", "ties", "sparse"]),
)
def test_lattice_matches_reference_on_long_vectors(m: int, ell: int, seed: int, kind: str) -> None:
    """The sparse fast path (M > 512) and the dense path both equal the textbook algorithm."""
    rng = np.random.default_rng(seed)
    if kind == "flat":  # ℓ < M/4 here sends the sparse path to its dense fallback
        w = rng.random(m)
    elif kind == "peaked":
        w = np.exp(rng.standard_normal(m) * 5)
    elif kind == "ties":
        w = rng.integers(1, 4, m).astype(float)
    else:
        w = np.where(rng.random(m) < 0.9, 0.0, rng.random(m)) + (np.arange(m) == 0)
    p = w / w.sum()
    want = _reference_lattice(p, ell)
    np.testing.assert_array_equal(lattice_quantize(p, ell), want)
    ids, counts = lattice_quantize_sparse(p, ell)
    np.testing.assert_array_equal(ids, np.flatnonzero(want))
    np.testing.assert_array_equal(counts, want[want > 0])


@FAST
@given(
    cols=st.integers(17, 80),
    tail=st.integers(0, 63),
    k=st.integers(1, 8),
    levels=st.integers(2, 1000),
    seed=st.integers(0, 2**32 - 1),
)
def test_top_k_prefilter_matches_stable_sort(cols: int, tail: int, k: int, levels: int, seed: int) -> None:
    """Vocabularies past 128·k take the grouped prefilter (and its ragged tail); few levels = ties."""
    n = 64 * cols + tail
    q = np.random.default_rng(seed).integers(0, levels, n).astype(np.float64)
    want = np.sort(np.lexsort((np.arange(n), -q))[:k])
    np.testing.assert_array_equal(top_k_support(q, k), want)
