"""One generation against the cloud: speculative rounds on the round core, or cloud-only (Generate)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import grpc

from common.errors import ConnectionLostError, InvalidRequestError, RequestError
from common.protocol import (
    FEATURE_CHAIN,
    FEATURE_POSITION_RNG,
    FEATURE_RESUME,
    Block,
    Close,
    GenerateRequest,
    Opened,
    OpenRequest,
    SessionMessage,
    Verdict,
)
from common.rounds import InFlight, ProtocolViolationError, SpecState, SpecStats
from common.rpc import pb
from common.rpc.convert import (
    generate_chunk_from_pb,
    generate_request_to_pb,
    session_message_to_pb,
    session_reply_from_pb,
)
from common.types import FinishReason, SamplingParams
from edge.adaptive import AutoRequest, make_policy
from edge.client import CloudClient, CloudTarget
from edge.drafter import Drafter, DraftState
from edge.errors import cloud_unavailable
from edge.metrics import EdgeMetrics
from edge.policy import DraftPolicy
from edge.resume import MAX_STALLED_RESUMES, OPEN_TIMEOUT_S, Deadline, call_error, connect, lost

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
    """What the HTTP layer resolved for one generation (sampling.seed is always set)."""

    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    mode: str  # "speculative" | "cloud-only"
    codec: str
    draft_len: int
    timeout: float
    pipeline: bool = False  # streamed rounds: keep drafting while blocks are in flight
    pipeline_depth: int = 4  # blocks of one chain in flight at most (streamed rounds)
    auto: AutoRequest | None = None  # draft_len/codec "auto", and the client's carried-over state


@dataclass(frozen=True)
class RoundOutput:
    """Tokens a round produced, and the finish reason when it was the last one."""

    tokens: list[int]
    finish_reason: str | None


def _reason(r: FinishReason | None) -> str | None:
    return None if r is None else r.value


class Generation:
    """Common surface: start() (handshake; errors here are HTTP errors), rounds(), close().

    A live generation survives the loss of its cloud session: rounds() reopens it (same or next
    cloud target) with the prompt plus the committed tokens and continues; both sides key their
    randomness by (seed, absolute position), so a seeded request's text does not change.
    """

    def __init__(self, req: GenRequest, client: CloudClient, metrics: EdgeMetrics) -> None:
        self.req = req
        self.client = client
        self.metrics = metrics
        self.stats = SpecStats()
        self.prompt_tokens = len(req.prompt_ids)  # the cloud's count replaces it when it sends one
        self.deadline = Deadline(req.timeout)
        self.target: CloudTarget | None = None  # where the live call goes
        self._call: Any = None  # grpc.aio call object
        self._stalls = 0  # resumes in a row without a new committed token
        self._resumed_at = -1  # committed tokens at the last resume

    async def start(self) -> None:
        """Open on the first cloud target that takes the request (errors here are HTTP errors)."""
        patient = self.client.healthy  # fail fast only while the edge knows no cloud is up
        await connect(
            self.client,
            self._use,
            self._open,
            self._drop_call,
            self.deadline,
            patient=patient and self.client.resume_timeout > 0,
            open_timeout=self._open_timeout,
        )

    # ── subclasses ──────────────────────────────────────────────────────────────────────────
    _open_timeout: float | None = None  # bound of one open attempt (None: the request deadline)
    _resume_needs: tuple[str, ...] = (FEATURE_POSITION_RNG,)  # Info.features a resume relies on

    async def _open(self, target: CloudTarget) -> None:
        """Open the call on `target` and complete the handshake (resuming from the committed state)."""
        raise NotImplementedError

    def _stream(self) -> AsyncIterator[RoundOutput]:
        """Rounds on the live call until the generation finishes (errors propagate)."""
        raise NotImplementedError

    def _committed(self) -> int:
        """Output tokens the cloud has committed so far."""
        raise NotImplementedError

    def _prepare_resume(self) -> None:
        """Adjust local state for a new session (renumber blocks in flight, count the resume)."""
        raise NotImplementedError

    # ── resume ──────────────────────────────────────────────────────────────────────────────
    async def rounds(self) -> AsyncIterator[RoundOutput]:
        """The generation's rounds as one uninterrupted stream, resuming after retryable failures."""
        assert self._call is not None, "start() first"
        while True:
            try:
                async for out in self._stream():
                    yield out
                return
            except Exception as exc:
                err = lost(exc)
                if err is None or self.client.resume_timeout <= 0:
                    raise
            await self._resume(err)

    async def _resume(self, err: RequestError) -> None:
        failed, committed = self.target, self._committed()
        self._stalls = self._stalls + 1 if committed == self._resumed_at else 1
        if self._stalls > MAX_STALLED_RESUMES:
            raise cloud_unavailable(f"{self._stalls - 1} resumes in a row made no progress (last: {err})")
        self._resumed_at = committed
        log.warning(
            "request %s: session on %s lost (%s); resuming with %d committed tokens",
            self.req.request_id,
            failed.address if failed else "?",
            err,
            committed,
        )
        self._drop_call()
        if failed is not None:
            failed.mark_unhealthy(f"session lost: {err}")
        self._prepare_resume()
        t0 = time.monotonic()
        target = await connect(
            self.client,
            self._use,
            self._open,
            self._drop_call,
            self.deadline,
            patient=True,
            cause=err,
            avoid=failed,
            open_timeout=self._open_timeout,
            needs=self._resume_needs,
        )
        self.metrics.resumes.inc()
        log.info(
            "request %s resumed on %s after %.2fs", self.req.request_id, target.address, time.monotonic() - t0
        )

    def _use(self, target: CloudTarget | None) -> None:
        """Account which target this generation occupies (CloudClient.choose spreads by it)."""
        if self.target is not None:
            self.target.release()
        self.target = target
        if target is not None:
            target.active += 1

    # ── accounting and teardown ──────────────────────────────────────────────────────────────
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

    def _drop_call(self) -> None:
        call, self._call = self._call, None
        if call is not None and not call.done():
            call.cancel()

    def abort(self) -> None:
        """Synchronous cancel for cleanup paths that must not await (client went away, request done)."""
        self._drop_call()
        self._use(None)


class SpeculativeGeneration(Generation):
    """Draft with the SLM, send compressed blocks, apply verdicts (method.md §1), serial or streamed.

    Serial: one block in flight, no `more`: the cloud adds a bonus token. Streamed
    (req.pipeline): a sender task keeps drafting while blocks are in flight, each block declaring
    `more` before the next position is drafted; after a verdict that ends the chain, drafts past
    it are dropped (SpecState voids them; the cloud drops the blocks it receives).
    """

    def __init__(self, req: GenRequest, client: CloudClient, metrics: EdgeMetrics, drafter: Drafter) -> None:
        super().__init__(req, client, metrics)
        self.drafter = drafter
        self.fingerprint = drafter.lm.fingerprint
        self.state = SpecState(req.prompt_ids, req.sampling)
        self.stats = self.state.stats
        self.policy: DraftPolicy = make_policy(
            req.codec,
            req.draft_len,
            drafter.lm.vocab_size,
            req.sampling,
            req.pipeline,
            req.pipeline_depth,
            req.auto,
        )
        self.draft: DraftState = drafter.new_state(req.sampling)
        self._wire_codec = req.codec  # the codec spec the cloud decodes with now
        self._sent_at: dict[int, float] = {}  # round → perf_counter when the block was written
        self._wake = asyncio.Event()  # a verdict arrived: the sender may draft again

    _open_timeout = OPEN_TIMEOUT_S
    _resume_needs = (FEATURE_POSITION_RNG, FEATURE_RESUME, FEATURE_CHAIN)

    async def _open(self, target: CloudTarget) -> None:
        """OpenSession with the committed tokens (resume), then re-send the blocks in flight."""
        self._call = target.stub.Session(timeout=self.deadline.remaining(), metadata=self.client.metadata)
        r, s = self.req, self.req.sampling
        self._wire_codec = r.codec  # the new session starts with the request's codec
        resume = tuple(self.state.output)
        opened = OpenRequest(r.prompt_ids, s, r.codec, self.fingerprint, r.request_id, resume)
        self.stats.open_bytes += await self._send(opened)  # every (re)open: not block overhead
        reply = await self._read()
        if not isinstance(reply, Opened):
            raise ProtocolViolationError(f"expected SessionOpened, got {type(reply).__name__}")
        self.prompt_tokens = reply.prompt_tokens or self.prompt_tokens
        for block in list(self.state.inflight):  # same drafts, same payloads: the text is unchanged
            await self._send_block(block)

    def _committed(self) -> int:
        return len(self.state.output)

    def _prepare_resume(self) -> None:
        self.state.reopen()  # rounds from 0, chain 0; counts the resume in the stats
        self._sent_at.clear()

    async def close(self) -> None:
        """CloseSession + half-close, so the cloud ends the session as "closed" (not cancelled)."""
        call, self._call = self._call, None
        self._use(None)
        if call is None or call.done():
            return
        try:
            await asyncio.wait_for(self._write(call, Close()), timeout=1.0)
            await asyncio.wait_for(call.done_writing(), timeout=1.0)
        except (grpc.RpcError, TimeoutError, asyncio.InvalidStateError):
            call.cancel()  # the text is complete anyway; the cloud sees a cancel instead
            return
        except BaseException:
            call.cancel()
            raise
        _await_status(call, timeout_s=2.0)

    # ── wire ───────────────────────────────────────────────────────────────────────────────────
    async def _write(self, call: Any, msg: SessionMessage) -> int:
        wire = session_message_to_pb(msg)
        size = wire.ByteSize()
        self._up(size)
        await call.write(wire)
        return int(size)

    async def _send(self, msg: SessionMessage) -> int:
        """Write to the live call (returns the bytes written); a finished call takes nothing more.

        A call that ended under us raises its own status through the error seam (the session
        is then resumed or the request fails with it), never a bare InvalidStateError.
        """
        call = self._call
        if call is None or call.done():
            if self.state.finished:
                return 0
            raise await call_error(call)
        try:
            return await self._write(call, msg)
        except asyncio.InvalidStateError:  # the stream ended between the check and the write
            if self.state.finished:
                return 0
            raise await call_error(call) from None

    async def _read(self) -> Opened | Verdict:
        call = self._call
        if call is None:
            raise ConnectionLostError("the session is gone")
        msg = await call.read()
        if msg is grpc.aio.EOF:
            raise await call_error(call)
        assert isinstance(msg, pb.SessionResponse)
        self._down(msg.ByteSize())
        try:
            return session_reply_from_pb(msg)
        except InvalidRequestError as exc:
            raise ProtocolViolationError(str(exc)) from None

    # ── rounds ─────────────────────────────────────────────────────────────────────────────────
    async def _draft_and_send(self, chained: bool) -> bool:
        """Draft one block continuing the current chain and send it; False when it went void meanwhile."""
        state, chain = self.state, self.state.chain
        plan = self.policy.plan_block(state)  # decided before any of the block's drafts is drawn
        n = state.plan(plan.want, chained)
        stop = plan.stop

        def abort() -> bool:  # the chain ended (drafts void), or the policy ends the block here
            return state.chain != chain or state.finished or (stop is not None and stop())

        drafts, payload, seconds = await self.drafter.draft(self.draft, state.context(), n, plan.codec, abort)
        self.metrics.draft_seconds.observe(seconds)
        state.stats.draft_seconds += seconds
        state.stats.codec_seconds = self.draft.codec_seconds
        if state.chain != chain or not state.draftable:
            return False  # a verdict ended the chain while drafting: these drafts are void
        more = chained and not self.draft.ends_chain(drafts)
        block = state.seal(drafts, payload, plan.codec.spec, more)
        self.metrics.observe_sent(len(drafts), block.more)
        wire_bytes = await self._send_block(block)
        self.policy.observe_sent(block, seconds, wire_bytes)
        return True

    async def _send_block(self, block: InFlight) -> int:
        """Write a sealed block (with its codec spec when that changes); returns its wire size."""
        switch = block.codec if block.codec != self._wire_codec else None
        self._wire_codec = block.codec
        msg = Block(block.round, block.payload, more=block.more, chain=block.chain, codec=switch)
        self._sent_at[block.round] = time.perf_counter()
        return await self._send(msg)

    async def _sender(self) -> None:
        """Streamed rounds: keep up to pipeline_depth blocks of the current chain in flight."""
        state = self.state
        while not state.finished:
            if not state.draftable or len(state.inflight) >= self.policy.depth:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._draft_and_send(chained=True)

    async def _stream(self) -> AsyncIterator[RoundOutput]:
        sender = asyncio.ensure_future(self._sender()) if self.req.pipeline else None
        try:
            while True:
                if sender is None:
                    if not self.state.inflight:  # after a resume the re-sent block awaits its verdict
                        await self._draft_and_send(chained=False)
                elif sender.done():
                    sender.result()  # surfaces the sender's failure
                    if not self.state.inflight:
                        raise ProtocolViolationError("streaming stopped with nothing in flight")
                out = await self._next_verdict(sender)
                if out is not None:
                    yield out
                    if out.finish_reason is not None:
                        return
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender

    async def _next_verdict(self, sender: asyncio.Future[None] | None) -> RoundOutput | None:
        """Read and apply one verdict (streamed: racing the sender, whose failure must surface)."""
        t0 = time.perf_counter()
        read: asyncio.Future[Opened | Verdict] = asyncio.ensure_future(self._read())
        if sender is not None:
            waiting: set[asyncio.Future[Any]] = {read, sender}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                sender.result()  # raises the sender's error; a sender that ended cleanly: read again
                return None
        reply = await read
        if not isinstance(reply, Verdict):
            raise ProtocolViolationError("expected a Verdict")
        return self._apply(reply, t0)

    def _apply(self, v: Verdict, t0: float) -> RoundOutput:
        block = self.state.inflight[0] if self.state.inflight else None
        drafted = len(block.drafts) if block is not None else 0
        applied = self.state.apply(v)
        if block is not None:
            waited = time.perf_counter() - self._sent_at.pop(block.round, t0)
            self.stats.wait_seconds += waited
            self.policy.observe_verdict(block, v, waited)
        if applied.chain_ended:  # void blocks never get a verdict
            self._sent_at.clear()
        if applied.void_blocks:  # the cloud drops void blocks unread, codec switches included
            self._wire_codec = ""
        self._wake.set()
        self.metrics.observe_round(drafted, v.accepted, v.resampled, v.verify_seconds)
        self.metrics.observe_void(applied.void_blocks, applied.void_drafts)
        self.metrics.round_seconds.observe(time.perf_counter() - t0)
        if applied.finished:
            self._release_finished()
        return RoundOutput(applied.tokens, _reason(applied.finish_reason))


class CloudOnlyGeneration(Generation):
    """Proxy Verifier.Generate: plain autoregressive sampling of the target (baseline, fallback).

    Resumes as Generate(prompt + tokens so far, max_new_tokens − tokens so far): the cloud keys
    each position's draw by (seed, absolute position), so a seeded request continues exactly.
    """

    def __init__(self, req: GenRequest, client: CloudClient, metrics: EdgeMetrics) -> None:
        super().__init__(req, client, metrics)
        self._first: pb.GenerateResponse | None = None
        self.tokens: list[int] = []  # streamed so far (committed by the cloud)

    async def _open(self, target: CloudTarget) -> None:
        r, done = self.req, len(self.tokens)
        sampling = replace(r.sampling, max_new_tokens=r.sampling.max_new_tokens - done)
        wire = generate_request_to_pb(GenerateRequest((*r.prompt_ids, *self.tokens), sampling, r.request_id))
        self._up(wire.ByteSize())
        self._call = target.stub.Generate(
            wire, timeout=self.deadline.remaining(), metadata=self.client.metadata
        )
        self._first = await self._next()  # surfaces UNAVAILABLE etc. before any HTTP byte is sent

    def _committed(self) -> int:
        return len(self.tokens)

    def _prepare_resume(self) -> None:
        self.stats.resumes += 1

    async def _next(self) -> pb.GenerateResponse:
        call = self._call
        if call is None:
            raise ConnectionLostError("the Generate stream is gone")
        msg = await call.read()
        if msg is grpc.aio.EOF:
            raise await call_error(call)
        assert isinstance(msg, pb.GenerateResponse)
        self._down(msg.ByteSize())
        return msg

    async def _stream(self) -> AsyncIterator[RoundOutput]:
        msg, self._first = self._first, None
        if msg is None:
            msg = await self._next()
        while True:
            chunk = generate_chunk_from_pb(msg)
            self.tokens.extend(chunk.token_ids)
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
