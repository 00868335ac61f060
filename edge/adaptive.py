"""Model-based adaptive control: each block's draft length and codec maximise predicted tokens/s (issue 11).

Per block, before any of its drafts is drawn (the exactness rule of edge/policy.py), the policy
evaluates every (codec, L) under the latency model of method.md §8 with live estimates: RTT and
uplink rate (edge-wide, from block sizes and verdict times), verify and draft time (edge-wide),
rejection as a function of the drafter's flatness and the codec's distortion (this client's text,
from verdicts), and each candidate codec's distortion and bits (from the drafter's recent q, seen
through a recording codec wrapper). In serial rounds a stopping rule then ends the block early
when one more draft is worth less than the time it costs. Maths in edge/control.py, estimators in
edge/estimators.py, edge-wide state in edge/hub.py.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.codec import Codec, CSQSCodec, CSQSState, make_codec
from common.protocol import Verdict
from common.rounds import InFlight, SpecState
from common.types import SamplingParams
from edge.candidates import Shadows, evaluate
from edge.control import A_MAX, Candidate, Choice, Timing, choose, serial_rate, streamed_rate
from edge.estimators import RejectionModel
from edge.hub import FRAMING_BYTES, AdaptiveHub, ClientState, TextPrior
from edge.policy import BlockPlan, DraftPolicy, StaticPolicy
from edge.probe import Observed, ProbeCodec, Recorder

WINDOW = 32  # recent drafted positions whose q shapes predict each candidate's distortion and bits
MIN_TOPS = 4  # positions needed before codecs are compared (until then: the static default)
HYSTERESIS = 0.03  # a codec switch needs this much more predicted tokens/s


@dataclass(frozen=True)
class AutoRequest:
    """What a request leaves to the controller, whose state it continues, and the edge's shared state."""

    draft_len: bool
    codec: bool
    client: str  # key of the client's carried-over state (C-SQS β, priors)
    hub: AdaptiveHub


def _text_key(params: SamplingParams) -> tuple[float, float]:
    return (round(params.temperature, 3), round(params.top_p, 3))


class CodecPool:
    """One codec object per spec per generation (C-SQS keeps β in it), restored from the client's state."""

    def __init__(self, vocab_size: int, client: ClientState, recorder: Recorder | None) -> None:
        self.vocab_size = vocab_size
        self.client = client
        self.recorder = recorder
        self.codecs: dict[str, Codec] = {}

    def get(self, spec: str, start: CSQSState | None = None) -> Codec:
        """The generation's codec for spec; a new C-SQS one starts from `start` or the client's β."""
        codec = self.codecs.get(spec)
        if codec is None:
            codec = inner = make_codec(spec, self.vocab_size)
            if isinstance(inner, CSQSCodec):
                kept = start if start is not None else self.client.csqs.get(inner.spec)
                if kept is not None:
                    inner.import_state(CSQSState(inner.spec, kept.beta, kept.steps))
            if self.recorder is not None:
                codec = ProbeCodec(inner, self.recorder)
            self.codecs[spec] = codec
        return codec

    def csqs(self) -> list[CSQSCodec]:
        inners = [c.inner if isinstance(c, ProbeCodec) else c for c in self.codecs.values()]
        return [c for c in inners if isinstance(c, CSQSCodec)]

    def save(self) -> None:
        """Keep every C-SQS threshold for the client's next request."""
        for codec in self.csqs():
            self.client.csqs[codec.spec] = codec.export_state()


@dataclass(frozen=True)
class StopRule:
    """Serial rounds: after each draft, continue iff P(all drafts so far and the next accepted) is
    worth the time one more draft costs at the predicted throughput (reward − rate·time, renewal).

    Decides whether the NEXT position is drafted from the positions already drafted (their
    flatness and distortion): the exactness rule allows it.
    """

    recorder: Recorder
    coef: tuple[float, float, float]  # (μ₀, μ₁, κ) of the rejection model
    residual: np.ndarray  # [L] rejection residual by position in the block
    next_rejection: float  # expected rejection of a position not drafted yet (codec's mean)
    draft_cost: float  # seconds one more draft adds to the round
    rate: float  # predicted tokens/s of the plan
    longest: int

    def __call__(self) -> bool:
        drafted = self.recorder.block()
        k = len(drafted)
        if k >= self.longest:
            return True
        mu0, mu1, kappa = self.coef
        survive = 1.0
        for j, obs in enumerate(drafted):
            r = mu0 + mu1 * obs.flat + kappa * obs.distortion + float(self.residual[j])
            survive *= 1.0 - min(1.0, max(1.0 - A_MAX, r))
        gain = survive * (1.0 - min(1.0, max(1.0 - A_MAX, self.next_rejection + float(self.residual[k]))))
        return gain < self.rate * self.draft_cost


class AdaptivePolicy:
    """Chooses (L, codec) per block; observes draft time, block bytes and verdicts to update estimates."""

    def __init__(
        self,
        auto: AutoRequest,
        codec: str,
        draft_len: int,
        params: SamplingParams,
        pipeline: bool,
        max_depth: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        hub = self.hub = auto.hub
        self.auto, self.pipeline, self.max_depth, self.clock = auto, pipeline, max_depth, clock
        self.static_spec = hub.candidate(codec).spec
        self.specs = list(hub.specs) if auto.codec else [self.static_spec]
        self.lens = list(range(1, hub.max_draft_len + 1)) if auto.draft_len else [draft_len]
        # the cold-start length too stays within the controller's bound (--auto-max-draft-len, the
        # cloud's max_draft_len): the request's draft_len is only the static default then
        self.static_len = min(draft_len, max(self.lens))
        self.client = hub.clients.get(auto.client)
        self.text_key = _text_key(params)
        self.cands = [hub.candidate(s) for s in self.specs]
        qs_ells = [c.ell for c in self.cands if c.kind == "qs"]
        self.recorder = Recorder(want_top=True, full_ells=qs_ells, clock=clock)
        self.pool = CodecPool(hub.vocab_size, self.client, self.recorder)
        self.shadows = Shadows(self.cands, self.client.csqs, WINDOW)
        prior = self.client.text.get(self.text_key)
        self.reject = RejectionModel.restore(prior.rejection) if prior else RejectionModel()
        self.window: deque[Observed] = deque(prior.window if prior else (), maxlen=WINDOW)
        self.current = self.specs.index(prior.codec) if prior and prior.codec in self.specs else None
        self._table: tuple[list[Candidate], np.ndarray, float] | None = None  # candidates, δ̄, f̄
        self._depth = max_depth if pipeline else 1
        self._chain_start: dict[int, int] = {}
        self._sent: dict[int, float] = {}  # round → bits on the wire
        self._uplink_free = 0.0  # virtual uplink clock: when our queued bits are all sent
        self._queue_wait: dict[int, float] = {}  # round → estimated wait behind our earlier blocks
        self._last_verdict = -np.inf
        self._last_choice: Choice | None = None
        self.decisions = self.switches = 0

    @property
    def depth(self) -> int:
        return self._depth

    # ── planning (before any draft of the block is drawn) ──────────────────────────────────────────
    def plan_block(self, state: SpecState) -> BlockPlan:
        self.recorder.begin(state.position)
        offset = state.position - self._chain_start.get(state.chain, state.position)
        decided = self._decide(offset)
        state.stats.controller = self.summary()
        if decided is None:  # cold start: the static settings (or this client's last codec)
            spec = self.specs[self.current] if self.current is not None else self.static_spec
            return BlockPlan(self.static_len, self.pool.get(spec))
        choice, timing = decided
        spec = self.specs[choice.index]
        if self.current is not None and choice.index != self.current:
            self.switches += 1
        self.current, self._last_choice = choice.index, choice
        self.decisions += 1
        self._depth = min(self.max_depth, choice.depth) if self.pipeline else 1
        codec = self.pool.get(spec, self.shadows.states().get(spec))
        if self.pipeline or not self.auto.draft_len:
            return BlockPlan(choice.draft_len, codec)
        return BlockPlan(max(self.lens), codec, self._stop_rule(choice, timing, offset))

    def _decide(self, offset: int) -> tuple[Choice, Timing] | None:
        """The best (codec, L) under the current estimates; None while they are too thin (cold start)."""
        hub = self.hub
        if hub.link.count < 2 or (self.auto.codec and len(self.window) < MIN_TOPS):
            return None
        table, distortion, flat = self._candidates()
        mu0, mu1, kappa = self.reject.coef
        draft0, draft1 = hub.draft.coef
        verify0, verify1 = hub.verify.coef
        timing = Timing(
            hub.link.rtt, hub.link.sec_per_bit, hub.overhead_bits, draft0, draft1, verify0, verify1
        )
        base = mu0 + mu1 * flat + self.reject.profile(max(self.lens), offset)  # [P]
        scaled = [Candidate(c.bits, c.cpu, kappa * d) for c, d in zip(table, distortion, strict=True)]
        if self.pipeline:
            rates, depths = streamed_rate(timing, scaled, base, self.max_depth)
        else:
            rates, depths = serial_rate(timing, scaled, base), None
        return choose(rates, depths, self.current, self.lens, HYSTERESIS), timing

    def _candidates(self) -> tuple[list[Candidate], np.ndarray, float]:
        """Per candidate: bits, CPU, mean δ over the recent q shapes; and their mean flatness."""
        if self._table is None:
            cpu = [self.hub.codec_cpu(s) for s in self.specs]
            self._table = evaluate(self.cands, cpu, list(self.window), self.shadows)
        return self._table

    def _stop_rule(self, choice: Choice, t: Timing, offset: int) -> StopRule:
        table, distortion, flat = self._candidates()
        mu0, mu1, kappa = self.reject.coef
        c = choice.index
        cost = t.draft1 + 2.0 * table[c].cpu + t.sec_per_bit * table[c].bits + t.verify1
        longest = max(self.lens)
        return StopRule(
            self.recorder,
            (mu0, mu1, kappa),
            self.reject.profile(longest + 1, offset),
            mu0 + mu1 * flat + kappa * float(distortion[c]),
            cost,
            choice.rate,
            longest,
        )

    # ── observations ───────────────────────────────────────────────────────────────────────────
    def observe_sent(self, block: InFlight, draft_seconds: float, wire_bytes: int) -> None:
        hub, n, now = self.hub, len(block.drafts), self.clock()
        self._chain_start.setdefault(block.chain, block.start)
        codec_s = self.recorder.take_seconds()
        hub.observe_codec(block.codec, n, codec_s)
        if n:
            hub.draft.update(n, max(0.0, draft_seconds - codec_s))
        hub.observe_overhead(wire_bytes, len(block.payload))
        bits = 8.0 * (wire_bytes + FRAMING_BYTES)
        self._sent[block.round] = bits
        if self.pipeline:  # a streamed block may queue on the uplink behind our earlier blocks
            start = max(now, self._uplink_free)
            self._queue_wait[block.round] = start - now
            self._uplink_free = start + bits * hub.link.sec_per_bit
        for pos in range(block.start, block.start + n):
            obs = self.recorder.get(pos)
            if obs is not None and obs.top is not None:
                self.window.append(obs)
                self.shadows.step(obs.top, self.window)
        for codec in self.pool.csqs():  # the codec that ran is the truth for its own threshold
            self.shadows.sync(codec.spec, codec.beta, codec.steps)
        self._table = None

    def observe_verdict(self, block: InFlight, verdict: Verdict, waited_seconds: float) -> None:
        now = self.clock()
        self._learn_rejection(block, verdict)
        cloud = verdict.verify_seconds + verdict.queue_seconds
        n = len(block.drafts)
        if block.round > 0:  # round 0 also prefills the prompt
            self.hub.verify.update(n, max(0.0, cloud - n * self.hub.codec_cpu(block.codec)))
        bits = self._sent.pop(block.round, None)
        wait = self._queue_wait.pop(block.round, 0.0)
        # A block that waited at the cloud for the previous verdict tells nothing about the link.
        if bits is not None and now - cloud - self._last_verdict > 1e-3:
            self.hub.link.update(bits, max(0.0, waited_seconds - cloud - wait))
        self._last_verdict = now
        if verdict.next_token is not None or verdict.finished:  # later blocks were void: no verdicts
            for r in [r for r in self._sent if r > block.round]:
                self._sent.pop(r)
                self._queue_wait.pop(r, None)
        self.client.csqs.update(self.shadows.states())
        current = self.specs[self.current] if self.current is not None else None
        self.client.text[self.text_key] = TextPrior(self.reject.snapshot(), list(self.window), current)

    def _learn_rejection(self, block: InFlight, v: Verdict) -> None:
        offset = block.start - self._chain_start.get(block.chain, block.start)
        verified = [(j, False) for j in range(v.accepted)]
        if v.resampled and v.accepted < len(block.drafts):
            verified.append((v.accepted, True))
        for j, rejected in verified:
            obs = self.recorder.get(block.start + j)
            if obs is not None:
                self.reject.update(offset + j, rejected, obs.flat, obs.distortion)

    def summary(self) -> dict[str, Any]:
        """What the controller decided and believed, for the response's metrics."""
        hub, c = self.hub, self._last_choice
        mu0, mu1, kappa = self.reject.coef
        return {
            "decisions": self.decisions,
            "codec_switches": self.switches,
            "predicted_tokens_per_s": None if c is None else round(c.rate, 3),
            "rtt_s": round(hub.link.rtt, 6),
            "uplink_bps": round(1.0 / hub.link.sec_per_bit, 1),
            "verify_s": [round(x, 6) for x in hub.verify.coef],
            "draft_s": [round(x, 6) for x in hub.draft.coef],
            "rejection_model": [round(mu0, 4), round(mu1, 4), round(kappa, 4)],
            "depth": self._depth,
        }


def make_policy(
    codec: str,
    draft_len: int,
    vocab_size: int,
    params: SamplingParams,
    pipeline: bool,
    depth: int,
    auto: AutoRequest | None,
) -> DraftPolicy:
    """The request's policy: adaptive when it asked for "auto", else static (C-SQS β still carried over)."""
    if auto is not None and (auto.draft_len or auto.codec):
        return AdaptivePolicy(auto, codec, draft_len, params, pipeline, depth)
    if auto is None:
        return StaticPolicy(draft_len, make_codec(codec, vocab_size), depth)
    pool = CodecPool(vocab_size, auto.hub.clients.get(auto.client), None)
    return StaticPolicy(draft_len, pool.get(codec), depth, after_verdict=pool.save)
