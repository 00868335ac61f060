"""The adaptive controller keeps the output distribution exact: chi-square of the first tokens of
seeded generations whose blocks the real AdaptivePolicy shapes (draft_len and codec "auto"), serial
and streamed, on the round core the edge uses (SpecState + VerifySession, tiny models, one process)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bench.inprocess import speculative_generate
from common.models import LoadedModel, load_model
from common.protocol import Verdict
from common.rounds import InFlight
from common.types import SamplingParams
from edge.adaptive import AdaptivePolicy, AutoRequest
from edge.hub import AdaptiveHub
from tests.component.test_streamed import PROMPT, _target_probs
from tests.support.stats import chi_square_pvalue

DEFAULT = "ksqs:k=16,ell=100"
# one or more of every kind, from a one-hot draft to a lossless one (the full grid plans ~3× slower)
SPECS = (
    "ksqs:k=1,ell=1",
    "ksqs:k=4,ell=16",
    DEFAULT,
    "csqs:alpha=0.15,eta=0.02,ell=256,kmax=64",
    "qs:ell=256",
    "dense:fp16",
)


class TickClock:
    """Deterministic time: every reading advances it (the policy's estimates, hence its plans, and
    the test's outcome do not depend on the machine's speed)."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class LinkedPolicy(AdaptivePolicy):
    """The real policy, seeing a simulated uplink (the in-process loop has none): each verdict
    arrives rtt + bits/rate later. It also records the shape of every block sent."""

    def __init__(
        self,
        clock: TickClock,
        rtt: float,
        bps: float,
        auto: AutoRequest,
        params: SamplingParams,
        pipeline: bool,
    ) -> None:
        super().__init__(auto, DEFAULT, 2, params, pipeline, 3, clock=clock)
        self.tick, self.rtt, self.bps = clock, rtt, bps
        self.blocks: list[tuple[int, str]] = []
        self._bytes: dict[int, int] = {}

    def observe_sent(self, block: InFlight, draft_seconds: float, wire_bytes: int) -> None:
        self.blocks.append((len(block.drafts), block.codec))
        self._bytes[block.round] = wire_bytes
        super().observe_sent(block, draft_seconds, wire_bytes)

    def observe_verdict(self, block: InFlight, verdict: Verdict, waited_seconds: float) -> None:
        link = self.rtt + 8 * self._bytes.pop(block.round) / self.bps
        self.tick.t += link
        super().observe_verdict(block, verdict, waited_seconds + link)


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    return load_model("builtin:tiny-target")


@pytest.mark.parametrize("pipeline", [False, True], ids=["serial", "streamed"])
def test_adaptive_rounds_sample_the_target_distribution(target: LoadedModel, pipeline: bool) -> None:
    """x0 against p(·), x1 | x0 against p(· | x0) for the commonest x0, over seeded generations of 3
    tokens (serial: blocks of up to 2 drafts cut by the stopping rule, then the bonus; streamed:
    up to 3 blocks in flight, void ones past a rejection). One hub and client throughout, as on an
    edge: estimates and priors carry over, so blocks are planned by the controller from the first
    one on, and the simulated link switching between 30 kbit/s and 100 Mbit/s varies the codec."""
    far = load_model("builtin:tiny-draft?noise=0.3")
    temp, n = 1.0, 500
    hub = AdaptiveHub(target.vocab_size, frozenset(), DEFAULT, 3, client_states=4)
    hub.specs = list(SPECS)
    clock = TickClock(2e-4)
    pairs, blocks, decisions, voided = [], Counter[tuple[int, str]](), 0, 0
    for seed in range(n):
        params = SamplingParams(temperature=temp, seed=seed, max_new_tokens=3)
        auto = AutoRequest(True, True, "client", hub)
        bps = 3e4 if seed % 100 < 50 else 1e8  # the link changes now and then
        policy = LinkedPolicy(clock, 0.02, bps, auto, params, pipeline)
        run = speculative_generate(
            far, target, PROMPT, DEFAULT, params, 2, depth=3 if pipeline else 0, policy=policy, clock=clock
        )
        assert len(run.tokens) == 3
        pairs.append((run.tokens[0], run.tokens[1]))
        blocks.update(policy.blocks)
        decisions += policy.decisions
        voided += run.void_blocks > 0
    # the controller shaped the blocks: its decisions, several lengths, several codecs
    assert decisions > n
    assert len({length for length, _ in blocks}) >= 2
    assert len({spec for _, spec in blocks}) >= 3
    assert (voided > n // 10) if pipeline else voided == 0
    first = np.bincount([a for a, _ in pairs], minlength=target.vocab_size)
    assert chi_square_pvalue(first, _target_probs(target, PROMPT, temp)) > 1e-3
    x0 = int(np.argmax(first))
    second = np.bincount([b for a, b in pairs if a == x0], minlength=target.vocab_size)
    assert second.sum() >= 50
    assert chi_square_pvalue(second, _target_probs(target, (*PROMPT, x0), temp)) > 1e-3
