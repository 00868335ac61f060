"""Shaping model on virtual time: throughput, burst, delay, jitter, schedules, edge cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from link.shaping import (
    BAD,
    GOOD,
    ConstantRate,
    MarkovRate,
    Shaper,
    TokenBucket,
    bytes_between,
    normalize_rate,
    parse_schedule,
    time_to_send,
)

RATE = 2e6  # bits/s
BPS = RATE / 8  # bytes/s


def test_normalize_rate_zero_none_inf_mean_unlimited() -> None:
    assert normalize_rate(0) == math.inf
    assert normalize_rate(None) == math.inf
    assert normalize_rate(math.inf) == math.inf
    assert normalize_rate(5e5) == 5e5
    for bad in (-1.0, math.nan):
        with pytest.raises(ConfigError):
            normalize_rate(bad)


def test_back_to_back_throughput_equals_rate() -> None:
    bucket = TokenBucket(ConstantRate(RATE), burst_bytes=0)
    departures = [bucket.reserve(0.0, 1000) for _ in range(10_000)]
    # 10 MB at 250 kB/s leaves exactly after 40 s (pure serialisation, no burst).
    assert departures[-1] == pytest.approx(10_000 * 1000 / BPS, rel=1e-9)
    assert all(b > a for a, b in itertools.pairwise(departures))


def test_overloaded_poisson_arrivals_throughput_within_one_percent() -> None:
    rng = np.random.default_rng(1)
    bucket = TokenBucket(ConstantRate(RATE), burst_bytes=4096)
    sizes = rng.integers(100, 1500, size=20_000)
    # Offer twice the rate: the link must be the bottleneck.
    arrivals = np.cumsum(rng.exponential(sizes.mean() / (2 * BPS), size=sizes.size))
    last = 0.0
    for t, n in zip(arrivals, sizes, strict=True):
        last = bucket.reserve(float(t), int(n))
    assert sizes.sum() / last == pytest.approx(BPS, rel=0.01)


def test_underloaded_link_only_adds_serialisation() -> None:
    bucket = TokenBucket(ConstantRate(RATE), burst_bytes=0)
    for k in range(100):
        now = k * 1.0  # one chunk a second: the link is always idle on arrival
        assert bucket.reserve(now, 500) == pytest.approx(now + 500 / BPS)


def test_burst_goes_out_at_once_then_the_rate_applies() -> None:
    bucket = TokenBucket(ConstantRate(RATE), burst_bytes=10_000)
    assert [bucket.reserve(0.0, 2_500) for _ in range(4)] == [0.0] * 4  # bucket starts full
    assert bucket.reserve(0.0, 1_000) == pytest.approx(1_000 / BPS)
    # After a long idle gap the bucket refills to the cap, never above it.
    assert bucket.reserve(100.0, 10_000) == 100.0
    assert bucket.reserve(100.0, 1) == pytest.approx(100.0 + 1 / BPS)


def test_partial_refill_and_chunk_larger_than_burst() -> None:
    bucket = TokenBucket(ConstantRate(RATE), burst_bytes=1_000)
    assert bucket.reserve(0.0, 1_000) == 0.0
    # 0.002 s refills 500 bytes; a 3000-byte chunk then waits for the other 2500.
    assert bucket.reserve(0.002, 3_000) == pytest.approx(0.002 + 2_500 / BPS)


def test_zero_and_unlimited_rate_never_delay() -> None:
    for schedule in (ConstantRate(0), ConstantRate(math.inf)):
        bucket = TokenBucket(schedule, burst_bytes=0)
        assert [bucket.reserve(t, 1 << 20) for t in (0.0, 0.0, 1.5)] == [0.0, 0.0, 1.5]
        shaper = Shaper(schedule)
        assert shaper.chunk_limit(0.0) >= 1 << 20


def test_delay_is_added_exactly() -> None:
    shaper = Shaper(ConstantRate(RATE), delay_s=0.05, origin=10.0)
    assert shaper.departure(10.0, 1250) == pytest.approx(10.0 + 1250 / BPS + 0.05)
    unlimited = Shaper(ConstantRate(0), delay_s=0.05)
    assert [unlimited.departure(t, 100) for t in (1.0, 2.0)] == [pytest.approx(1.05), pytest.approx(2.05)]


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 0.02), min_size=1, max_size=60),
    sizes=st.lists(st.integers(1, 5000), min_size=60, max_size=60),
    jitter=st.floats(0.0, 0.1),
    delay=st.floats(0.0, 0.05),
    seed=st.integers(0, 2**32 - 1),
)
def test_jitter_bounded_and_order_preserving(
    gaps: list[float], sizes: list[int], jitter: float, delay: float, seed: int
) -> None:
    shaper = Shaper(ConstantRate(RATE), delay_s=delay, jitter_s=jitter, rng=np.random.default_rng(seed))
    reference = TokenBucket(ConstantRate(RATE))  # same bucket without delay/jitter
    now, last = 0.0, -math.inf
    for gap, n in zip(gaps, sizes, strict=False):
        now += gap
        depart = shaper.departure(now, n)
        serialised = reference.reserve(now, n)
        assert depart >= last  # FIFO: a TCP stream is never reordered
        assert depart >= now
        assert serialised + max(0.0, delay - jitter) - 1e-12 <= depart <= serialised + delay + jitter + 1e-12
        last = depart


def test_jitter_is_seeded() -> None:
    def run(seed: int) -> list[float]:
        s = Shaper(ConstantRate(0), delay_s=0.05, jitter_s=0.01, rng=np.random.default_rng(seed))
        return [s.departure(float(k), 10) for k in range(20)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert len({round(d - k, 9) for k, d in enumerate(run(3))}) > 1  # it really jitters


@settings(max_examples=60, deadline=None)
@given(
    arrivals=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=40),
    sizes=st.lists(st.integers(1, 4000), min_size=40, max_size=40),
    burst=st.integers(0, 8000),
)
def test_token_bucket_conformance(arrivals: list[float], sizes: list[int], burst: int) -> None:
    # Bytes leaving over any window never exceed burst + rate × (window from service start).
    bucket = TokenBucket(ConstantRate(RATE), burst_bytes=burst)
    times = sorted(arrivals)
    departs: list[float] = []
    starts: list[float] = []
    for t, n in zip(times, sizes, strict=False):
        starts.append(max(t, departs[-1] if departs else -math.inf))
        departs.append(bucket.reserve(t, n))
    for i in range(len(departs)):
        total = 0
        for j in range(i, len(departs)):
            total += sizes[j]
            assert total <= burst + BPS * (departs[j] - starts[i]) + 1e-6


def test_markov_alternates_when_it_must_switch() -> None:
    sched = MarkovRate(good_bps=16_000, bad_bps=8_000, p_gb=1.0, p_bg=1.0, step=1.0)
    assert [sched.state_at(k) for k in range(6)] == [GOOD, BAD] * 3
    assert sched.rate_at(0.5) == 16_000
    assert sched.rate_at(1.0) == 8_000
    assert sched.next_change(0.0) == 1.0
    assert sched.next_change(1.0) == 2.0
    # 2000 B in the good second, 1000 B in the bad one: 3000 B need exactly 2 s.
    assert time_to_send(sched, 0.0, 3000) == pytest.approx(2.0)
    assert time_to_send(sched, 0.5, 1500) == pytest.approx(1.5)
    assert bytes_between(sched, 0.0, 2.0) == pytest.approx(3000)
    assert bytes_between(sched, 0.0, 100.0, cap=500) == 500


def test_markov_holds_state_without_transitions() -> None:
    stuck = MarkovRate(good_bps=2e6, bad_bps=5e5, p_gb=0.0, p_bg=0.0, step=0.1, start=BAD)
    assert {stuck.state_at(k) for k in range(3000)} == {BAD}
    assert stuck.stationary_bad() == 0.0


def test_markov_trajectory_is_seeded_and_query_order_independent() -> None:
    a = MarkovRate(2e6, 5e5, 0.1, 0.3, seed=7)
    b = MarkovRate(2e6, 5e5, 0.1, 0.3, seed=7)
    c = MarkovRate(2e6, 5e5, 0.1, 0.3, seed=8)
    late = b.state_at(5000)  # jump ahead first: must not change the trajectory
    states_a = [a.state_at(k) for k in range(5001)]
    assert states_a[-1] == late
    assert states_a == [b.state_at(k) for k in range(5001)]
    assert states_a != [c.state_at(k) for k in range(5001)]


def test_markov_long_run_matches_stationary_distribution() -> None:
    sched = MarkovRate(good_bps=2e6, bad_bps=5e5, p_gb=0.1, p_bg=0.3, step=1.0, seed=0)
    n = 100_000
    frac_bad = sum(sched.state_at(k) for k in range(n)) / n
    assert frac_bad == pytest.approx(0.25, abs=0.01)
    # Long-run throughput of a saturated link equals the mean rate within 1 %.
    bucket = TokenBucket(sched)
    total = sched.mean_rate() / 8 * n
    assert total / bucket.reserve(0.0, int(total)) == pytest.approx(sched.mean_rate() / 8, rel=0.01)


def test_shaper_chunk_limit_tracks_the_rate() -> None:
    assert Shaper(ConstantRate(2e6)).chunk_limit(0.0) == 1250  # 5 ms at 250 kB/s
    assert Shaper(ConstantRate(5e4)).chunk_limit(0.0) == 64  # floor keeps overhead sane
    assert Shaper(ConstantRate(1e9)).chunk_limit(0.0) == 16384
    sched = MarkovRate(16_000_000, 800_000, 1.0, 1.0)
    shaper = Shaper(sched, origin=100.0)
    assert shaper.rate_at(100.2) == 16e6
    assert shaper.rate_at(101.2) == 8e5
    assert shaper.chunk_limit(101.2) == 500


@pytest.mark.parametrize(
    "spec",
    [
        "markov:good=2e6,bad=5e5,p_gb=0.1",  # missing p_bg
        "markov:good=2e6,bad=5e5,p_gb=0.1,p_bg=0.3,colour=red",
        "markov:good=2e6,bad=0,p_gb=0.1,p_bg=0.3",
        "markov:good=2e6,bad=5e5,p_gb=1.5,p_bg=0.3",
        "markov:good=2e6,bad=5e5,p_gb=0.1,p_bg=0.3,step=0",
        "markov:good=2e6,bad=5e5,p_gb=0.1,p_bg=0.3,dir=sideways",
        "markov:good=2e6,bad=5e5,p_gb=0.1,p_bg=0.3,start=ugly",
        "markov:good",
        "constant:1e6",
        "gilbert:good=1",
    ],
)
def test_bad_schedule_specs_are_rejected(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_schedule(spec)


def test_schedule_specs_parse() -> None:
    assert parse_schedule("constant").kind == "constant"
    spec = parse_schedule("markov:good=2e6,bad=5e5,p_gb=0.1,p_bg=0.3,step=1.0,seed=0")
    assert spec.directions == ("uplink",)
    built = spec.build(default_seed=99)
    assert isinstance(built, MarkovRate)
    assert built.seed == 0  # the spec's seed wins over --seed
    assert parse_schedule("markov:good=1,bad=1,p_gb=0,p_bg=0,dir=both").directions == ("uplink", "downlink")
    unseeded = parse_schedule("markov:good=1,bad=1,p_gb=0,p_bg=0").build(default_seed=5)
    assert isinstance(unseeded, MarkovRate)
    assert unseeded.seed == 5
