"""The adaptive policy in closed loop on a synthetic link (tests/support/linksim.py): real codecs and
verify, simulated time, deterministic. Limits, cold start, adaptation to a rate change, carry-over."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from common.codec import CSQSCodec, make_codec, parse_codec_spec
from common.types import SamplingParams
from edge.adaptive import AdaptivePolicy, AutoRequest, make_policy
from edge.hub import AdaptiveHub
from edge.policy import DraftPolicy, StaticPolicy
from edge.probe import ProbeCodec
from tests.support.linksim import Clock, Env, SimRun, Text, run_serial, run_streamed

V = 500
KINDS = frozenset({"ksqs", "csqs", "qs", "dense"})
DEFAULT = "ksqs:k=16,ell=100"


def _hub(kinds: frozenset[str] = KINDS, max_len: int = 16) -> AdaptiveHub:
    return AdaptiveHub(V, kinds, DEFAULT, max_len, client_states=8)


def _adaptive(
    hub: AdaptiveHub, clock: Clock, temp: float, pipeline: bool = False, seed: int = 0
) -> AdaptivePolicy:
    params = SamplingParams(temperature=temp, seed=seed, max_new_tokens=100)
    return AdaptivePolicy(AutoRequest(True, True, "c", hub), DEFAULT, 4, params, pipeline, 4, clock=clock)


def _constant(bps: float) -> Callable[[float], float]:
    return lambda t: bps


def test_cold_start_uses_the_static_settings_then_decides() -> None:
    hub, clock = _hub(), Clock()
    policy = _adaptive(hub, clock, 1.0)
    run = run_serial(policy, Env(rate=_constant(1e6)), Text(vocab=V), clock, max_tokens=60)
    assert run.specs[0] == DEFAULT
    assert run.lens[0] == 4
    assert policy.decisions > 0
    assert len(set(run.lens)) > 1  # the controller (and its stopping rule) shaped blocks


@pytest.mark.parametrize("pipeline", [False, True])
def test_never_exceeds_the_clouds_limits(pipeline: bool) -> None:
    hub, clock = _hub(kinds=frozenset({"ksqs"}), max_len=3), Clock()
    runner = run_streamed if pipeline else run_serial
    for seed in range(2):
        policy = _adaptive(hub, clock, 1.0, pipeline, seed)
        run = runner(
            policy, Env(rate=_constant(1e5)), Text(vocab=V, seed=seed), clock, max_tokens=80, seed=seed
        )
        assert max(run.lens) <= 3
        assert {parse_codec_spec(s).kind for s in run.specs} == {"ksqs"}
        assert 1 <= policy.depth <= 4
        assert run.tokens == 80


def _bits_per_draft(hub: AdaptiveHub, run: SimRun, lo: int, hi: int) -> float:
    return float(np.mean([hub.candidate(s).bits(None) for s in run.specs[lo:hi]]))


def test_smaller_codecs_on_a_slow_uplink_and_adapts_within_rounds_after_a_rate_change() -> None:
    """The uplink drops 100× in the middle of a request: within a few blocks the codec shrinks.

    On this text the best static codec at 1e5 bit/s is K-SQS K=16, ℓ=64 (156 bits per draft),
    at 1e7 a 500-bit one is still cheap, so the payload shrinks ~3× (measured, not assumed 5×).
    """
    hub, clock = _hub(kinds=frozenset({"ksqs", "dense"})), Clock()
    warm = _adaptive(hub, clock, 1.0)
    run_serial(warm, Env(rate=_constant(1e7)), Text(vocab=V, seed=9), clock, max_tokens=60)  # link known
    change = clock.t + 0.3
    policy = _adaptive(hub, clock, 1.0, seed=1)
    run = run_serial(
        policy, Env(rate=lambda t: 1e7 if t < change else 1e5), Text(vocab=V, seed=1), clock, max_tokens=150
    )
    first_slow = int(np.searchsorted(run.sent, change))  # first block sent on the slow link
    assert 4 <= first_slow <= len(run.specs) - 20
    fast = _bits_per_draft(hub, run, 2, first_slow)
    bits = [hub.candidate(s).bits(None) for s in run.specs]
    # one slow verdict (the first block sent after the change) is enough to move off the big codec
    assert min(bits[first_slow : first_slow + 3]) < fast / 2
    slow_tail = _bits_per_draft(hub, run, len(run.specs) - 15, len(run.specs))
    assert fast > 2.5 * slow_tail  # far smaller payloads once the link is slow
    assert 1 / hub.link.sec_per_bit == pytest.approx(1e5, rel=0.3)


def test_longer_blocks_when_the_round_trip_dominates() -> None:
    lens = {}
    for rtt in (0.002, 0.2):
        hub, clock = _hub(kinds=frozenset({"ksqs"})), Clock()
        policy = _adaptive(hub, clock, 0.0)  # greedy: q one-hot, acceptance from the mismatch alone
        run = run_serial(policy, Env(rate=_constant(1e7), rtt=rtt), Text(vocab=V, noise=0.2), clock, 120)
        lens[rtt] = float(np.mean(run.lens[3:-1]))
    assert lens[0.2] > 2 * lens[0.002]


@pytest.mark.parametrize("bps", [3e4, 1e6])
def test_adaptive_is_not_far_below_the_static_settings(bps: float) -> None:
    """Deterministic synthetic check that the model-based choice is competitive with fixed settings."""

    def rate(make: Callable[[Clock, int], DraftPolicy], runs: int = 3) -> float:
        clock, tokens, seconds = Clock(), 0, 0.0
        for seed in range(runs):
            got = run_serial(
                make(clock, seed), Env(rate=_constant(bps)), Text(vocab=V, seed=seed), clock, 100, seed
            )
            tokens, seconds = tokens + got.tokens, seconds + got.seconds
        return tokens / seconds

    def static(spec: str, n: int) -> Callable[[Clock, int], DraftPolicy]:
        return lambda clock, seed: StaticPolicy(n, make_codec(spec, V), 1)

    hub = _hub()
    adaptive = rate(lambda clock, seed: _adaptive(hub, clock, 1.0, seed=seed))
    statics = [rate(static(spec, n)) for spec in ("ksqs:k=4,ell=16", DEFAULT) for n in (2, 4)]
    assert adaptive >= 0.85 * max(statics)


def test_csqs_threshold_carries_over_between_a_clients_requests() -> None:
    hub = _hub()
    spec = "csqs:alpha=0.05,eta=0.02,ell=240"
    params = SamplingParams(temperature=1.0, seed=0, max_new_tokens=50)
    first = make_policy(spec, 4, V, params, False, 1, AutoRequest(False, False, "alice", hub))
    run_serial(first, Env(rate=_constant(1e6)), Text(vocab=V), Clock(), 50)
    kept = hub.clients.get("alice").csqs[parse_codec_spec(spec).canonical]
    assert kept.steps > 0
    assert kept.beta != pytest.approx(1 / 480)  # moved away from β₁
    second = make_policy(spec, 4, V, params, False, 1, AutoRequest(False, False, "alice", hub))
    assert isinstance(second, StaticPolicy)
    assert isinstance(second.codec, CSQSCodec)
    assert (second.codec.beta, second.codec.steps) == (kept.beta, kept.steps)
    stranger = make_policy(spec, 4, V, params, False, 1, AutoRequest(False, False, "bob", hub))
    assert isinstance(stranger, StaticPolicy)
    assert isinstance(stranger.codec, CSQSCodec)
    assert stranger.codec.beta == pytest.approx(1 / 480)


def test_adaptive_csqs_codec_starts_from_its_shadow_threshold() -> None:
    """A C-SQS codec the controller switches to starts where that codec's threshold would be."""
    hub, clock = _hub(kinds=frozenset({"csqs"})), Clock()
    policy = _adaptive(hub, clock, 1.0)
    run_serial(policy, Env(rate=_constant(3e4)), Text(vocab=V), clock, 80)
    used = [c.inner for c in policy.pool.codecs.values() if isinstance(c, ProbeCodec)]
    csqs = [c for c in used if isinstance(c, CSQSCodec)]
    assert csqs
    for codec in csqs:
        assert hub.clients.get("c").csqs[codec.spec].beta == codec.beta


def test_adaptive_streamed_block_lengths_do_not_change_a_seeded_text() -> None:
    """Streamed chains draft every position, randomness is keyed by position and each plan is made
    before its block's drafts: with a fixed (stateless) codec, the controller's block lengths and
    depths leave a seeded text exactly as fixed-length streaming makes it."""
    params = SamplingParams(temperature=1.0, seed=3, max_new_tokens=80)
    text, env = Text(vocab=V, seed=4), Env(rate=_constant(1e5))
    static = run_streamed(StaticPolicy(4, make_codec(DEFAULT, V), 2), env, text, Clock(), 80, seed=3)
    hub, clock = _hub(kinds=frozenset({"ksqs"})), Clock()
    policy = AdaptivePolicy(AutoRequest(True, False, "c", hub), DEFAULT, 4, params, True, 4, clock=clock)
    run = run_streamed(policy, env, text, clock, 80, seed=3)
    assert policy.decisions > 0
    assert run.lens != static.lens  # the controller shaped the blocks differently
    assert set(run.specs) == {DEFAULT}
    assert run.output == static.output
    assert len(static.output) == 80
