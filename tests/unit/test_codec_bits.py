"""Wire size vs method.md §4–6 formulas, and the C-SQS online threshold's long-run loss bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.codec import CSQSCodec, make_codec

V = 50_272


def _zipf_pool(vocab: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    pool = []
    for _ in range(n):
        w = ranks ** -rng.uniform(1.0, 2.0)
        w = w[rng.permutation(vocab)]
        pool.append(w / w.sum())
    return pool


@pytest.mark.parametrize(
    ("spec", "formula"),
    [("ksqs:k=16,ell=100", 272), ("ksqs:k=32,ell=240", 524), ("qs:ell=240", 2209)],
)
def test_measured_bits_match_method_md(spec: str, formula: int) -> None:
    codec = make_codec(spec, V)
    assert codec.formula_bits() == formula
    rng = np.random.default_rng(0)
    draft_len = 4
    for q in _zipf_pool(V, 2, 1):
        drafts = [codec.compress(q, rng) for _ in range(draft_len)]
        payload = codec.encode(drafts)
        bits = 8 * len(payload)
        assert bits <= draft_len * (formula + 2) + 32 + 7  # + header, + padding to a byte
        assert 8 * (len(payload) - 4) - 7 <= draft_len * formula  # and no hidden overhead


def test_formula_components() -> None:
    ksqs = make_codec("ksqs:k=16,ell=100", V)
    assert math.ceil(math.log2(math.comb(V, 16))) == 206
    assert math.ceil(math.log2(math.comb(115, 15))) == 62
    assert ksqs.formula_bits() == 206 + 62 + 4
    assert make_codec("qs:ell=720", V).formula_bits() == 5467
    assert make_codec("dense:fp16", V).formula_bits() == 16 * V + 16
    csqs = make_codec("csqs:alpha=0.05,eta=0.02,ell=100", V)
    assert csqs.formula_bits(16) == 272 + 9  # Elias-gamma(16) = 9 bits


def test_csqs_bits_follow_k_t() -> None:
    codec = make_codec("csqs:alpha=0.05,eta=0.02,ell=240,kmax=64", V)
    rng = np.random.default_rng(2)
    drafts = [codec.compress(q, rng) for q in _zipf_pool(V, 6, 3)]
    payload = codec.encode(drafts)
    want = sum(codec.formula_bits(int(d.support.shape[0])) for d in drafts if d.support is not None)
    assert want <= 8 * (len(payload) - 4) <= want + 7


def _stream(vocab: int, n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Mixed stream: peaked (low-entropy) and flat (high-entropy) distributions, flags of which."""
    rng = np.random.default_rng(seed)
    flat = rng.random(n) < 0.4
    pool = []
    for is_flat in flat:
        z = rng.standard_normal(vocab) * (0.7 if is_flat else 6.0)
        e = np.exp(z - z.max())
        pool.append(e / e.sum())
    return pool, flat


def test_csqs_long_run_dropped_mass_bound_and_adaptive_k() -> None:
    """(1/T)·Σ L_t <= α + (β₁ + η)/(η·T) on any sequence (method.md §6); K_t grows on flat inputs."""
    alpha, eta, ell, steps = 0.05, 0.02, 64, 20_000
    codec = make_codec(f"csqs:alpha={alpha},eta={eta},ell={ell}", 256)
    assert isinstance(codec, CSQSCodec)
    pool, flat = _stream(256, 500, 9)
    rng = np.random.default_rng(10)
    losses = np.empty(steps)
    ks = np.empty(steps)
    is_flat = np.empty(steps, dtype=bool)
    for t in range(steps):
        i = (t * 7919) % len(pool)
        d = codec.compress(pool[i], rng)
        assert d.support is not None
        losses[t], ks[t], is_flat[t] = d.dropped_mass, d.support.shape[0], flat[i]
    beta1 = 1 / (2 * ell)
    assert losses.mean() <= alpha + (beta1 + eta) / (eta * steps)
    assert ks[is_flat].mean() > 2 * ks[~is_flat].mean()
    assert np.median(ks[is_flat]) > 10 * np.median(ks[~is_flat])


def test_csqs_threshold_update_rule() -> None:
    codec = make_codec("csqs:alpha=0.1,eta=0.5,ell=4,beta1=0.3", 4)
    assert isinstance(codec, CSQSCodec)
    rng = np.random.default_rng(0)
    d = codec.compress(np.array([0.5, 0.25, 0.15, 0.1]), rng)  # keeps q >= 0.3: {0}
    assert d.support is not None
    assert d.support.tolist() == [0]
    assert codec.beta == pytest.approx(0.3 + 0.5 * (0.1 - 0.5))  # 0.1
    d = codec.compress(np.array([0.5, 0.25, 0.15, 0.1]), rng)  # keeps q >= 0.1: all
    assert d.support is not None
    assert d.support.tolist() == [0, 1, 2, 3]
    assert codec.beta == pytest.approx(0.1 + 0.5 * 0.1)
    codec.beta = 5.0  # above every probability: only the argmax (lowest id on ties) survives
    d = codec.compress(np.array([0.4, 0.4, 0.2, 0.0]), rng)
    assert d.support is not None
    assert d.support.tolist() == [0]
    assert codec.beta == 1.0  # clipped from above only
    codec.beta = -3.0
    d = codec.compress(np.array([0.4, 0.4, 0.2, 0.0]), rng)
    assert d.support is not None
    assert d.support.shape[0] == 4
    assert d.dropped_mass == 0.0
