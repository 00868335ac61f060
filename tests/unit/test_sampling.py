"""common.sampling: target probabilities from logits, integer draws, and verify() statistics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from common.codec import Draft, make_codec
from common.sampling import probs_from_logits, residual, sample_counts, verify


def test_softmax_is_float32_then_float64() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 50)).astype(np.float32) * 4
    p = probs_from_logits(z, temperature=0.7, top_p=1.0)
    assert p.dtype == np.float64
    assert p.shape == (3, 50)
    s = z / np.float32(0.7)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    ref = (e / e.sum(axis=1, keepdims=True)).astype(np.float64)
    np.testing.assert_allclose(p, ref / ref.sum(axis=1, keepdims=True), rtol=0, atol=0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-15)


def test_one_dimensional_logits_give_one_row() -> None:
    z = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(probs_from_logits(z, 1.0), probs_from_logits(z[None], 1.0)[0])


def test_temperature_zero_is_one_hot_argmax_lowest_id_on_ties() -> None:
    z = np.array([[0.0, 3.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -2.0, -3.0, -0.5]])
    p = probs_from_logits(z, temperature=0.0, top_p=0.3)
    np.testing.assert_array_equal(p, np.eye(4)[[1, 0, 3]])


def test_top_p_keeps_smallest_prefix_with_deterministic_ties() -> None:
    z = np.log(np.array([[0.1, 0.3, 0.3, 0.2, 0.1]]))
    p = probs_from_logits(z, temperature=1.0, top_p=0.5)  # 0.3 (id 1) + 0.3 (id 2) reaches 0.5
    np.testing.assert_allclose(p[0], [0, 0.5, 0.5, 0, 0], atol=1e-12)
    p = probs_from_logits(z, temperature=1.0, top_p=0.25)  # only the lower id of the tied pair
    np.testing.assert_allclose(p[0], [0, 1, 0, 0, 0], atol=1e-12)
    p = probs_from_logits(z, temperature=1.0, top_p=0.85)  # ties at 0.1: ids 0 before 4
    np.testing.assert_allclose(p[0], np.array([0.1, 0.3, 0.3, 0.2, 0]) / 0.9, atol=1e-12)


@pytest.mark.parametrize(("temperature", "top_p"), [(-1.0, 1.0), (1.0, 0.0), (1.0, 1.5), (float("nan"), 1.0)])
def test_bad_params_raise(temperature: float, top_p: float) -> None:
    with pytest.raises(ValueError):
        probs_from_logits(np.zeros((1, 3)), temperature, top_p)


def test_non_finite_logits_raise() -> None:
    with pytest.raises(ValueError):
        probs_from_logits(np.array([[np.nan, 1.0]]), 1.0)


def test_sample_counts_maps_each_u_to_its_interval() -> None:
    counts = np.array([0, 2, 0, 1, 3], dtype=np.int64)

    class Fixed:
        def __init__(self, u: int) -> None:
            self.u = u

        def integers(self, low: int, high: int) -> int:
            assert (low, high) == (0, 6)
            return self.u

    got = [sample_counts(counts, Fixed(u)) for u in range(6)]  # type: ignore[arg-type]
    assert got == [1, 1, 3, 4, 4, 4]


def _bad_case() -> tuple[np.ndarray, np.ndarray]:
    """16-token target p and a deliberately bad draft q (mass on the wrong tokens)."""
    rng = np.random.default_rng(42)
    p = rng.dirichlet(np.full(16, 0.7))
    q = np.roll(p, 5) ** 2 + 0.01
    return p, q / q.sum()


@pytest.mark.parametrize("spec", ["ksqs:k=6,ell=20", "dense:fp16"])
def test_chi_square_and_resampling_rate(spec: str) -> None:
    """200k seeded rounds of compress-then-verify: output ~ p (chi-square), rejections ~ d_TV(p, q̂)."""
    p, q = _bad_case()
    n = 200_000
    rng = np.random.default_rng(7)
    codec = make_codec(spec, 16)
    base = codec.compress(q, rng)  # fixed q̂ (csqs: first token's state); draw tokens vectorised
    qhat = base.dense(16)
    if base.is_lattice:  # the integer rule of sample_counts, batched
        assert base.counts is not None
        assert base.support is not None
        cum = np.cumsum(base.counts)
        tokens = base.support[np.searchsorted(cum, rng.integers(0, base.ell, n), side="right")]
    else:
        tokens = rng.choice(16, size=n, p=qhat)
    by_token = {
        int(t): Draft(int(t), base.support, base.counts, base.ell, base.probs) for t in np.unique(tokens)
    }
    target = np.stack([p, p])
    out = np.empty(n, dtype=np.int64)
    rejected = 0
    for i, t in enumerate(tokens.tolist()):  # the real verify(), one call per round
        accepted, nxt = verify([by_token[t]], target, rng)
        out[i] = t if accepted else nxt
        rejected += accepted == 0
    observed = np.bincount(out, minlength=16)
    assert stats.chisquare(observed, n * p).pvalue > 1e-4
    d_tv = 0.5 * np.abs(p - qhat).sum()
    sigma = np.sqrt(d_tv * (1 - d_tv) / n)
    assert d_tv > 0.2  # the draft really is bad
    assert abs(rejected / n - d_tv) < 3 * sigma


def test_chi_square_detects_sample_then_quantize() -> None:
    """Power check: the same harness flags the biased rule (token from q, q̂ sent)."""
    p, q = _bad_case()
    n = 50_000
    rng = np.random.default_rng(8)
    base = make_codec("ksqs:k=6,ell=20", 16).compress(q, rng)
    tokens = rng.choice(16, size=n, p=q)
    target = np.stack([p, p])
    out = np.empty(n, dtype=np.int64)
    for i, t in enumerate(tokens.tolist()):
        accepted, nxt = verify([Draft(t, base.support, base.counts, base.ell)], target, rng)
        out[i] = t if accepted else nxt
    assert stats.chisquare(np.bincount(out, minlength=16), n * p).pvalue < 1e-6


def test_verify_checks_shapes() -> None:
    d = make_codec("ksqs:k=2,ell=4", 4).compress(np.array([0.4, 0.3, 0.2, 0.1]), np.random.default_rng(0))
    with pytest.raises(ValueError):
        verify([d], np.full((1, 4), 0.25), np.random.default_rng(0))


def test_residual_is_positive_part_and_falls_back_to_p() -> None:
    p = np.array([0.5, 0.3, 0.2, 0.0])
    d = Draft(token=0, support=np.array([0, 1], dtype=np.int64), counts=np.array([3, 1]), ell=4)
    np.testing.assert_allclose(residual(d, p), [0.0, 0.05, 0.2, 0.0], atol=1e-15)
    d_all = Draft(token=0, support=None, counts=np.array([2, 1, 1, 0]), ell=4)  # q̂ >= p everywhere
    np.testing.assert_array_equal(residual(d_all, np.array([0.5, 0.25, 0.25, 0.0])), [0.5, 0.25, 0.25, 0.0])
