"""draftlink.v1.Verifier over grpc.aio: converts messages, runs rounds on the batch engine, maps errors."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from cloud.jobs import RoundJob
from cloud.metrics import CloudMetrics
from cloud.sessions import SessionEntry, SessionManager
from cloud.verifier import (
    RoundOutcome,
    VerifierLimits,
    VerifySession,
    check_prompt,
    check_resume,
    check_sampling,
    open_codec,
)
from common.errors import ProtocolError, SessionTimeoutError, UnavailableError
from common.models import LoadedModel
from common.models.engine import BatchEngine
from common.rpc import convert as cv
from common.rpc import pb, pb_grpc
from common.rpc.status import status_for

log = logging.getLogger("draftlink.cloud.servicer")


class ClientGoneError(Exception):
    """The client cancelled the RPC or vanished; there is nobody left to send a status to."""


@dataclass
class ServingState:
    """What the servicer needs; `lm`, `engine` and `info` stay None until the model is loaded."""

    manager: SessionManager
    metrics: CloudMetrics
    limits: VerifierLimits
    idle_timeout: float
    lm: LoadedModel | None = None
    engine: BatchEngine | None = None
    info: cv.ServerInfo | None = None


class VerifierServicer(pb_grpc.VerifierServicer):
    """The three RPCs; each handler only converts, delegates and maps errors to statuses."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    # ── Info ──────────────────────────────────────────────────────────────────────────────────

    async def Info(  # noqa: N802 - gRPC method name
        self, request: pb.InfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.InfoResponse:
        if self.state.info is None:
            await self._abort(context, UnavailableError("model is still loading"))
        assert self.state.info is not None
        return cv.info_to_pb(self.state.info)

    # ── Session ───────────────────────────────────────────────────────────────────────────────

    async def Session(  # noqa: N802 - gRPC method name
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        entry: SessionEntry | None = None
        outcome = "error"
        error: Exception | None = None
        try:
            lm = self._model()
            first = await self._read(context)
            if first is None:
                outcome = "closed"
                return
            if not isinstance(first, cv.OpenRequest):
                raise ProtocolError("the first message of a Session must be OpenSession")
            core = self._new_session(lm, first)
            entry = self.state.manager.acquire("session", first.request_id)
            entry.core = core
            await self._write(context, cv.Opened(entry.id, core.prompt_tokens))
            outcome = await self._rounds(context, entry, core)
        except ClientGoneError:
            outcome = "shutdown" if self.state.manager.draining else "cancelled"
        except asyncio.CancelledError:
            outcome = "shutdown" if self.state.manager.draining else "cancelled"
            raise
        except Exception as exc:  # every error becomes a status, never a crash
            error = exc
            outcome = "idle_timeout" if isinstance(exc, SessionTimeoutError) else "error"
        finally:
            if entry is not None:
                self.state.manager.release(entry, outcome)
        if error is not None:
            await self._abort(context, error)

    def _new_session(self, lm: LoadedModel, req: cv.OpenRequest) -> VerifySession:
        """Validate an OpenSession (pure checks) and build the session's core."""
        limits = self.state.limits
        check_prompt(req.prompt_token_ids, lm.vocab_size, limits)
        check_sampling(req.sampling, limits)
        check_resume(req, lm.vocab_size)
        codec = open_codec(req, lm.fingerprint, lm.vocab_size)
        seq = self._engine().model.new_seq()  # this session's KV cache inside the batched layer
        return VerifySession(lm, req.sampling, req.prompt_token_ids, limits, codec, req.resume_token_ids, seq)

    async def _rounds(
        self, context: grpc.aio.ServicerContext, entry: SessionEntry, core: VerifySession
    ) -> str:
        """Block → Verdict until finished, closed or an error; returns the outcome."""
        while True:
            msg = await self._read(context)
            entry.touch(self.state.manager.clock())
            if msg is None:  # half-close without CloseSession: the client is done
                return "closed"
            if isinstance(msg, cv.Close):
                self.state.manager.release(entry, "closed")  # free the KV cache before waiting
                await self._expect_eof(context)
                return "closed"
            if isinstance(msg, cv.OpenRequest):
                raise ProtocolError("the session is already open")
            self.state.metrics.spec.uplink_bytes.inc(len(msg.payload))  # counted even if it fails
            result = await self._engine().run(RoundJob(core, msg))
            if result is None:  # a void block (drafted past a rejection): dropped, no verdict
                self.state.metrics.spec.void_blocks.inc()
                continue
            downlink = await self._write(context, result.verdict)
            self._observe(result, downlink)
            entry.touch(self.state.manager.clock())
            if result.verdict.finished:
                return "finished"

    async def _expect_eof(self, context: grpc.aio.ServicerContext) -> None:
        """After CloseSession only the half-close may follow; anything else is a protocol error."""
        try:
            msg = await self._read(context)
        except SessionTimeoutError:
            return  # the client never half-closed; the session is already gone
        if msg is not None:
            raise ProtocolError("message after CloseSession")

    def _observe(self, result: RoundOutcome, downlink: int) -> None:
        m = self.state.metrics
        m.spec.observe_round(result.drafted, result.raw_accepted, result.verdict.resampled, 0, downlink)
        m.spec.verify_seconds.observe(result.verdict.verify_seconds)

    # ── Generate ──────────────────────────────────────────────────────────────────────────────

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> None:
        entry: SessionEntry | None = None
        outcome = "error"
        error: Exception | None = None
        try:
            lm = self._model()
            req = cv.generate_request_from_pb(request)
            check_prompt(req.prompt_token_ids, lm.vocab_size, self.state.limits)
            check_sampling(req.sampling, self.state.limits)
            seq = self._engine().model.new_seq()
            core = VerifySession(lm, req.sampling, req.prompt_token_ids, self.state.limits, cache=seq)
            entry = self.state.manager.acquire("generate", req.request_id)
            entry.core = core
            await self._generate(context, core)
            outcome = "finished"
        except asyncio.CancelledError:
            outcome = "shutdown" if self.state.manager.draining else "cancelled"
            raise
        except Exception as exc:  # every error becomes a status, never a crash
            error = exc
        finally:
            if entry is not None:
                self.state.manager.release(entry, outcome)
        if error is not None:
            await self._abort(context, error)

    async def _generate(self, context: grpc.aio.ServicerContext, core: VerifySession) -> None:
        """One engine job per token (batched with other sessions); stream each token as it comes."""
        while not core.finished:
            outcome = await self._engine().run(RoundJob(core, None))
            assert outcome is not None
            v = outcome.verdict
            tokens = () if v.next_token is None else (v.next_token,)
            self.state.metrics.generate_tokens.inc(len(tokens))
            chunk = cv.GenerateChunk(tokens, v.finished, v.finish_reason)
            await context.write(cv.generate_chunk_to_pb(chunk))

    # ── helpers ───────────────────────────────────────────────────────────────────────────────

    def _model(self) -> LoadedModel:
        if self.state.lm is None:
            raise UnavailableError("model is still loading")
        return self.state.lm

    def _engine(self) -> BatchEngine:
        if self.state.engine is None:
            raise UnavailableError("model is still loading")
        return self.state.engine

    async def _read(self, context: grpc.aio.ServicerContext) -> cv.SessionMessage | None:
        """The next client message (None at half-close); SessionTimeoutError when idle too long."""
        timeout = self.state.idle_timeout
        try:
            raw = await asyncio.wait_for(context.read(), timeout)
        except TimeoutError:
            raise SessionTimeoutError(f"no message for {timeout:g}s; session closed as idle") from None
        if raw is grpc.aio.EOF:
            if context.cancelled():  # a cancelled (or vanished) client also reads as EOF
                raise ClientGoneError
            return None
        return cv.session_message_from_pb(raw)

    async def _write(self, context: grpc.aio.ServicerContext, reply: cv.SessionReply) -> int:
        """Send one reply; returns its size in bytes (downlink accounting)."""
        msg = cv.session_reply_to_pb(reply)
        await context.write(msg)
        return int(msg.ByteSize())

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        code, details = status_for(exc)
        self.state.metrics.rpc_errors.labels(code.name).inc()
        if code == grpc.StatusCode.INTERNAL:
            log.error("internal error in RPC", exc_info=exc)
        else:
            log.info("RPC refused: %s: %s", code.name, details)
        await context.abort(code, details)
