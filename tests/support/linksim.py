"""A synthetic edge–cloud loop in simulated time: real codecs and verify, a DraftPolicy, no models.

Serial rounds. The text is a fixed sequence of (q, p) pairs by absolute position (drafter and
target distributions); timing follows the §8 latency model with a rate schedule, so a policy's
throughput can be measured quickly and deterministically (tests/unit/test_adaptive_policy.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.codec import Draft
from common.protocol import Verdict
from common.rounds import InFlight, SpecState, truncate_output
from common.sampling import drafter_rng, verifier_rng, verify
from common.types import SamplingParams
from edge.policy import BlockPlan, DraftPolicy


@dataclass
class Text:
    """Per-position drafter q and target p over a small vocabulary (context-free, seeded)."""

    vocab: int = 1000
    temperature: float = 1.0
    noise: float = 0.6  # target logits = drafter logits + noise·N(0,1): the model mismatch
    seed: int = 0
    _rows: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def at(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(q, p) at an absolute position, [V] float64 each."""
        got = self._rows.get(position)
        if got is None:
            rng = np.random.default_rng([self.seed, position])
            peak = rng.uniform(1.0, 6.0)  # some positions confident, some flat
            z = rng.standard_normal(self.vocab) * peak
            got = (
                _softmax(z / self.temperature),
                _softmax((z + self.noise * rng.standard_normal(self.vocab)) / self.temperature),
            )
            self._rows[position] = got
        return got


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return np.asarray(e / e.sum())


@dataclass
class Env:
    """The simulated costs: drafting per token, uplink rate(t), round trip, verify."""

    rate: Callable[[float], float]  # uplink bits/s at time t
    rtt: float = 0.02
    draft_per_token: float = 0.001
    verify0: float = 0.003
    verify1: float = 0.0002
    header_bytes: int = 12  # protobuf fields around the payload


@dataclass
class SimRun:
    tokens: int
    seconds: float
    lens: list[int]  # drafts per block sent
    specs: list[str]  # codec spec per block sent
    sent: list[float]  # simulated time each block was sent
    output: list[int]  # the generated tokens

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run_serial(
    policy: DraftPolicy, env: Env, text: Text, clock: Clock, max_tokens: int = 200, seed: int = 1
) -> SimRun:
    """Serial rounds until max_tokens: plan, draft (simulated time), send, verify, apply, observe."""
    params = SamplingParams(temperature=text.temperature, seed=seed, max_new_tokens=max_tokens)
    state = SpecState([0], params)
    start, lens, specs, sent_at = clock.t, [], [], []
    while not state.finished:
        plan = policy.plan_block(state)
        n = state.plan(plan.want, chained=False)
        drafts = _draft(plan, text, state.position, n, seed)
        payload = plan.codec.encode(drafts)
        draft_s = len(drafts) * env.draft_per_token
        clock.t += draft_s
        block = state.seal(drafts, payload, plan.codec.spec, more=False)
        lens.append(len(drafts))
        specs.append(block.codec)
        sent_at.append(clock.t)
        wire = len(payload) + env.header_bytes
        policy.observe_sent(block, draft_s, wire)
        sent = clock.t
        verify_s = env.verify0 + env.verify1 * (len(drafts) + 1)
        clock.t += env.rtt + 8 * (wire + 14) / env.rate(sent) + verify_s
        verdict = _verdict(block.round, block.start, drafts, text, params, seed, len(state.output), verify_s)
        state.apply(verdict)
        policy.observe_verdict(block, verdict, clock.t - sent)
    return SimRun(len(state.output), clock.t - start, lens, specs, sent_at, list(state.output))


def _verdict(
    round_no: int,
    base: int,
    drafts: Sequence[Draft],
    text: Text,
    params: SamplingParams,
    seed: int,
    generated: int,
    verify_s: float,
    more: bool = False,
) -> Verdict:
    p = np.stack([text.at(base + j)[1] for j in range(len(drafts) + 1)])  # [n+1, V]
    accepted, nxt = verify(drafts, p, lambda j: verifier_rng(seed, base + j), bonus=not more)
    output = [d.token for d in drafts[:accepted]] + ([] if nxt is None else [nxt])
    kept, reason = truncate_output(output, generated, params)
    acc = min(accepted, kept)
    nxt_kept = nxt if nxt is not None and kept > accepted else None
    return Verdict(
        round=round_no,
        accepted=acc,
        next_token=nxt_kept,
        finished=reason is not None,
        finish_reason=reason,
        verify_seconds=verify_s,
        resampled=nxt_kept is not None and accepted < len(drafts),
    )


@dataclass
class _Wire:
    """A streamed block between its send and its verdict (simulated)."""

    block: InFlight
    sent: float
    verdict: Verdict | None  # None: void at the cloud (its chain had ended)
    arrives: float  # when the verdict reaches the edge


def run_streamed(
    policy: DraftPolicy, env: Env, text: Text, clock: Clock, max_tokens: int = 200, seed: int = 1
) -> SimRun:
    """Streamed rounds: the edge drafts chained blocks while up to policy.depth are in flight.

    Discrete events in simulated time: the drafter (one block at a time, stopped at the next token
    once a verdict ends its chain), a FIFO uplink at env.rate, the cloud verifying in order (void
    blocks dropped on arrival), verdicts back after half the round trip.
    """
    params = SamplingParams(temperature=text.temperature, seed=seed, max_new_tokens=max_tokens)
    state = SpecState([0], params)
    start, lens, specs, sent_at = clock.t, [], [], []
    link = _Link(env, params, text, seed)
    drafting: tuple[BlockPlan, list[Draft], float, int] | None = None  # plan, drafts, done, chain
    drafter_free = clock.t
    while not state.finished:
        if (
            drafting is None
            and drafter_free <= clock.t
            and state.draftable
            and len(state.inflight) < policy.depth
        ):
            plan = policy.plan_block(state)
            drafts = _draft(plan, text, state.position, state.plan(plan.want, chained=True), seed)
            drafting = (plan, drafts, clock.t + len(drafts) * env.draft_per_token, state.chain)
        if drafting is not None:
            t_draft = drafting[2]
        else:  # idle: busy finishing a stopped draft, or waiting for a verdict (depth, budget, chain)
            t_draft = drafter_free if drafter_free > clock.t else math.inf
        t_verdict = link.wire[0].arrives if link.wire else math.inf
        if t_draft == t_verdict == math.inf:
            raise RuntimeError("simulation stalled: nothing drafting and nothing in flight")
        if t_verdict <= t_draft:
            w = link.wire.popleft()
            clock.t = max(clock.t, w.arrives)
            if w.verdict is None:
                continue  # void: dropped by the cloud, and by the edge when the chain ended
            state.apply(w.verdict)
            policy.observe_verdict(w.block, w.verdict, clock.t - w.sent)
            if drafting is not None and state.chain != drafting[3]:  # stop at the next token
                ran = clock.t - (drafting[2] - len(drafting[1]) * env.draft_per_token)
                drafter_free = clock.t + env.draft_per_token - ran % env.draft_per_token
                drafting = None
            continue
        clock.t = t_draft
        if drafting is None:
            continue
        plan, drafts, _, _ = drafting
        drafting, drafter_free = None, clock.t
        block = state.seal(drafts, plan.codec.encode(drafts), plan.codec.spec, more=True)
        lens.append(len(drafts))
        specs.append(block.codec)
        sent_at.append(clock.t)
        wire_bytes = len(block.payload) + env.header_bytes
        policy.observe_sent(block, len(drafts) * env.draft_per_token, wire_bytes)
        link.send(block, clock.t, wire_bytes, len(state.output) + state.drafted_ahead - len(drafts))
    return SimRun(len(state.output), clock.t - start, lens, specs, sent_at, list(state.output))


class _Link:
    """FIFO uplink at env.rate, the cloud verifying in order, verdicts after half the round trip."""

    def __init__(self, env: Env, params: SamplingParams, text: Text, seed: int) -> None:
        self.env, self.params, self.text, self.seed = env, params, text, seed
        self.uplink_free = self.cloud_free = 0.0
        self.ended_chain = -1  # the cloud's view: highest chain a verdict ended
        self.wire: deque[_Wire] = deque()

    def send(self, block: InFlight, now: float, wire_bytes: int, generated: int) -> None:
        env = self.env
        self.uplink_free = max(now, self.uplink_free) + 8 * (wire_bytes + 14) / env.rate(now)
        arrive = self.uplink_free + env.rtt / 2
        if block.chain <= self.ended_chain:
            self.wire.append(_Wire(block, now, None, arrive))
            return
        n = len(block.drafts)
        verify_s = env.verify0 + env.verify1 * (n + 1)
        self.cloud_free = max(arrive, self.cloud_free) + verify_s
        v = _verdict(
            block.round,
            block.start,
            block.drafts,
            self.text,
            self.params,
            self.seed,
            generated,
            verify_s,
            block.more,
        )
        if v.next_token is not None or v.finished:
            self.ended_chain = block.chain
        self.wire.append(_Wire(block, now, v, self.cloud_free + env.rtt / 2))


def _draft(plan: BlockPlan, text: Text, position: int, n: int, seed: int) -> list[Draft]:
    drafts: list[Draft] = []
    for i in range(n):
        q, _ = text.at(position + i)
        drafts.append(plan.codec.compress(q, drafter_rng(seed, position + i)))
        if plan.stop is not None and plan.stop():
            break
    return drafts
