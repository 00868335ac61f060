"""OpenAI-compatible request/response schema of the edge API (pydantic), plus the `draftlink` extension."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.config import MAX_DRAFT_LEN

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024  # the detokenizer holds back len(stop) - 1 characters and searches them per token
MAX_CODEC_SPEC_CHARS = 256
Mode = Literal["speculative", "cloud-only"]


class _Strict(BaseModel):
    """Strict types (no "5" → 5 coercion, finite floats only); unknown OpenAI parameters are ignored."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class DraftlinkOptions(BaseModel):
    """The `draftlink` request extension: per-request mode, codec and draft length."""

    model_config = ConfigDict(strict=True, extra="forbid")
    mode: Mode = "speculative"
    codec: str | None = Field(default=None, max_length=MAX_CODEC_SPEC_CHARS)  # a spec, or "auto" (per block)
    draft_len: Annotated[int, Field(ge=1, le=MAX_DRAFT_LEN)] | Literal["auto"] | None = None
    pipeline: bool | None = None  # streamed rounds (default: the edge's --pipeline)
    session_key: str | None = Field(default=None, max_length=256)  # whose carried-over state to use


class StreamOptions(_Strict):
    include_usage: bool = False


class _GenerationRequest(_Strict):
    """Parameters shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=100.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    return_token_ids: bool = False  # vLLM extension: prompt_token_ids + choices[].token_ids
    ignore_eos: bool = False  # vLLM extension: generate exactly max_tokens (benchmarks)
    draftlink: DraftlinkOptions | None = None

    def stop_strings(self) -> list[str]:
        """`stop` as a list (OpenAI accepts a string or a list of strings)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for a parameter set to a value this server cannot honour exactly."""
        if self.n != 1:
            return "n", "only n=1 is supported"
        if self.presence_penalty or self.frequency_penalty:
            return (
                "presence_penalty",
                "penalties are not supported (they would change the target distribution)",
            )
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        stops = self.stop_strings()
        if len(stops) > MAX_STOP_STRINGS or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
            return "stop", f"stop must hold 1..{MAX_STOP_STRINGS} strings of 1..{MAX_STOP_CHARS} characters"
        return None


class CompletionRequest(_GenerationRequest):
    """POST /v1/completions body."""

    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> tuple[str, str] | None:
        batch = isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str)
        if batch and len(self.prompt) != 1:
            return "prompt", "batched prompts are not supported (send one prompt per request)"
        for name, bad in (
            ("echo", self.echo),
            ("logprobs", self.logprobs is not None),
            ("suffix", self.suffix is not None),
            ("best_of", self.best_of not in (None, 1)),
        ):
            if bad:
                return name, f"{name} is not supported"
        return super().unsupported()


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_GenerationRequest):
    """POST /v1/chat/completions body."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    tools: list[dict[str, Any]] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported(self) -> tuple[str, str] | None:
        if self.logprobs:
            return "logprobs", "logprobs is not supported"
        if self.tools:
            return "tools", "tools are not supported"
        return super().unsupported()


# ---- responses (plain dicts built here, so field names live in one module) ----


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    rid: str, model: str, text: str, finish_reason: str, extra: dict[str, Any], chat: bool
) -> dict[str, Any]:
    """A whole (non-streaming) text_completion or chat.completion object."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    if "token_ids" in extra:
        choice["token_ids"] = extra.pop("token_ids")
    obj = "chat.completion" if chat else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        **extra,
    }


def chunk_body(
    rid: str,
    model: str,
    created: int,
    chat: bool,
    text: str | None,
    finish_reason: str | None = None,
    role: bool = False,
) -> dict[str, Any]:
    """One SSE chunk: text_completion (legacy) or chat.completion.chunk with a delta."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    obj = "chat.completion.chunk" if chat else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


def usage_chunk(rid: str, model: str, created: int, chat: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """The final `stream_options.include_usage` chunk: empty choices, usage (and draftlink metrics)."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], **extra}


def models_body(names: list[str], created: int) -> dict[str, Any]:
    data = [{"id": n, "object": "model", "created": created, "owned_by": "draftlink"} for n in names]
    return {"object": "list", "data": data}
