"""The adaptive controller's online estimators (edge/estimators.py) and its client-state store."""

from __future__ import annotations

import numpy as np
import pytest

from common.codec import CSQSCodec, CSQSState, make_codec
from common.errors import CodecError
from edge.estimators import CostLine, DecayedRidge, LinkEstimator, RejectionModel
from edge.hub import ClientStates


def test_decayed_ridge_recovers_a_line_and_follows_a_change() -> None:
    rng = np.random.default_rng(0)
    fit = DecayedRidge((0.0, 0.0), (0.01, 0.01), forget=0.9)
    for _ in range(100):
        x = rng.uniform(0, 10)
        fit.update((1.0, x), 2.0 + 0.5 * x + rng.normal(0, 0.01))
    assert fit.coef == pytest.approx([2.0, 0.5], abs=0.02)
    for _ in range(60):
        x = rng.uniform(0, 10)
        fit.update((1.0, x), 1.0 + 1.5 * x)
    assert fit.coef == pytest.approx([1.0, 1.5], abs=0.02)


def test_decayed_ridge_keeps_the_prior_where_the_data_are_silent() -> None:
    fit = DecayedRidge((0.1, 0.2), (0.05, 0.05), forget=0.9)
    for _ in range(50):
        fit.update((1.0, 0.0), 0.5)  # x never varies: the slope is not identified
    a, b = fit.coef
    assert a == pytest.approx(0.5, abs=0.02)
    assert b == pytest.approx(0.2)


def _link_round(est: LinkEstimator, rng: np.random.Generator, rtt: float, bps: float) -> None:
    bits = rng.choice([400.0, 1_200.0, 4_000.0, 9_000.0])  # block sizes vary with L and codec
    est.update(bits, rtt + bits / bps + rng.uniform(0, 0.0005))


@pytest.mark.parametrize(("before", "after"), [(1e6, 5e4), (5e4, 1e6), (2e6, 5e5)])
def test_link_estimate_adapts_within_a_few_rounds_after_a_rate_change(before: float, after: float) -> None:
    rng = np.random.default_rng(1)
    est = LinkEstimator()
    for _ in range(30):
        _link_round(est, rng, 0.04, before)
    assert 1 / est.sec_per_bit == pytest.approx(before, rel=0.15)
    assert est.rtt == pytest.approx(0.04, abs=0.003)
    for _ in range(5):
        _link_round(est, rng, 0.04, after)
    assert 1 / est.sec_per_bit == pytest.approx(after, rel=0.3)


def test_link_estimate_splits_latency_and_rate() -> None:
    rng = np.random.default_rng(2)
    est = LinkEstimator()
    for _ in range(40):
        _link_round(est, rng, 0.02, 2e5)
    assert est.seconds(100.0) == pytest.approx(0.02 + 100 / 2e5, abs=0.002)
    assert est.seconds(20_000.0) == pytest.approx(0.02 + 20_000 / 2e5, rel=0.05)


def test_cost_line_fits_intercept_and_slope() -> None:
    cost = CostLine(level=0.01, intercept_share=0.5)
    for n in [1, 4, 8, 2, 16, 3] * 10:
        cost.update(n, 0.003 + 0.001 * n)
    a, b = cost.coef
    assert a == pytest.approx(0.003, abs=3e-4)
    assert b == pytest.approx(0.001, abs=1e-4)


def test_rejection_model_learns_kappa_when_the_codec_changes() -> None:
    """Rejections drawn from μ₀ + μ₁·f + κ·δ with two codecs of different δ: the fit finds κ."""
    rng = np.random.default_rng(3)
    model = RejectionModel(forget=0.999)
    for i in range(6000):
        flat = rng.uniform(0.0, 0.8)
        delta = flat * (0.8 if (i // 50) % 2 else 0.0)  # the codec switches every 50 positions
        p = 0.05 + 0.3 * flat + 0.5 * delta
        model.update(i % 8, bool(rng.random() < p), flat, delta)
    kappa = model.coef[2]
    assert kappa == pytest.approx(0.5, abs=0.1)
    assert model.rejection(0.4, 0.2) == pytest.approx(0.05 + 0.12 + 0.1, abs=0.03)
    assert np.all(np.abs(model.profile(8)) < 0.05)  # no position effect in these data


def test_rejection_model_clips_kappa_and_restores_from_a_snapshot() -> None:
    model = RejectionModel()
    for i in range(300):
        model.update(i % 4, i % 2 == 0, 0.2, 0.9 if i % 2 == 0 else 0.0)  # δ alone explains it: κ > 1
    assert model.coef[2] == 1.0
    restored = RejectionModel.restore(model.snapshot())
    assert restored.coef[0] == pytest.approx(model.coef[0], abs=0.05)
    assert restored.fit.gram[0, 0] <= 24.0 + 1e-9  # carried over, but the new text weighs in quickly


def test_client_states_are_a_bounded_lru() -> None:
    store = ClientStates(2)
    a = store.get("a")
    a.csqs["x"] = CSQSState("x", 0.1, 3)
    store.get("b")
    assert store.get("a") is a  # touched: now the most recent
    store.get("c")  # evicts b
    assert len(store) == 2
    assert store.get("a") is a
    assert not store.get("b").csqs  # b was evicted: a fresh state
    assert len(ClientStates(0).get("a").csqs) == 0


def test_csqs_state_exports_and_imports() -> None:
    spec = "csqs:alpha=0.1,eta=0.05,ell=16"
    a, b, other = (make_codec(s, 50) for s in (spec, spec, "csqs:alpha=0.2,eta=0.05,ell=16"))
    assert isinstance(a, CSQSCodec)
    assert isinstance(b, CSQSCodec)
    assert isinstance(other, CSQSCodec)
    rng = np.random.default_rng(0)
    q = np.random.default_rng(1).dirichlet(np.full(50, 0.3))
    for _ in range(20):
        a.compress(q, rng)
    state = a.export_state()
    b.import_state(state)
    assert (b.beta, b.steps) == (a.beta, a.steps) == (state.beta, state.steps)
    sa, sb = (c.compress(q, np.random.default_rng(5)).support for c in (a, b))
    assert sa is not None
    assert sb is not None
    assert sa.tolist() == sb.tolist()
    with pytest.raises(CodecError, match="does not fit"):
        other.import_state(state)
    for bad in (CSQSState(a.spec, float("nan"), 1), CSQSState(a.spec, 1.5, 1), CSQSState(a.spec, 0.1, -1)):
        with pytest.raises(CodecError, match="invalid"):
            b.import_state(bad)
