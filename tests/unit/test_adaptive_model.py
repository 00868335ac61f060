"""The adaptive controller's pure model (edge/control.py): distortion, expected tokens, throughput, choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec import make_codec, top_k_support
from edge.candidates import CandidateCodec, Shadows, evaluate
from edge.control import (
    TOP,
    Candidate,
    Timing,
    choose,
    csqs_operating_point,
    expected_tokens,
    serial_rate,
    sparse_distortion,
    streamed_rate,
    top_probs,
)
from edge.probe import Observed, distortion

V = 300


def _q(seed: int, scale: float) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal(V) * scale
    e = np.exp(z - z.max())
    return np.asarray(e / e.sum())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.3, 8.0),
    k=st.integers(1, TOP),
    ell=st.integers(1, 1024),
)
def test_sparse_distortion_equals_the_codecs_own(seed: int, scale: float, k: int, ell: int) -> None:
    """δ predicted from q's top probabilities == d_TV(q, q̂) of the K-SQS draft actually produced."""
    q = _q(seed, scale)
    top = top_probs(q, top_k_support(q, TOP))[None, :]
    predicted = sparse_distortion(top, np.array([k]), np.array([ell]))[0, 0]
    draft = make_codec(f"ksqs:k={k},ell={ell}", V).compress(q, np.random.default_rng(0))
    assert predicted == pytest.approx(distortion(q, draft), abs=1e-12)


def test_sparse_distortion_shrinks_with_k_and_vanishes_on_one_hot() -> None:
    q = _q(1, 2.0)
    top = top_probs(q, top_k_support(q, TOP))[None, :]
    ks = np.array([1, 4, 16, 64])
    d = sparse_distortion(top, ks, np.full(4, 1024))[0]
    assert np.all(np.diff(d) < 0)
    one_hot = np.zeros((1, TOP))
    one_hot[0, 0] = 1.0
    assert np.all(sparse_distortion(one_hot, ks, np.array([1, 4, 64, 256])) == 0.0)


def test_csqs_operating_point_meets_alpha() -> None:
    tops = np.stack([top_probs(q, top_k_support(q, TOP)) for q in (_q(s, 6.0) for s in range(50))])
    sizes_by_alpha = []
    for alpha in (0.02, 0.05, 0.15):
        beta, sizes = csqs_operating_point(tops, alpha, 64)
        dropped = 1.0 - np.array([t[:k].sum() for t, k in zip(tops, sizes, strict=True)])
        assert dropped.mean() <= alpha + 1e-9
        assert beta > 0
        sizes_by_alpha.append(sizes.mean())
    assert sizes_by_alpha[0] > sizes_by_alpha[1] > sizes_by_alpha[2] >= 1


@given(a=st.floats(0.0, 0.99), n=st.integers(1, 20))
def test_expected_tokens_matches_the_iid_closed_form(a: float, n: int) -> None:
    got = expected_tokens(np.full((1, n), a))[0, -1]
    assert got == pytest.approx((1 - a ** (n + 1)) / (1 - a), rel=1e-9)


def _timing(rtt: float = 0.02, bps: float = 1e7, draft: float = 0.001, verify: float = 0.003) -> Timing:
    return Timing(rtt, 1.0 / bps, 200.0, 0.0, draft, verify, 0.0002)


def _best_len(rates: np.ndarray) -> int:
    return choose(rates, None, None).draft_len


def test_longer_blocks_when_rtt_dominates_and_acceptance_is_high() -> None:
    cand = [Candidate(bits=200.0, cpu=0.0, distortion=0.0)]
    high = serial_rate(_timing(rtt=0.08), cand, np.full(16, 0.05))
    low_rtt = serial_rate(_timing(rtt=0.001), cand, np.full(16, 0.05))
    low_acc = serial_rate(_timing(rtt=0.08), cand, np.full(16, 0.6))
    assert _best_len(high) >= 12
    assert _best_len(low_rtt) < _best_len(high)
    assert _best_len(low_acc) <= _best_len(high) // 3


def test_smaller_payload_codec_when_the_uplink_is_slow() -> None:
    cands = [
        Candidate(bits=20.0, cpu=0.0, distortion=0.3),  # e.g. top-1
        Candidate(bits=600.0, cpu=0.0, distortion=0.05),  # e.g. top-64
        Candidate(bits=32_000.0, cpu=0.0, distortion=0.0),  # e.g. dense fp16
    ]
    m = np.full(16, 0.15)
    picks = [choose(serial_rate(_timing(bps=bps), cands, m), None, None).index for bps in (1e4, 1e6, 1e9)]
    assert picks == [0, 1, 2]


def test_streamed_rate_approaches_l_over_bottleneck_and_depth_covers_latency() -> None:
    cand = [Candidate(bits=100.0, cpu=0.0, distortion=0.0)]
    t = _timing(rtt=0.04, bps=1e8, draft=0.001, verify=0.002)
    rates, depths = streamed_rate(t, cand, np.full(8, 0.0), max_depth=64)
    lens = np.arange(1, 9)
    draft = lens * 0.001
    verify = 0.002 + lens * 0.0002
    latency = draft + 0.04 + verify + 1e-8 * (200 + 100 * lens)
    assert np.all(depths[0] >= np.ceil(latency / np.maximum(draft, verify)) - 1e-9)
    assert 0.7 * 8 / 0.008 < rates[0, -1] <= 8 / 0.008  # a → 1: L drafts per bottleneck interval
    assert rates[0, 0] < rates[0, -1]
    shallow, _ = streamed_rate(t, cand, np.full(8, 0.0), max_depth=1)
    assert np.all(shallow <= rates + 1e-9)


def test_choose_keeps_the_current_codec_within_the_hysteresis() -> None:
    rates = np.array([[10.0, 12.0], [10.0, 12.3]])
    assert choose(rates, None, current=0, hysteresis=0.05).index == 0
    assert choose(rates, None, current=0, hysteresis=0.01).index == 1
    assert choose(rates, None, current=None).index == 1


@settings(max_examples=80, deadline=None)
@given(
    rtt=st.floats(0.0, 1.0),
    bps=st.floats(1e3, 1e10),
    draft=st.floats(0.0, 0.5),
    verify=st.floats(0.0, 2.0),
    mismatch=st.floats(-0.5, 1.5),
    bits=st.lists(st.floats(1.0, 1e6), min_size=1, max_size=6),
    lens=st.lists(st.integers(1, 16), min_size=1, max_size=16, unique=True),
    streamed=st.booleans(),
)
def test_choice_stays_within_the_allowed_lengths_and_candidates(
    rtt: float,
    bps: float,
    draft: float,
    verify: float,
    mismatch: float,
    bits: list[float],
    lens: list[int],
    streamed: bool,
) -> None:
    cands = [Candidate(b, 1e-5, d) for b, d in zip(bits, np.linspace(0, 0.5, len(bits)), strict=True)]
    t = Timing(rtt, 1.0 / bps, 100.0, 0.0, draft, verify, 0.0)
    m = np.full(16, mismatch)
    if streamed:
        rates, depths = streamed_rate(t, cands, m, max_depth=4)
        assert np.all((depths >= 1) & (depths <= 4))
    else:
        rates, depths = serial_rate(t, cands, m), None
    assert np.all(np.isfinite(rates))
    assert np.all(rates > 0)
    c = choose(rates, depths, None, lens)
    assert c.draft_len in lens
    assert 0 <= c.index < len(cands)
    assert c.rate > 0


def test_cached_candidate_distortion_equals_the_direct_computation() -> None:
    """evaluate() caches each position's δ per (spec, K); the means equal a fresh computation, also
    after the window slides (new positions computed, old ones reused)."""
    rng = np.random.default_rng(5)
    specs = (
        "ksqs:k=4,ell=16",
        "ksqs:k=16,ell=100",
        "ksqs:k=64,ell=240",
        "csqs:alpha=0.1,eta=0.02,ell=240,kmax=64",
    )
    cands = [CandidateCodec(s, 1000) for s in specs]

    def obs() -> Observed:
        top = np.sort(rng.dirichlet(np.full(TOP, 0.3)))[::-1]
        return Observed(0.0, 1.0 - float(top[0]), top, {})

    window = [obs() for _ in range(12)]
    for _ in range(3):
        _, deltas, _ = evaluate(cands, [0.0] * len(cands), window, Shadows(cands, {}, 32))
        tops = np.stack([o.top for o in window if o.top is not None])
        for cand, got in zip(cands[:3], deltas[:3], strict=True):
            want = sparse_distortion(tops, np.array([cand.k]), np.array([cand.ell])).mean()
            assert got == pytest.approx(want, abs=1e-12)
        window = window[3:] + [obs() for _ in range(3)]  # the window slides by a block
