"""The verifier core, free of gRPC: validate an open, verify draft blocks, generate autoregressively.

Everything here is synchronous; in the service a round's prepare/finish run on the batch engine's
thread around a batched target forward. One object per session.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.codec import BITSTREAM_VERSION, Codec, Draft, make_codec
from common.errors import CodecError, InvalidRequestError, PreconditionError, ProtocolError
from common.models import CachedLM, LoadedModel
from common.protocol import Block, OpenRequest, Verdict
from common.rounds import truncate_output
from common.sampling import fresh_seed, probs_from_logits, verifier_rng, verify
from common.types import FinishReason, SamplingParams

PREFILL_CHUNK = 512  # tokens per prefill forward: bounds the [n, V] float32 logits of one forward


@dataclass(frozen=True)
class VerifierLimits:
    """The request limits the core enforces (a narrow view of CloudConfig)."""

    max_draft_len: int
    max_prompt_tokens: int
    max_new_tokens: int


# ── request validation (pure) ──────────────────────────────────────────────────────────────────


def check_prompt(prompt: Sequence[int], vocab_size: int, limits: VerifierLimits) -> None:
    """Non-empty, within the limit, every id < V (InvalidRequestError)."""
    if not prompt:
        raise InvalidRequestError("prompt_token_ids is empty (need at least one token)")
    if len(prompt) > limits.max_prompt_tokens:
        raise InvalidRequestError(
            f"prompt has {len(prompt)} tokens; the limit is max_prompt_tokens={limits.max_prompt_tokens}"
        )
    bad = max(prompt)
    if bad >= vocab_size:
        raise InvalidRequestError(f"prompt token id {bad} is out of range (vocab size {vocab_size})")


def check_sampling(params: SamplingParams, limits: VerifierLimits) -> None:
    """Already validate()d by the wire seam; here only the server's max_new_tokens bound."""
    if params.max_new_tokens > limits.max_new_tokens:
        raise InvalidRequestError(
            f"max_new_tokens={params.max_new_tokens} exceeds the server limit {limits.max_new_tokens}"
        )


def check_resume(req: OpenRequest, vocab_size: int) -> None:
    """Tokens of an interrupted session: ids < V, fewer than max_new_tokens, no stop token inside."""
    resume = req.resume_token_ids
    if not resume:
        return
    if len(resume) >= req.sampling.max_new_tokens:
        raise InvalidRequestError(
            f"resume_token_ids has {len(resume)} tokens; max_new_tokens is {req.sampling.max_new_tokens}"
        )
    if max(resume) >= vocab_size:
        raise InvalidRequestError(f"resume token id {max(resume)} is out of range (vocab size {vocab_size})")
    stops = set(req.sampling.stop_token_ids).intersection(resume)
    if stops:
        raise InvalidRequestError(f"resume_token_ids contains stop token {min(stops)}: that generation ended")


def make_session_codec(spec: str, vocab_size: int) -> Codec:
    """A session's codec from its spec (PreconditionError for an unknown or invalid spec)."""
    try:
        return make_codec(spec, vocab_size)
    except CodecError as exc:
        raise PreconditionError(f"unsupported codec {spec!r}: {exc}") from None


def open_codec(req: OpenRequest, fingerprint: str, vocab_size: int) -> Codec:
    """Check the tokenizer fingerprint and build the session's codec (PreconditionError)."""
    if req.tokenizer_fingerprint != fingerprint:
        raise PreconditionError(
            f"tokenizer fingerprint mismatch: client {req.tokenizer_fingerprint[:16] or '<none>'}…, "
            f"server {fingerprint[:16]}…; the drafter must use the target's tokenizer"
        )
    return make_session_codec(req.codec, vocab_size)


def check_drafts(drafts: Sequence[Draft], vocab_size: int) -> None:
    """Defence in depth after codec.decode: ids in range, q̂ a valid distribution with q̂(x) > 0."""
    for n, d in enumerate(drafts):
        if not 0 <= d.token < vocab_size:
            raise InvalidRequestError(f"draft {n}: token id {d.token} out of range (vocab {vocab_size})")
        if d.counts is not None:
            _check_lattice(n, d, vocab_size)
        elif d.probs is not None:
            if d.probs.shape != (vocab_size,) or not np.all(np.isfinite(d.probs)) or d.probs.min() < 0:
                raise InvalidRequestError(f"draft {n}: dense q̂ is not a [V] non-negative vector")
        else:
            raise InvalidRequestError(f"draft {n}: carries no distribution")
        if not d.prob(d.token) > 0.0:
            raise InvalidRequestError(f"draft {n}: token {d.token} has q̂ = 0 (cannot have been drawn)")


def _check_lattice(n: int, d: Draft, vocab_size: int) -> None:
    assert d.counts is not None
    counts = d.counts  # [K] or [V] int64
    if d.ell < 1 or counts.min(initial=0) < 0 or int(counts.sum()) != d.ell:
        raise InvalidRequestError(f"draft {n}: lattice counts must be >= 0 and sum to ell={d.ell}")
    if d.support is None:
        if counts.shape != (vocab_size,):
            raise InvalidRequestError(f"draft {n}: dense counts must have length V={vocab_size}")
        return
    s = d.support  # [K] int64, ascending vocab ids
    if s.shape != counts.shape or s.size == 0:
        raise InvalidRequestError(f"draft {n}: support and counts differ in length")
    if s[0] < 0 or s[-1] >= vocab_size or (s.size > 1 and np.any(np.diff(s) <= 0)):
        raise InvalidRequestError(f"draft {n}: support must be distinct ascending ids < {vocab_size}")


def decode_block(codec: Codec, payload: bytes, vocab_size: int, max_draft_len: int) -> list[Draft]:
    """Codec bitstream → drafts (InvalidRequestError on anything malformed)."""
    header = (BITSTREAM_VERSION, codec.params.kind_id)  # v1: version, kind, count (u16 big-endian)
    if len(payload) >= 4 and tuple(payload[:2]) == header and int.from_bytes(payload[2:4]) > max_draft_len:
        n = int.from_bytes(payload[2:4])
        raise InvalidRequestError(f"block has {n} drafts; max_draft_len is {max_draft_len}")
    try:
        drafts = codec.decode(payload, max_drafts=max_draft_len)
    except CodecError as exc:
        raise InvalidRequestError(f"malformed draft payload: {exc}") from None
    if len(drafts) > max_draft_len:
        raise InvalidRequestError(f"block has {len(drafts)} drafts; max_draft_len is {max_draft_len}")
    check_drafts(drafts, vocab_size)
    return drafts


# ── the target's committed sequence and KV cache ───────────────────────────────────────────────


class KVCache(Protocol):
    """What the verifier needs of a KV cache: its length and rollback (CachedLM and SeqKV have both)."""

    @property
    def num_tokens(self) -> int: ...

    def crop(self, length: int) -> None: ...


class TargetCache:
    """Committed tokens (prompt + output) and a KV cache holding all but the last one.

    The cache is the batch engine's SeqKV in the service, or a CachedLM of its own for
    synchronous use (tests, the in-process benchmark reference), which `forward` needs.
    """

    def __init__(
        self,
        lm: LoadedModel,
        prompt: Sequence[int],
        prefill_chunk: int = PREFILL_CHUNK,
        cache: KVCache | None = None,
    ) -> None:
        self.lm = lm
        self.cache: KVCache = cache if cache is not None else CachedLM(lm)
        self.tokens: list[int] = list(prompt)
        self.prefill_chunk = prefill_chunk

    def pending(self) -> list[int]:
        """Committed tokens not in the cache yet (never empty: the last token is uncached)."""
        pending = self.tokens[self.cache.num_tokens :]
        assert pending, "forward after a finished commit"
        return pending

    def forward(self, extra: Sequence[int]) -> np.ndarray:
        """Logits predicting the token after the committed sequence and after each of `extra`.

        Returns [len(extra) + 1, V] float32. Afterwards the cache holds tokens + extra.
        Synchronous path (needs a CachedLM); the service feeds the batch engine instead.
        """
        cache = self.cache
        assert isinstance(cache, CachedLM), "forward() needs the synchronous CachedLM path"
        pending = self.pending()
        # prefill the long part of the prompt in chunks (the first round only); logits dropped
        while len(pending) > 1 and len(pending) - 1 + len(extra) > self.prefill_chunk:
            n = min(self.prefill_chunk, len(pending) - 1)  # keep the last token for the scored rows
            cache.extend(pending[:n])
            pending = pending[n:]
        logits = cache.extend([*pending, *extra])  # [len(pending) + len(extra), V]
        rows = logits[len(pending) - 1 :]  # [len(extra) + 1, V]
        return np.ascontiguousarray(rows.numpy(), dtype=np.float32)

    def commit(self, accepted: Sequence[int], next_token: int | None) -> None:
        """Keep `accepted` (a prefix of the last forward's extra) in the cache, append the output.

        The last committed token always stays uncached: its row predicts the next position, so
        the next forward (next round, or the continuation block of a chain) starts from it.
        """
        keep = len(self.tokens) + len(accepted)  # KV rollback: drop rejected drafts
        self.tokens.extend(accepted)
        if next_token is not None:
            self.tokens.append(next_token)
        self.cache.crop(min(keep, self.cache.num_tokens, len(self.tokens) - 1))


# ── one session ────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class RoundOutcome:
    """A verified round: the verdict to send plus what metrics need."""

    verdict: Verdict
    drafted: int  # drafts in the block
    raw_accepted: int  # accepted by the rule, before stop/length truncation


@dataclass(frozen=True)
class Prepared:
    """A validated, decoded round waiting for its target forward."""

    round: int
    drafts: list[Draft]
    more: bool  # no bonus token when every draft is accepted (a continuation follows)
    chain: int | None
    start: float  # perf_counter when the round began (verify_seconds counts from here)


class VerifySession:
    """One generation on the target: verify blocks (speculative) or step (autoregressive).

    A round is prepare (validate, decode) → the target forward over `feed()` → finish (verify,
    truncate, roll back): the service runs the forward on the batch engine, together with other
    sessions' rounds; `verify_block` / `step` run all three synchronously on a CachedLM.
    Randomness is keyed by (seed, absolute position): the acceptance test and the residual or
    bonus draw at position m come from verifier_rng(seed, m), whatever the block boundaries, so a
    resumed or differently streamed session of a seeded request draws the same uniforms.
    Chains (streamed drafts): a block with `more` that is fully accepted gets no bonus token; the
    next block continues it. A verdict with next_token ends the block's chain; blocks of an ended
    chain that arrive later were drafted past the rejection and are dropped (void).
    """

    def __init__(
        self,
        lm: LoadedModel,
        params: SamplingParams,
        prompt: Sequence[int],
        limits: VerifierLimits,
        codec: Codec | None = None,
        resume: Sequence[int] = (),
        cache: KVCache | None = None,
    ) -> None:
        self.lm = lm
        self.params = params
        self.limits = limits
        self.codec = codec
        self.seed = params.seed if params.seed is not None else fresh_seed()
        self.target = TargetCache(lm, [*prompt, *resume], cache=cache)
        self.prompt_tokens = len(prompt)
        self.round = 0  # next expected DraftBlock round (Generate: steps taken)
        self.finish_reason: FinishReason | None = None
        self.open_chain: int | None = None  # chain awaiting its continuation block
        self.ended_chain: int | None = None  # highest chain a verdict ended (void detection)
        self.void_blocks = 0  # void blocks dropped since the last verdict

    @property
    def generated(self) -> int:
        return len(self.target.tokens) - self.prompt_tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def output_tokens(self) -> list[int]:
        return self.target.tokens[self.prompt_tokens :]

    # ── a round in three steps ─────────────────────────────────────────────────────────────────
    def prepare(self, block: Block) -> Prepared | None:
        """Validate and decode a DraftBlock; None when it is void (its chain already ended)."""
        start = time.perf_counter()
        if self.codec is None:
            raise ProtocolError("this session takes no draft blocks")
        if self.finished:
            raise ProtocolError("the generation is already finished")
        if block.round != self.round:
            raise ProtocolError(f"round {block.round} out of order: expected round {self.round}")
        self.round += 1
        chain = block.chain
        if chain is not None and self.ended_chain is not None and chain <= self.ended_chain:
            self.void_blocks += 1
            return None
        if self.open_chain is not None and chain is not None and chain != self.open_chain:
            raise ProtocolError(f"block of chain {chain}; chain {self.open_chain} awaits its continuation")
        if block.codec is not None:
            self.codec = make_session_codec(block.codec, self.lm.vocab_size)
        drafts = decode_block(self.codec, block.payload, self.lm.vocab_size, self.limits.max_draft_len)
        return Prepared(block.round, drafts, block.more and bool(drafts), chain, start)

    def prepare_step(self) -> Prepared:
        """One autoregressive token: a round with no drafts (the bonus draw from p)."""
        if self.finished:
            raise ProtocolError("the generation is already finished")
        self.round += 1
        return Prepared(self.round - 1, [], False, None, time.perf_counter())

    def feed(self, prep: Prepared) -> tuple[list[int], int]:
        """What the target forward takes: (pending + draft tokens, rows wanted = L + 1)."""
        return [*self.target.pending(), *(d.token for d in prep.drafts)], len(prep.drafts) + 1

    def finish(
        self, prep: Prepared, logits: np.ndarray, queue_seconds: float = 0.0, batch_size: int = 1
    ) -> RoundOutcome:
        """Verify against the target's logits [L+1, V] float32, truncate, roll the cache back."""
        drafts, tokens = prep.drafts, [d.token for d in prep.drafts]
        base = len(self.target.tokens)  # absolute position of the first draft
        p = probs_from_logits(logits, self.params.temperature, self.params.top_p)  # [L+1, V] float64
        seed = self.seed
        raw_accepted, next_token = verify(
            drafts, p, lambda n: verifier_rng(seed, base + n), bonus=not prep.more
        )
        output = tokens[:raw_accepted] if next_token is None else [*tokens[:raw_accepted], next_token]
        kept, reason = truncate_output(output, self.generated, self.params)
        accepted = min(raw_accepted, kept)
        nxt = next_token if kept > raw_accepted else None
        self.target.commit(tokens[:accepted], nxt)
        self.finish_reason = reason
        ended = nxt is not None or reason is not None
        self.open_chain = None if ended else prep.chain
        if ended and prep.chain is not None:
            self.ended_chain = prep.chain
        verdict = Verdict(
            round=prep.round,
            accepted=accepted,
            next_token=nxt,
            finished=reason is not None,
            finish_reason=reason,
            verify_seconds=time.perf_counter() - prep.start,
            resampled=nxt is not None and raw_accepted < len(drafts),
            chain=prep.chain or 0,
            queue_seconds=queue_seconds,
            batch_size=batch_size,
            void_blocks=self.void_blocks,
        )
        self.void_blocks = 0
        return RoundOutcome(verdict=verdict, drafted=len(drafts), raw_accepted=raw_accepted)

    # ── synchronous rounds (own CachedLM) ──────────────────────────────────────────────────────
    def verify_block(self, block: Block) -> RoundOutcome | None:
        """prepare → one target forward → finish; None when the block is void."""
        prep = self.prepare(block)
        if prep is None:
            return None
        return self.finish(prep, self.target.forward([d.token for d in prep.drafts]))

    def step(self) -> RoundOutcome:
        """One autoregressive token, synchronously."""
        prep = self.prepare_step()
        return self.finish(prep, self.target.forward([]))


def max_message_bytes(limits: VerifierLimits, vocab_size: int) -> int:
    """Largest request the server must accept: a dense fp32 block or the longest prompt."""
    token_bits = math.ceil(math.log2(max(vocab_size, 2)))
    dense_block = 4 + limits.max_draft_len * (4 * vocab_size + math.ceil(token_bits / 8))
    prompt = 5 * limits.max_prompt_tokens + 64  # uint32 varints + the other OpenSession fields
    return max(dense_block, prompt) + 4096  # protobuf framing and the small fields
