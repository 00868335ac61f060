"""In-process references for the benchmark: one-process speculative decoding and the §7 bound terms."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cloud.verifier import VerifierLimits, VerifySession
from common.codec import Codec, Draft, make_codec
from common.models import CachedLM, LoadedModel
from common.protocol import Block
from common.rounds import InFlight, SpecState, draft_one, synced_prefix
from common.sampling import fresh_seed, probs_from_logits
from common.types import SamplingParams
from edge.policy import DraftPolicy, StaticPolicy

BLOCK_FIELDS_BYTES = 8  # a DraftBlock's protobuf fields around the payload (round, chain, more)


@dataclass
class SpecRun:
    """Outcome of one in-process speculative generation."""

    tokens: list[int]
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0
    per_pos_accepted: list[int] = field(default_factory=list)
    void_blocks: int = 0  # streamed: blocks drafted past a rejection and dropped


class _Seq:
    """A CachedLM plus the token sequence its cache holds, so it can be re-synced to a context."""

    def __init__(self, lm: LoadedModel) -> None:
        self.cache = CachedLM(lm)
        self.held: list[int] = []

    def feed(self, ids: Sequence[int]) -> np.ndarray:
        """Extend the cache by ids; return their logits [n, V] float32."""
        self.held += ids
        return self.cache.extend(ids).numpy()

    def pending(self, ctx: Sequence[int]) -> list[int]:
        """Crop the cache to its longest prefix shared with ctx; return the tokens still to feed."""
        keep = synced_prefix(self.held, ctx)
        self.cache.crop(keep)
        self.held = self.held[:keep]
        return list(ctx[keep:])


def _draft_block(
    drafter: _Seq,
    ctx: Sequence[int],
    n: int,
    codec: Codec,
    params: SamplingParams,
    stop: Callable[[], bool] | None = None,
) -> list[Draft]:
    """Draft up to n tokens after ctx (fewer when `stop()` says so after a draft; the last draft is
    not fed back)."""
    assert params.seed is not None
    drafts: list[Draft] = []
    if n <= 0:
        return drafts
    logits = drafter.feed(drafter.pending(ctx))[-1]  # [V]
    for i in range(n):
        drafts.append(draft_one(logits, codec, params, params.seed, len(ctx) + i))
        if i + 1 == n or (stop is not None and stop()):
            break
        logits = drafter.feed([drafts[-1].token])[-1]
    return drafts


def speculative_generate(
    drafter: LoadedModel,
    target: LoadedModel,
    prompt_ids: Sequence[int],
    codec_spec: str,
    params: SamplingParams,
    draft_len: int,
    depth: int = 0,
    policy: DraftPolicy | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SpecRun:
    """The edge+cloud round loop in one process (the protocol-overhead-free reference).

    The same round core as the services: SpecState (edge side) and VerifySession (cloud side),
    joined by a function call instead of gRPC. depth = 0: serial rounds; depth >= 1: streamed
    rounds, drafting up to `depth` chained blocks ahead before the oldest one is verified (with a
    `policy`: up to policy.depth). `policy` shapes each block as the edge's would (default: the
    fixed draft_len and codec_spec) and sees the same observations, timed by `clock`.
    """
    if params.seed is None:
        params = replace(params, seed=fresh_seed())
    if policy is None:
        policy = StaticPolicy(draft_len, make_codec(codec_spec, target.vocab_size), max(depth, 1))
    limits = VerifierLimits(max(draft_len, 64), len(prompt_ids), params.max_new_tokens)
    verifier = VerifySession(target, params, prompt_ids, limits, make_codec(codec_spec, target.vocab_size))
    state, d, chained = SpecState(prompt_ids, params), _Seq(drafter), depth > 0
    wire: deque[tuple[InFlight, float]] = deque()  # blocks sent, not yet verified (void ones too)
    cloud_codec = make_codec(codec_spec, target.vocab_size).spec
    start = clock()
    while not state.finished:
        while state.draftable and len(state.inflight) < (policy.depth if chained else 1):
            plan = policy.plan_block(state)  # before any of the block's drafts is drawn
            t0 = clock()
            n = state.plan(plan.want, chained)
            drafts = _draft_block(d, state.context(), n, plan.codec, params, plan.stop)
            payload = plan.codec.encode(drafts)
            stop = bool(drafts) and drafts[-1].token in params.stop_token_ids
            block = state.seal(drafts, payload, plan.codec.spec, more=chained and not stop)
            policy.observe_sent(block, clock() - t0, len(payload) + BLOCK_FIELDS_BYTES)
            wire.append((block, clock()))
        block, sent = wire.popleft()
        switch = None if block.codec == cloud_codec else block.codec
        outcome = verifier.verify_block(Block(block.round, block.payload, block.more, block.chain, switch))
        if outcome is not None:  # None: a void block (drafted past a rejection), dropped unread
            cloud_codec = block.codec
            state.apply(outcome.verdict)
            policy.observe_verdict(block, outcome.verdict, clock() - sent)
    st = state.stats
    per_pos = st.accepted_per_pos + [0] * max(0, draft_len - len(st.accepted_per_pos))
    return SpecRun(
        tokens=state.output,
        rounds=st.rounds,
        drafted=st.num_draft_tokens,
        accepted=st.num_accepted,
        seconds=clock() - start,
        per_pos_accepted=per_pos,
        void_blocks=st.void_blocks,
    )


@dataclass
class BoundTerms:
    """Per-position averages of the rejection bound's terms (method.md §7) for one codec."""

    positions: int = 0
    mismatch: float = 0.0  # d_TV(p, q)
    sparsification: float = 0.0  # 1 − q(S)
    lattice: float = 0.0  # d_TV(q̃, q̂), q̃ = q renormalised on S
    resampling: float = 0.0  # d_TV(p, q̂): the expected resampling probability
    support: float = 0.0  # Σ |S|
    support_sizes: list[int] = field(default_factory=list)  # |S| per position (C-SQS K_t histogram)

    def add(self, other: BoundTerms) -> None:
        """Accumulate another set of sums (divide with `mean()` at the end)."""
        for name in ("positions", "mismatch", "sparsification", "lattice", "resampling", "support"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.support_sizes += other.support_sizes

    def mean(self) -> dict[str, float]:
        """The averaged terms plus their sum (the bound) per verified position."""
        n = max(self.positions, 1)
        out = {
            k: getattr(self, k) / n
            for k in ("mismatch", "sparsification", "lattice", "resampling", "support")
        }
        out["bound"] = out["mismatch"] + out["sparsification"] + out["lattice"]
        out["positions"] = float(self.positions)
        return out


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(a - b).sum())


def bound_terms(
    drafter: LoadedModel,
    target: LoadedModel,
    token_ids: Sequence[int],
    n_prompt: int,
    codec_spec: str,
    temperature: float,
    seed: int = 0,
) -> BoundTerms:
    """Teacher-forced terms over the continuation token_ids[n_prompt:] (one forward per model)."""
    ids = list(token_ids)
    p_all = probs_from_logits(CachedLM(target).extend(ids).numpy(), temperature)  # [N, V]
    q_all = probs_from_logits(CachedLM(drafter).extend(ids).numpy(), temperature)  # [N, V]
    codec = make_codec(codec_spec, target.vocab_size)
    rng = np.random.default_rng(seed)
    terms = BoundTerms()
    for pos in range(n_prompt - 1, len(ids) - 1):  # row pos predicts token pos+1
        p, q = p_all[pos], q_all[pos]
        draft = codec.compress(q, rng)
        q_hat = draft.dense(target.vocab_size)  # [V]
        support = np.arange(q.shape[0]) if draft.support is None else draft.support
        mass = float(q[support].sum())
        q_tilde = np.zeros_like(q)
        q_tilde[support] = q[support] / mass if mass > 0 else 0.0
        terms.positions += 1
        terms.mismatch += _tv(p, q)
        terms.sparsification += 1.0 - mass
        terms.lattice += _tv(q_tilde, q_hat)
        terms.resampling += _tv(p, q_hat)
        terms.support += float(support.shape[0])
        terms.support_sizes.append(int(support.shape[0]))
    return terms
