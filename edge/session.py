"""One generation against the cloud: the speculative round loop (Session) or cloud-only (Generate)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from common.errors import InvalidRequestError
from common.rpc import pb
from common.rpc.convert import (
    Block,
    Close,
    GenerateRequest,
    Opened,
    OpenRequest,
    SessionMessage,
    Verdict,
    generate_chunk_from_pb,
    generate_request_to_pb,
    session_message_to_pb,
    session_reply_from_pb,
)
from common.sampling import drafter_rng
from common.types import FinishReason, SamplingParams
from edge.client import CloudClient
from edge.drafter import Drafter, DraftState
from edge.errors import cloud_unavailable
from edge.metrics import EdgeMetrics
from edge.rounds import (
    ProtocolViolationError,
    SpecStats,
    VerdictView,
    check_verdict,
    plan_draft_len,
    round_tokens,
)

log = logging.getLogger("draftlink.edge.session")
_PENDING: set[asyncio.Future[Any]] = set()  # ended calls awaiting their final status


def _await_status(call: Any, timeout_s: float) -> None:
    """Hold a call until its status arrives (cancel it after timeout_s), in the background.

    A grpc.aio call collected before its trailers arrive is cancelled, which the cloud would
    count as a cancelled session.
    """

    async def wait() -> None:
        try:
            await asyncio.wait_for(call.code(), timeout=timeout_s)
        except (TimeoutError, grpc.RpcError):
            call.cancel()

    task = asyncio.ensure_future(wait())
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


@dataclass(frozen=True)
class GenRequest:
    """What the HTTP layer resolved for one generation."""

    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    mode: str  # "speculative" | "cloud-only"
    codec: str
    draft_len: int
    timeout: float


@dataclass(frozen=True)
class RoundOutput:
    """Tokens a round produced, and the finish reason when it was the last one."""

    tokens: list[int]
    finish_reason: str | None


def _reason(r: FinishReason | None) -> str | None:
    return None if r is None else r.value


def verdict_view(v: Verdict) -> VerdictView:
    return VerdictView(
        round=v.round,
        accepted=v.accepted,
        next_token=v.next_token,
        finished=v.finished,
        finish_reason=_reason(v.finish_reason) or ("stop" if v.finished else None),
        resampled=v.resampled,
        verify_seconds=v.verify_seconds,
    )


class Generation:
    """Common surface: start() (handshake; errors here are HTTP errors), rounds(), close()."""

    def __init__(self, req: GenRequest, client: CloudClient, metrics: EdgeMetrics) -> None:
        self.req = req
        self.client = client
        self.metrics = metrics
        self.stats = SpecStats()
        self.prompt_tokens = len(req.prompt_ids)  # the cloud's count replaces it when it sends one
        self._call: Any = None  # grpc.aio call object

    async def start(self) -> None:
        raise NotImplementedError

    def rounds(self) -> AsyncIterator[RoundOutput]:
        raise NotImplementedError

    def _up(self, n: int) -> None:
        self.stats.uplink_bytes += n
        self.metrics.observe_bytes(n, 0)

    def _down(self, n: int) -> None:
        self.stats.downlink_bytes += n
        self.metrics.observe_bytes(0, n)

    async def close(self) -> None:
        """End the generation early (e.g. a stop string matched): cancel the RPC."""
        self.abort()

    def _release_finished(self) -> None:
        """The server finished the stream: keep the call alive until its status arrives."""
        call, self._call = self._call, None
        if call is not None:
            _await_status(call, timeout_s=10.0)

    def abort(self) -> None:
        """Synchronous cancel for cleanup paths that must not await (client went away)."""
        call, self._call = self._call, None
        if call is not None and not call.done():
            call.cancel()

    async def _send(self, call: Any, msg: SessionMessage) -> None:
        wire = session_message_to_pb(msg)
        self._up(wire.ByteSize())
        await call.write(wire)


class SpeculativeGeneration(Generation):
    """Draft with the SLM, send compressed blocks, apply verdicts (method.md §1)."""

    def __init__(self, req: GenRequest, client: CloudClient, metrics: EdgeMetrics, drafter: Drafter) -> None:
        super().__init__(req, client, metrics)
        self.drafter = drafter
        self.fingerprint = drafter.lm.fingerprint
        self.state: DraftState | None = None

    async def start(self) -> None:
        s = self.req.sampling
        self.state = await self.drafter.run(
            self.drafter.new_state,
            self.req.prompt_ids,
            self.req.codec,
            drafter_rng(s.seed),
            s,
        )
        self._call = self.client.stub.Session(timeout=self.req.timeout)
        opening = OpenRequest(self.req.prompt_ids, s, self.req.codec, self.fingerprint, self.req.request_id)
        await self._send(self._call, opening)
        reply = await self._read()
        if not isinstance(reply, Opened):
            raise ProtocolViolationError(f"expected SessionOpened, got {type(reply).__name__}")
        self.prompt_tokens = reply.prompt_tokens or self.prompt_tokens

    async def close(self) -> None:
        """CloseSession + half-close, so the cloud ends the session as "closed" (not cancelled)."""
        call, self._call = self._call, None
        if call is None or call.done():
            return
        try:
            await asyncio.wait_for(self._send(call, Close()), timeout=1.0)
            await asyncio.wait_for(call.done_writing(), timeout=1.0)
        except (grpc.RpcError, TimeoutError):
            call.cancel()  # the text is complete anyway; the cloud sees a cancel instead
            return
        except BaseException:
            call.cancel()
            raise
        _await_status(call, timeout_s=2.0)

    async def _read(self) -> Opened | Verdict:
        msg = await self._call.read()
        if msg is grpc.aio.EOF:
            raise cloud_unavailable("the session ended without an answer")
        assert isinstance(msg, pb.SessionResponse)
        self._down(msg.ByteSize())
        try:
            return session_reply_from_pb(msg)
        except InvalidRequestError as exc:
            raise ProtocolViolationError(str(exc)) from None

    async def rounds(self) -> AsyncIterator[RoundOutput]:
        assert self.state is not None, "start() first"
        assert self._call is not None, "start() first"
        state, generated, rnd = self.state, 0, 0
        while True:
            remaining = self.req.sampling.max_new_tokens - generated
            if remaining <= 0:
                raise ProtocolViolationError("the cloud did not finish at max_new_tokens")
            t0 = time.perf_counter()
            drafts, payload, draft_s = await self.drafter.run(
                state.draft, plan_draft_len(self.req.draft_len, remaining)
            )
            self.metrics.draft_seconds.observe(draft_s)
            self.stats.draft_seconds += draft_s
            await self._send(self._call, Block(rnd, payload))
            reply = await self._read()
            if not isinstance(reply, Verdict):
                raise ProtocolViolationError("expected a Verdict")
            v = verdict_view(reply)
            check_verdict(v, rnd, len(drafts))
            tokens = round_tokens([d.token for d in drafts], v)
            self.stats.record_round(len(drafts), v, len(payload))
            self.metrics.observe_round(len(drafts), v.accepted, v.resampled, v.verify_seconds)
            self.metrics.round_seconds.observe(time.perf_counter() - t0)
            state.apply(tokens, v.accepted)
            generated += len(tokens)
            rnd += 1
            if v.finished:
                self._release_finished()
            yield RoundOutput(tokens, v.finish_reason if v.finished else None)
            if v.finished:
                return


class CloudOnlyGeneration(Generation):
    """Proxy Verifier.Generate: plain autoregressive sampling of the target (baseline, fallback)."""

    def __init__(self, req: GenRequest, client: CloudClient, metrics: EdgeMetrics) -> None:
        super().__init__(req, client, metrics)
        self._first: pb.GenerateResponse | None = None

    async def start(self) -> None:
        wire = generate_request_to_pb(
            GenerateRequest(self.req.prompt_ids, self.req.sampling, self.req.request_id)
        )
        self._up(wire.ByteSize())
        self._call = self.client.stub.Generate(wire, timeout=self.req.timeout)
        self._first = await self._next()  # surfaces UNAVAILABLE etc. before any HTTP byte is sent

    async def _next(self) -> pb.GenerateResponse:
        msg = await self._call.read()
        if msg is grpc.aio.EOF:
            raise cloud_unavailable("Generate ended without finishing")
        assert isinstance(msg, pb.GenerateResponse)
        self._down(msg.ByteSize())
        return msg

    async def rounds(self) -> AsyncIterator[RoundOutput]:
        msg = self._first
        assert msg is not None, "start() first"
        while True:
            chunk = generate_chunk_from_pb(msg)
            reason = (_reason(chunk.finish_reason) or "stop") if chunk.finished else None
            if chunk.finished:
                self._release_finished()
            yield RoundOutput(list(chunk.token_ids), reason)
            if chunk.finished:
                return
            msg = await self._next()


def make_generation(
    req: GenRequest, client: CloudClient, metrics: EdgeMetrics, drafter: Drafter
) -> Generation:
    if req.mode == "cloud-only":
        return CloudOnlyGeneration(req, client, metrics)
    return SpeculativeGeneration(req, client, metrics, drafter)
