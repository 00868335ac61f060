"""Request resolution (validation, prompts, limits) and one request's run from tokens to text deltas."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from common.codec import parse_codec_spec
from common.errors import CodecError
from common.protocol import FEATURE_CHAIN, ServerInfo
from common.sampling import fresh_seed
from common.types import SamplingParams
from edge.adaptive import AutoRequest
from edge.client import CloudClient
from edge.config import AUTO, MAX_DRAFT_LEN, EdgeConfig
from edge.detok import Decoder, TextStream
from edge.drafter import Drafter
from edge.errors import (
    bad_request,
    cloud_unavailable,
    model_not_found,
    prompt_too_long,
    too_many_requests,
)
from edge.hub import AdaptiveHub
from edge.metrics import EdgeMetrics
from edge.schema import ChatCompletionRequest, CompletionRequest, new_id, usage
from edge.session import Generation, GenRequest, make_generation

log = logging.getLogger("draftlink.edge.service")
# The body limit is derived from the prompt limit: a generous 32 bytes per prompt token (a JSON
# token id takes <= 8, an escaped non-ASCII character 6-12) plus 64 KiB for everything else.
BODY_BYTES_BASE = 64 * 1024
BODY_BYTES_PER_TOKEN = 32
# Prompts longer than this many characters are tokenized on a worker thread: the tokenizer releases
# the GIL, so /health and open streams keep being served while a large prompt is tokenized.
INLINE_TOKENIZE_CHARS = 4096
MESSAGE_OVERHEAD_CHARS = 16  # what the chat template adds around each message, roughly


@dataclass(frozen=True)
class Limits:
    """Effective limits: the edge's own, tightened by what the cloud advertised in Info."""

    max_tokens: int
    max_prompt_tokens: int
    max_draft_len: int
    codec_kinds: frozenset[str]  # empty = the cloud did not say (no check)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body read (413 above, before parsing)."""
        return BODY_BYTES_BASE + BODY_BYTES_PER_TOKEN * self.max_prompt_tokens

    @staticmethod
    def from_info(cfg: EdgeConfig, info: ServerInfo) -> Limits:
        lim = info.limits

        def tight(own: int, cloud: int) -> int:
            return min(own, cloud) if cloud > 0 else own

        return Limits(
            max_tokens=tight(cfg.max_tokens_limit, lim.max_new_tokens),
            max_prompt_tokens=tight(cfg.max_prompt_tokens, lim.max_prompt_tokens),
            max_draft_len=tight(MAX_DRAFT_LEN, lim.max_draft_len),
            codec_kinds=frozenset(info.codecs),
        )


def codec_kind(spec: str) -> str:
    """'dense:fp16' → 'dense', 'ksqs:k=16,ell=100' → 'ksqs' (Info.codecs lists kinds)."""
    return parse_codec_spec(spec).kind.split(":")[0]


class EdgeService:
    """Everything a request needs: config, drafter, cloud client, limits, metrics, concurrency slots."""

    def __init__(
        self, cfg: EdgeConfig, drafter: Drafter, client: CloudClient, info: ServerInfo, metrics: EdgeMetrics
    ) -> None:
        self.cfg = cfg
        self.drafter = drafter
        self.client = client
        self.info = info
        self.metrics = metrics
        self.limits = Limits.from_info(cfg, info)
        self.model_name = cfg.served_model_name or info.model_id
        self.aliases = {self.model_name, info.model_id}
        self.created = int(time.time())
        self.running = 0
        self.draining = False  # SIGTERM: /health reports 503 so balancers stop sending requests
        self.adaptive = AdaptiveHub(  # the controller's edge-wide estimates and client states
            drafter.lm.vocab_size,
            self.limits.codec_kinds,
            cfg.static_codec,
            min(cfg.auto_max_draft_len, self.limits.max_draft_len),
            cfg.client_states,
        )

    # ---- validation ----------------------------------------------------------------------
    async def resolve(self, body: CompletionRequest | ChatCompletionRequest) -> GenRequest:
        """Validate a request and turn it into a GenRequest (APIError 400/404/413 otherwise).

        The cheap checks run first, tokenization (the only step that grows with the input) last.
        """
        bad = body.unsupported()
        if bad is not None:
            raise bad_request(bad[1], param=bad[0], code="unsupported_parameter")
        if body.model is not None and body.model not in self.aliases:
            raise model_not_found(body.model, sorted(self.aliases))
        max_new = self._max_tokens(body.requested_max_tokens(), isinstance(body, ChatCompletionRequest))
        mode, codec, draft_len, auto = self._overrides(body)
        sampling = self._sampling(body, max_new)
        prompt = await self.prompt_ids(body)
        opts = body.draftlink
        pipeline = opts.pipeline if opts is not None and opts.pipeline is not None else self.cfg.pipeline
        pipeline = pipeline and FEATURE_CHAIN in self.info.features  # an older cloud: serial rounds
        return GenRequest(
            new_id("req"),
            tuple(prompt),
            sampling,
            mode,
            codec,
            draft_len,
            self.cfg.request_timeout,
            pipeline=pipeline,
            pipeline_depth=self.cfg.pipeline_depth,
            auto=auto,
        )

    def _sampling(self, body: CompletionRequest | ChatCompletionRequest, max_new: int) -> SamplingParams:
        """SamplingParams normalises (greedy below 1e-5, float32 precision) for edge and cloud alike."""
        sampling = SamplingParams(
            temperature=self.cfg.temperature if body.temperature is None else body.temperature,
            top_p=self.cfg.top_p if body.top_p is None else body.top_p,
            # every request is seeded: both sides key their randomness by (seed, position), which
            # makes a resumed generation continue exactly (an unseeded request gets a fresh seed)
            seed=fresh_seed() if body.seed is None else body.seed,
            max_new_tokens=max_new,
            stop_token_ids=() if body.ignore_eos else tuple(self.drafter.lm.eos_token_ids),
        )
        try:
            sampling.validate()
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        return sampling

    def _max_tokens(self, requested: int | None, chat: bool) -> int:
        param = "max_completion_tokens" if chat else "max_tokens"
        if requested is None:
            return min(self.cfg.default_max_tokens, self.limits.max_tokens)
        if requested < 1 or requested > self.limits.max_tokens:
            raise bad_request(
                f"{param} must be in [1, {self.limits.max_tokens}], got {requested}", param=param
            )
        return requested

    def _overrides(
        self, body: CompletionRequest | ChatCompletionRequest
    ) -> tuple[str, str, int, AutoRequest | None]:
        """(mode, codec, draft_len, auto): codec/draft_len are the static or cold-start settings."""
        opts = body.draftlink
        mode = opts.mode if opts else "speculative"
        codec = (opts.codec if opts and opts.codec is not None else None) or self.cfg.codec
        want_len: int | str = opts.draft_len if opts and opts.draft_len is not None else self.cfg.draft_len
        auto_codec, auto_len = codec.strip().lower() == AUTO, want_len == AUTO
        if auto_codec:
            codec = self.cfg.static_codec
            if self.adaptive.default_codec not in self.adaptive.specs:  # the cloud cannot decode it
                codec = self.adaptive.specs[0]
        draft_len = min(self.cfg.static_draft_len, self.adaptive.max_draft_len) if auto_len else int(want_len)
        try:
            kind = codec_kind(codec)
        except (CodecError, ValueError) as exc:
            raise bad_request(f"invalid codec spec {codec!r}: {exc}", param="draftlink.codec") from None
        if self.limits.codec_kinds and kind not in self.limits.codec_kinds:
            kinds = ", ".join(sorted(self.limits.codec_kinds))
            raise bad_request(
                f"the cloud does not decode {kind!r} (it decodes: {kinds})", param="draftlink.codec"
            )
        if not 1 <= draft_len <= self.limits.max_draft_len:
            msg = f"draft_len must be in [1, {self.limits.max_draft_len}], got {draft_len}"
            raise bad_request(msg, param="draftlink.draft_len")
        # C-SQS thresholds and priors carry over per client: session_key, else the OpenAI `user`,
        # else the edge-wide key (one API key per edge, so that is the API key's state).
        client = opts.session_key if opts and opts.session_key is not None else (body.user or "")
        auto = AutoRequest(auto_len, auto_codec, client, self.adaptive) if mode == "speculative" else None
        return mode, codec, draft_len, auto

    # ---- prompts ---------------------------------------------------------------------------
    async def prompt_ids(self, body: CompletionRequest | ChatCompletionRequest) -> list[int]:
        """Tokenize the prompt (chat: the chat template), on a worker thread when it is large.

        400 when empty, 413 when over the token limit; token id lists are counted before anything else.
        """
        chat = isinstance(body, ChatCompletionRequest)
        param = "messages" if chat else "prompt"
        given = _given_ids(body)
        if given is not None:
            ids = self._check_ids(given)
        elif _text_chars(body) > INLINE_TOKENIZE_CHARS:
            ids = await asyncio.to_thread(self._tokenize, body)
        else:
            ids = self._tokenize(body)
        if not ids:
            raise bad_request("the prompt is empty", param=param)
        if len(ids) > self.limits.max_prompt_tokens:
            raise prompt_too_long(len(ids), self.limits.max_prompt_tokens, param)
        return ids

    def _check_ids(self, ids: list[int]) -> list[int]:
        if len(ids) > self.limits.max_prompt_tokens:
            raise prompt_too_long(len(ids), self.limits.max_prompt_tokens)
        vocab = self.drafter.lm.vocab_size
        if ids and (min(ids) < 0 or max(ids) >= vocab):
            raise bad_request(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return ids

    def _tokenize(self, body: CompletionRequest | ChatCompletionRequest) -> list[int]:
        """Text → ids (blocking; may run on a worker thread)."""
        if isinstance(body, ChatCompletionRequest):
            return self._chat_ids(body)
        text = body.prompt if isinstance(body.prompt, str) else str(body.prompt[0])
        return self._encode(text, "prompt")

    def _encode(self, text: str, param: str, **kw: bool) -> list[int]:
        try:
            return list(self.drafter.lm.tokenizer.encode(text, **kw))
        except (TypeError, ValueError) as exc:  # input the schema let through but the tokenizer refuses
            raise bad_request(f"cannot tokenize the prompt: {exc}", param=param) from None

    def _chat_ids(self, body: ChatCompletionRequest) -> list[int]:
        tok = self.drafter.lm.tokenizer
        if not getattr(tok, "chat_template", None):
            raise bad_request("this model has no chat template; use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # template errors (e.g. role order) are the client's
            raise bad_request(f"cannot apply the chat template: {exc}", param="messages") from None
        return self._encode(str(text), "messages", add_special_tokens=False)

    # ---- concurrency -------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take a generation slot now or fail with 429 (never queue)."""
        if self.running >= self.cfg.max_concurrency:
            raise too_many_requests(self.cfg.max_concurrency)
        self.running += 1
        self.metrics.running.inc()

    def release(self) -> None:
        self.running -= 1
        self.metrics.running.dec()

    def new_generation(self, req: GenRequest) -> Generation:
        return make_generation(req, self.client, self.metrics, self.drafter)


def _given_ids(body: CompletionRequest | ChatCompletionRequest) -> list[int] | None:
    """The prompt when it is a list of token ids rather than text."""
    if isinstance(body, ChatCompletionRequest) or not isinstance(body.prompt, list):
        return None
    if body.prompt and isinstance(body.prompt[0], str):
        return None
    return [int(t) for t in body.prompt]


def _text_chars(body: CompletionRequest | ChatCompletionRequest) -> int:
    """About the characters the tokenizer will see (cheap: lengths only, no tokenizing)."""
    if isinstance(body, ChatCompletionRequest):
        return sum(len(m.text()) + MESSAGE_OVERHEAD_CHARS for m in body.messages)
    return len(body.prompt) if isinstance(body.prompt, str) else len(str(body.prompt[0]))


class Run:
    """One request's generation turned into text deltas, with timing metrics and final accounting."""

    def __init__(
        self, gen: Generation, tokenizer: Decoder, stop: Sequence[str], metrics: EdgeMetrics, arrival: float
    ) -> None:
        self.gen = gen
        self.detok = TextStream(tokenizer, stop)
        self.metrics = metrics
        self.arrival = arrival
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self._last: float | None = None  # perf_counter of the previous output

    def _observe(self, n: int) -> None:
        now = time.perf_counter()
        if self._last is None:
            self.metrics.ttft.observe(now - self.arrival)
        elif n:
            gap = (now - self._last) / n  # a round delivers n tokens at once: spread the gap
            for _ in range(n):
                self.metrics.itl.observe(gap)
        self._last = now
        self.metrics.generated_tokens.inc(n)

    async def deltas(self) -> AsyncIterator[str]:
        """Text deltas until the cloud finishes or a stop string matches (then the session is closed)."""
        async for out in self.gen.rounds():
            self._observe(len(out.tokens))
            self.tokens.extend(out.tokens)
            delta = self.detok.push(out.tokens)
            if self.detok.stopped:
                self.finish_reason = "stop"
                await self.gen.close()
            elif out.finish_reason is not None:
                delta += self.detok.finish()
                self.finish_reason = out.finish_reason
            if delta:
                yield delta
            if self.finish_reason is not None:
                return
        raise cloud_unavailable("the generation ended without a finish reason")

    async def collect(self) -> str:
        return "".join([d async for d in self.deltas()])

    @property
    def completion_tokens(self) -> int:
        return self.detok.num_tokens if self.detok.stopped else len(self.tokens)

    def extra(self, prompt_tokens: int, token_ids: bool) -> dict[str, Any]:
        """usage + metrics (+ token ids) for the final body or chunk."""
        out: dict[str, Any] = {"usage": usage(prompt_tokens, self.completion_tokens)}
        spec = self.gen.stats.summary()
        spec["mode"] = self.gen.req.mode
        req = self.gen.req
        spec["codec"] = (
            None if req.mode != "speculative" else AUTO if req.auto and req.auto.codec else req.codec
        )
        spec["draft_len"] = (
            None if req.mode != "speculative" else AUTO if req.auto and req.auto.draft_len else req.draft_len
        )
        out["metrics"] = {"speculative_decoding": spec}
        if token_ids:
            out["token_ids"] = self.tokens[: self.completion_tokens]
            out["prompt_token_ids"] = list(self.gen.req.prompt_ids)
        return out

    def finish(self, reason: str) -> None:
        self.metrics.requests.labels(finish_reason=reason).inc()
        self.metrics.e2e.observe(time.perf_counter() - self.arrival)
