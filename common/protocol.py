"""The Verifier protocol's domain messages (wire-independent; common.rpc.convert maps them to protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.types import FinishReason, SamplingParams

# Info.features this code base speaks (see proto/draftlink/v1/verifier.proto)
FEATURE_CHAIN = "chain"
FEATURE_RESUME = "resume"
FEATURE_POSITION_RNG = "position_rng"
FEATURE_BLOCK_CODEC = "block_codec"
FEATURES = (FEATURE_CHAIN, FEATURE_RESUME, FEATURE_POSITION_RNG, FEATURE_BLOCK_CODEC)


@dataclass(frozen=True)
class Limits:
    """Server limits a client must respect (Info.limits)."""

    max_sessions: int
    max_draft_len: int
    max_prompt_tokens: int
    max_new_tokens: int
    max_message_bytes: int


@dataclass(frozen=True)
class ServerInfo:
    """The Info answer: served model, tokenizer fingerprint, codecs, limits."""

    model_id: str
    tokenizer_fingerprint: str
    vocab_size: int
    codecs: tuple[str, ...]
    limits: Limits
    server_version: str
    bitstream_version: int
    features: tuple[str, ...] = ()
    model_options: tuple[tuple[str, str], ...] = ()  # (name, value) pairs, sorted by name


@dataclass(frozen=True)
class OpenRequest:
    """First message of a Session: prompt (crosses the link once), sampling, codec, fingerprint."""

    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    codec: str
    tokenizer_fingerprint: str
    request_id: str = ""
    resume_token_ids: tuple[int, ...] = ()  # tokens generated in an earlier session (resume)


@dataclass(frozen=True)
class Block:
    """One round of drafts: the round number, the codec bitstream, and the streaming fields."""

    round: int
    payload: bytes
    more: bool = False  # a continuation follows (no bonus token if all drafts are accepted)
    chain: int | None = None  # None: an older edge (no block is ever void)
    codec: str | None = None  # switch the session's codec from this block on


@dataclass(frozen=True)
class Close:
    """The client ends the session early."""


SessionMessage = OpenRequest | Block | Close


@dataclass(frozen=True)
class Opened:
    """The server's answer to OpenRequest."""

    session_id: str
    prompt_tokens: int


@dataclass(frozen=True)
class Verdict:
    """The verifier's answer to one Block: output = drafts[:accepted] + [next_token] (if present)."""

    round: int
    accepted: int
    next_token: int | None
    finished: bool = False
    finish_reason: FinishReason | None = None
    verify_seconds: float = 0.0
    resampled: bool = False
    chain: int = 0
    queue_seconds: float = 0.0
    batch_size: int = 1
    void_blocks: int = 0


SessionReply = Opened | Verdict


@dataclass(frozen=True)
class GenerateRequest:
    """Cloud-only autoregressive generation."""

    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    request_id: str = ""


@dataclass(frozen=True)
class GenerateChunk:
    """Tokens as they are generated."""

    token_ids: tuple[int, ...] = field(default_factory=tuple)
    finished: bool = False
    finish_reason: FinishReason | None = None
