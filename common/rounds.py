"""The speculative round core: draft, seal blocks, apply verdicts, truncate, keep statistics (pure).

One generation's protocol state lives in `SpecState`. The edge daemon (edge/session.py), the
tests' reference client and the in-process benchmark reference all drive a generation through
it; the cloud's verifier core shares `truncate_output`. Serial rounds are the special case of
one block in flight with `more=False`; streamed rounds keep several blocks of one chain in flight.

Exactness rule for streamed and adaptive drafting (docs/ARCHITECTURE.md): whether a draft is sent
at a position (a block's length, `more`) is decided before that position's draft token is
sampled; it may depend on the prefix, the drafter's distribution, timing and link state, never on
the token drawn there. No I/O, no asyncio, no torch in this module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.codec import Codec, Draft
from common.protocol import Verdict
from common.sampling import drafter_rng, probs_from_logits
from common.types import FinishReason, SamplingParams


class ProtocolViolationError(Exception):
    """The cloud answered something the protocol does not allow (wrong round, too many accepted)."""


def truncate_output(
    output: Sequence[int], generated: int, params: SamplingParams
) -> tuple[int, FinishReason | None]:
    """How many of a round's output tokens to keep, and why the generation ends (if it does)."""
    budget = params.max_new_tokens - generated  # >= 1 while the generation is live
    stops = params.stop_token_ids
    for i, tok in enumerate(output):
        if tok in stops:
            return i + 1, FinishReason.STOP  # the stop token is part of the output
        if i + 1 >= budget:
            return i + 1, FinishReason.LENGTH
    return len(output), None


def draft_one(logits: np.ndarray, codec: Codec, params: SamplingParams, seed: int, position: int) -> Draft:
    """Compress the drafter's q at one position and draw the draft token from q̂ (never from q).

    logits: [V] float32 drafter logits predicting absolute `position`. The draw uses the
    position-keyed drafter stream, independent of the verifier's stream for the same seed.
    """
    q = probs_from_logits(logits, params.temperature, params.top_p)  # [V] float64, same rule as the target
    return codec.compress(q, drafter_rng(seed, position))


def synced_prefix(held: Sequence[int], context: Sequence[int]) -> int:
    """KV-cache length to keep: the common prefix of the cached tokens and the new context.

    At least one context token is left to feed, so the next forward yields fresh logits.
    """
    limit = min(len(held), len(context) - 1)
    keep = 0
    while keep < limit and held[keep] == context[keep]:
        keep += 1
    return keep


@dataclass
class InFlight:
    """A sealed block awaiting its verdict."""

    round: int
    chain: int
    start: int  # absolute position of its first draft
    drafts: list[Draft]
    more: bool  # a continuation follows (no bonus token if every draft is accepted)
    payload: bytes
    codec: str

    @property
    def tokens(self) -> list[int]:
        return [d.token for d in self.drafts]


@dataclass(frozen=True)
class Applied:
    """What one verdict did to the generation."""

    tokens: list[int]  # output tokens this verdict committed
    finished: bool
    finish_reason: FinishReason | None
    chain_ended: bool  # later in-flight blocks were voided and the chain number advanced
    void_blocks: int
    void_drafts: int


@dataclass
class SpecStats:
    """Per-request speculative-decoding counters (method.md §9 definitions)."""

    rounds: int = 0  # verdicts received (DraftBlock → Verdict), including empty blocks
    num_drafts: int = 0  # verdicts whose block carried at least one draft
    num_draft_tokens: int = 0  # drafts verified (void drafts excluded)
    num_accepted: int = 0
    num_resampled: int = 0  # verdicts that ended in a residual draw
    accepted_per_pos: list[int] = field(default_factory=list)  # accepted count by position in block
    uplink_bytes: int = 0  # serialized request messages (prompt, blocks, close)
    downlink_bytes: int = 0  # serialized response messages
    payload_bytes: int = 0  # codec payload bytes of every block sent (void ones too)
    sent_draft_tokens: int = 0  # drafts sent (void ones too)
    blocks_sent: int = 0
    blocks_streamed: int = 0  # blocks sent with `more` (a continuation followed)
    void_blocks: int = 0
    void_draft_tokens: int = 0  # drafts sent past a rejection and dropped
    resumes: int = 0  # sessions reopened after a cloud or link failure
    verify_seconds: float = 0.0
    queue_seconds: float = 0.0
    draft_seconds: float = 0.0  # drafting incl. the codec (compress, draw, encode)
    codec_seconds: float = 0.0  # the codec's share of draft_seconds
    wait_seconds: float = 0.0  # block written → its verdict read, summed (overlaps when streamed)
    open_bytes: int = 0  # the OpenSession message (prompt, sampling, codec), counted in uplink_bytes
    batch_size_total: int = 0  # Σ Verdict.batch_size (sessions sharing each verifying forward)
    codecs: dict[str, int] = field(default_factory=dict)  # blocks sent per codec spec
    draft_lens: dict[int, int] = field(default_factory=dict)  # blocks sent by number of drafts
    support_sizes: dict[int, int] = field(default_factory=dict)  # lattice drafts sent by K (|S|)
    ells: dict[int, int] = field(default_factory=dict)  # lattice drafts sent by ℓ
    controller: dict[str, Any] | None = None  # the adaptive policy's latest decision and estimates

    def record_sent(self, block: InFlight) -> None:
        self.blocks_sent += 1
        self.blocks_streamed += int(block.more)
        self.payload_bytes += len(block.payload)
        self.sent_draft_tokens += len(block.drafts)
        self.codecs[block.codec] = self.codecs.get(block.codec, 0) + 1
        _bump(self.draft_lens, len(block.drafts))
        for d in block.drafts:
            if d.counts is not None:  # dense float codecs have neither K nor ℓ
                _bump(self.support_sizes, d.counts.shape[0])  # dense QS: V
                _bump(self.ells, d.ell)

    def record_verdict(self, num_drafts: int, v: Verdict, void_blocks: int, void_drafts: int) -> None:
        """Account one verified block (after SpecState checked the verdict)."""
        self.rounds += 1
        self.verify_seconds += v.verify_seconds
        self.queue_seconds += v.queue_seconds
        self.batch_size_total += v.batch_size
        self.void_blocks += void_blocks
        self.void_draft_tokens += void_drafts
        if num_drafts == 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted += v.accepted
        self.num_resampled += int(v.resampled)
        if len(self.accepted_per_pos) < num_drafts:
            self.accepted_per_pos.extend([0] * (num_drafts - len(self.accepted_per_pos)))
        for pos in range(v.accepted):
            self.accepted_per_pos[pos] += 1

    @property
    def verified_positions(self) -> int:
        """Draft positions the verifier actually tested: accepted ones plus each rejection."""
        return self.num_accepted + self.num_resampled

    def summary(self) -> dict[str, Any]:
        """`metrics.speculative_decoding` of a response (vLLM field names + draftlink extras)."""
        drafted, rounds = self.num_draft_tokens, self.rounds
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": drafted,
            "num_accepted_draft_tokens": self.num_accepted,
            "draft_acceptance_rate": _ratio(self.num_accepted, drafted),
            "mean_acceptance_length": (1.0 + self.num_accepted / rounds) if rounds else None,
            "num_accepted_tokens_per_pos": list(self.accepted_per_pos),
            "rounds": rounds,
            "resampling_rate": _ratio(self.num_resampled, self.verified_positions),
            "num_resampled": self.num_resampled,
            "uplink_bytes": self.uplink_bytes,
            "downlink_bytes": self.downlink_bytes,
            "payload_bytes": self.payload_bytes,
            "open_bytes": self.open_bytes,
            "bits_per_draft_token": _ratio(8 * self.payload_bytes, self.sent_draft_tokens),
            "blocks_sent": self.blocks_sent,
            "blocks_streamed": self.blocks_streamed,
            "mean_draft_len": _ratio(self.sent_draft_tokens, self.blocks_sent),
            "void_blocks": self.void_blocks,
            "void_draft_tokens": self.void_draft_tokens,
            "resumes": self.resumes,
            "codecs": dict(self.codecs),
            "draft_len_hist": _hist(self.draft_lens),
            "support_size_hist": _hist(self.support_sizes),
            "ell_hist": _hist(self.ells),
            "mean_support_size": _mean(self.support_sizes),
            "mean_ell": _mean(self.ells),
            **({"controller": dict(self.controller)} if self.controller is not None else {}),
            "verify_seconds": round(self.verify_seconds, 6),
            "queue_seconds": round(self.queue_seconds, 6),
            "draft_seconds": round(self.draft_seconds, 6),
            "codec_seconds": round(self.codec_seconds, 6),
            "wait_seconds": round(self.wait_seconds, 6),
            "mean_batch_size": _ratio(self.batch_size_total, rounds),
        }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _bump(hist: dict[int, int], key: int) -> None:
    hist[key] = hist.get(key, 0) + 1


def _hist(hist: dict[int, int]) -> dict[str, int]:
    """A histogram as JSON-ready {"value": count}, ascending values."""
    return {str(k): hist[k] for k in sorted(hist)}


def _mean(hist: dict[int, int]) -> float | None:
    total = sum(hist.values())
    return sum(k * n for k, n in hist.items()) / total if total else None


class SpecState:
    """One generation's protocol state on the drafting side: committed output and blocks in flight.

    The drafter's context is prompt + output + the drafts of the blocks in flight; `seal` records
    a block as sent, `apply` consumes the verdict of the oldest block in flight.
    """

    def __init__(self, prompt: Sequence[int], params: SamplingParams, resume: Sequence[int] = ()) -> None:
        if params.seed is None:
            raise ValueError("SpecState needs a seeded SamplingParams (draw one with fresh_seed())")
        self.prompt = list(prompt)
        self.params = params
        self.seed: int = params.seed
        self.output: list[int] = list(resume)
        self.inflight: deque[InFlight] = deque()
        self.next_round = 0
        self.chain = 0
        self.finish_reason: FinishReason | None = None
        self.stats = SpecStats()

    # ── drafting side ──────────────────────────────────────────────────────────────────────────
    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def drafted_ahead(self) -> int:
        """Drafts in flight (sent, not yet verified)."""
        return sum(len(b.drafts) for b in self.inflight)

    def context(self) -> list[int]:
        """The drafter's context: prompt + output + drafts in flight (where drafting continues)."""
        ctx = self.prompt + self.output
        for b in self.inflight:
            ctx.extend(b.tokens)
        return ctx

    @property
    def position(self) -> int:
        """Absolute position of the next draft."""
        return len(self.prompt) + len(self.output) + self.drafted_ahead

    @property
    def budget(self) -> int:
        """Output tokens still undecided: max_new_tokens − output − drafts in flight."""
        return self.params.max_new_tokens - len(self.output) - self.drafted_ahead

    @property
    def draftable(self) -> bool:
        """Can another block be sent now (the previous one, if any, declared a continuation)?"""
        if self.finished or self.budget <= 0:
            return False
        return not self.inflight or self.inflight[-1].more

    def plan(self, want: int, chained: bool) -> int:
        """Drafts for the next block: up to `want`, within the budget.

        Serial blocks leave one token of budget for the cloud's bonus (an empty block when only
        one is left); chained blocks may draft to the budget (the cloud truncates at the length).
        """
        room = self.budget if chained else self.budget - 1
        return max(0, min(want, room))

    def seal(self, drafts: Sequence[Draft], payload: bytes, codec: str, more: bool) -> InFlight:
        """Record a block as sent; `more` must have been decided before the next draft is sampled."""
        if not self.draftable:
            raise RuntimeError("no block can be sent now (finished, out of budget, or chain closed)")
        if more and len(drafts) >= self.budget:
            more = False  # nothing can follow the last budgeted token
        block = InFlight(self.next_round, self.chain, self.position, list(drafts), more, payload, codec)
        self.inflight.append(block)
        self.next_round += 1
        self.stats.record_sent(block)
        return block

    # ── verdict side ───────────────────────────────────────────────────────────────────────────
    def apply(self, v: Verdict) -> Applied:
        """Consume the verdict of the oldest block in flight (ProtocolViolationError if it cannot be)."""
        if not self.inflight:
            raise ProtocolViolationError(f"verdict for round {v.round} with no block in flight")
        block = self.inflight[0]
        _check(v, block)
        self.inflight.popleft()
        tokens = block.tokens[: v.accepted]
        if v.next_token is not None:
            tokens.append(v.next_token)
        self.output.extend(tokens)
        ended = v.next_token is not None or v.finished
        void_blocks = void_drafts = 0
        if ended:
            void_blocks, void_drafts = len(self.inflight), self.drafted_ahead
            self.inflight.clear()  # drafted past the end of the chain: the cloud drops them too
            self.chain += 1
        if v.finished:
            self.finish_reason = v.finish_reason or FinishReason.STOP
        self.stats.record_verdict(len(block.drafts), v, void_blocks, void_drafts)
        return Applied(tokens, v.finished, self.finish_reason, ended, void_blocks, void_drafts)

    def reopen(self) -> list[InFlight]:
        """Renumber the blocks in flight for a new session (resume): rounds from 0, chain 0.

        The new session starts from prompt + output; the blocks in flight continue it unchanged
        (same drafts, same payloads), so a seeded request's text is the same as uninterrupted.
        """
        self.chain = 0
        for i, block in enumerate(self.inflight):
            block.round, block.chain = i, 0
        self.next_round = len(self.inflight)
        self.stats.resumes += 1
        return list(self.inflight)


def _check(v: Verdict, block: InFlight) -> None:
    """Raise ProtocolViolationError when a verdict cannot belong to `block`."""
    n = len(block.drafts)
    if v.round != block.round:
        raise ProtocolViolationError(f"verdict for round {v.round}, expected {block.round}")
    if not 0 <= v.accepted <= n:
        raise ProtocolViolationError(f"accepted {v.accepted} of {n} drafts")
    if v.resampled and v.next_token is None:
        raise ProtocolViolationError("resampled verdict without a next_token")
    if v.next_token is None and not v.finished and not (block.more and v.accepted == n):
        raise ProtocolViolationError("verdict without next_token must finish or continue a chain")
