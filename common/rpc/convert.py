"""The one wire seam: draftlink.v1 protobuf messages ↔ wire-independent domain objects."""

from __future__ import annotations

from typing import Any

import grpc

from common.errors import InvalidRequestError
from common.protocol import (
    Block,
    Close,
    GenerateChunk,
    GenerateRequest,
    Limits,
    Opened,
    OpenRequest,
    ServerInfo,
    SessionMessage,
    SessionReply,
    Verdict,
)
from common.rpc import pb, pb_grpc
from common.types import FinishReason, SamplingParams

__all__ = [
    "Block",
    "Close",
    "GenerateChunk",
    "GenerateRequest",
    "Limits",
    "OpenRequest",
    "Opened",
    "ServerInfo",
    "SessionMessage",
    "SessionReply",
    "Verdict",
]

# ── sampling params and finish reasons ─────────────────────────────────────────────────────────

_REASON_TO_PB = {FinishReason.STOP: pb.FINISH_REASON_STOP, FinishReason.LENGTH: pb.FINISH_REASON_LENGTH}
_REASON_FROM_PB = {v: k for k, v in _REASON_TO_PB.items()}


def finish_reason_to_pb(reason: FinishReason | None) -> pb.FinishReason:
    """None → FINISH_REASON_UNSPECIFIED."""
    return pb.FINISH_REASON_UNSPECIFIED if reason is None else _REASON_TO_PB[reason]


def finish_reason_from_pb(value: int) -> FinishReason | None:
    """UNSPECIFIED and unknown (newer) enum values → None."""
    return _REASON_FROM_PB.get(pb.FinishReason.ValueType(value))


def sampling_to_pb(params: SamplingParams) -> pb.SamplingParams:
    """Domain → wire (seed only when set)."""
    msg = pb.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        max_new_tokens=params.max_new_tokens,
        stop_token_ids=list(params.stop_token_ids),
    )
    if params.seed is not None:
        msg.seed = params.seed
    return msg


def sampling_from_pb(msg: pb.SamplingParams) -> SamplingParams:
    """Wire → domain, validated (InvalidRequestError); top_p 0 reads as 1 (disabled)."""
    params = SamplingParams(
        temperature=float(msg.temperature),
        top_p=float(msg.top_p) if msg.top_p != 0.0 else 1.0,
        seed=int(msg.seed) if msg.HasField("seed") else None,
        max_new_tokens=int(msg.max_new_tokens),
        stop_token_ids=tuple(int(t) for t in msg.stop_token_ids),
    )
    try:
        params.validate()
    except ValueError as exc:
        raise InvalidRequestError(f"invalid sampling params: {exc}") from None
    return params


# ── Info ───────────────────────────────────────────────────────────────────────────────────────


def limits_to_pb(limits: Limits) -> pb.Limits:
    return pb.Limits(
        max_sessions=limits.max_sessions,
        max_draft_len=limits.max_draft_len,
        max_prompt_tokens=limits.max_prompt_tokens,
        max_new_tokens=limits.max_new_tokens,
        max_message_bytes=limits.max_message_bytes,
    )


def limits_from_pb(msg: pb.Limits) -> Limits:
    return Limits(
        max_sessions=msg.max_sessions,
        max_draft_len=msg.max_draft_len,
        max_prompt_tokens=msg.max_prompt_tokens,
        max_new_tokens=msg.max_new_tokens,
        max_message_bytes=msg.max_message_bytes,
    )


def info_to_pb(info: ServerInfo) -> pb.InfoResponse:
    return pb.InfoResponse(
        model_id=info.model_id,
        tokenizer_fingerprint=info.tokenizer_fingerprint,
        vocab_size=info.vocab_size,
        codecs=list(info.codecs),
        limits=limits_to_pb(info.limits),
        server_version=info.server_version,
        bitstream_version=info.bitstream_version,
        features=list(info.features),
        model_options=dict(info.model_options),
    )


def info_from_pb(msg: pb.InfoResponse) -> ServerInfo:
    return ServerInfo(
        model_id=msg.model_id,
        tokenizer_fingerprint=msg.tokenizer_fingerprint,
        vocab_size=msg.vocab_size,
        codecs=tuple(msg.codecs),
        limits=limits_from_pb(msg.limits),
        server_version=msg.server_version,
        bitstream_version=msg.bitstream_version,
        features=tuple(msg.features),
        model_options=tuple(sorted(msg.model_options.items())),
    )


# ── Session stream ─────────────────────────────────────────────────────────────────────────────


def session_message_to_pb(message: SessionMessage) -> pb.SessionRequest:
    """Client side: a domain session message → SessionRequest."""
    if isinstance(message, OpenRequest):
        return pb.SessionRequest(
            open=pb.OpenSession(
                prompt_token_ids=list(message.prompt_token_ids),
                sampling=sampling_to_pb(message.sampling),
                codec=message.codec,
                tokenizer_fingerprint=message.tokenizer_fingerprint,
                request_id=message.request_id,
                resume_token_ids=list(message.resume_token_ids),
            )
        )
    if isinstance(message, Block):
        block = pb.DraftBlock(round=message.round, payload=message.payload, more=message.more)
        if message.chain is not None:
            block.chain = message.chain
        if message.codec is not None:
            block.codec = message.codec
        return pb.SessionRequest(block=block)
    return pb.SessionRequest(close=pb.CloseSession())


def session_message_from_pb(msg: pb.SessionRequest) -> SessionMessage:
    """Server side: SessionRequest → domain message (InvalidRequestError when empty or invalid)."""
    kind = msg.WhichOneof("kind")
    if kind == "open":
        o = msg.open
        if not o.HasField("sampling"):
            raise InvalidRequestError("OpenSession.sampling is required")
        return OpenRequest(
            prompt_token_ids=tuple(o.prompt_token_ids),
            sampling=sampling_from_pb(o.sampling),
            codec=o.codec,
            tokenizer_fingerprint=o.tokenizer_fingerprint,
            request_id=o.request_id,
            resume_token_ids=tuple(o.resume_token_ids),
        )
    if kind == "block":
        b = msg.block
        return Block(
            round=b.round,
            payload=bytes(b.payload),
            more=b.more,
            chain=b.chain if b.HasField("chain") else None,
            codec=b.codec if b.HasField("codec") else None,
        )
    if kind == "close":
        return Close()
    raise InvalidRequestError("empty SessionRequest: set one of open, block, close")


def session_reply_to_pb(reply: SessionReply) -> pb.SessionResponse:
    """Server side: Opened/Verdict → SessionResponse."""
    if isinstance(reply, Opened):
        return pb.SessionResponse(
            opened=pb.SessionOpened(session_id=reply.session_id, prompt_tokens=reply.prompt_tokens)
        )
    verdict = pb.Verdict(
        round=reply.round,
        accepted=reply.accepted,
        finished=reply.finished,
        finish_reason=finish_reason_to_pb(reply.finish_reason),
        verify_seconds=reply.verify_seconds,
        resampled=reply.resampled,
        chain=reply.chain,
        queue_seconds=reply.queue_seconds,
        batch_size=reply.batch_size,
        void_blocks=reply.void_blocks,
    )
    if reply.next_token is not None:
        verdict.next_token = reply.next_token
    return pb.SessionResponse(verdict=verdict)


def session_reply_from_pb(msg: pb.SessionResponse) -> SessionReply:
    """Client side: SessionResponse → Opened/Verdict (InvalidRequestError when empty)."""
    kind = msg.WhichOneof("kind")
    if kind == "opened":
        return Opened(session_id=msg.opened.session_id, prompt_tokens=msg.opened.prompt_tokens)
    if kind == "verdict":
        v = msg.verdict
        return Verdict(
            round=v.round,
            accepted=v.accepted,
            next_token=v.next_token if v.HasField("next_token") else None,
            finished=v.finished,
            finish_reason=finish_reason_from_pb(v.finish_reason),
            verify_seconds=float(v.verify_seconds),
            resampled=v.resampled,
            chain=v.chain,
            queue_seconds=float(v.queue_seconds),
            batch_size=v.batch_size,
            void_blocks=v.void_blocks,
        )
    raise InvalidRequestError("empty SessionResponse")


# ── Generate ───────────────────────────────────────────────────────────────────────────────────


def generate_request_to_pb(req: GenerateRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt_token_ids=list(req.prompt_token_ids),
        sampling=sampling_to_pb(req.sampling),
        request_id=req.request_id,
    )


def generate_request_from_pb(msg: pb.GenerateRequest) -> GenerateRequest:
    """Server side: validated (InvalidRequestError)."""
    if not msg.HasField("sampling"):
        raise InvalidRequestError("GenerateRequest.sampling is required")
    return GenerateRequest(
        prompt_token_ids=tuple(msg.prompt_token_ids),
        sampling=sampling_from_pb(msg.sampling),
        request_id=msg.request_id,
    )


def generate_chunk_to_pb(chunk: GenerateChunk) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        token_ids=list(chunk.token_ids),
        finished=chunk.finished,
        finish_reason=finish_reason_to_pb(chunk.finish_reason),
    )


def generate_chunk_from_pb(msg: pb.GenerateResponse) -> GenerateChunk:
    return GenerateChunk(
        token_ids=tuple(msg.token_ids),
        finished=msg.finished,
        finish_reason=finish_reason_from_pb(msg.finish_reason),
    )


def verifier_stub(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """A draftlink.v1.Verifier client stub (the generated stubs are untyped; this is the one seam)."""
    return pb_grpc.VerifierStub(channel)  # type: ignore[no-untyped-call]
