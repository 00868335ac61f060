"""Test support: a CloudServer on its own loop thread, a blocking Session client, a reference drafter."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from cloud.app import CloudServer
from cloud.config import CloudConfig
from common.codec import Codec, Draft
from common.models import CachedLM, LoadedModel, load_model
from common.models.agreement import greedy_continuation
from common.rounds import SpecState, SpecStats, draft_one
from common.rpc import convert as cv
from common.rpc import pb
from common.sampling import drafter_rng
from common.types import SamplingParams

T = TypeVar("T")


def tiny_config(**overrides: Any) -> CloudConfig:
    """A loopback config for tests: tiny target, ephemeral port, no metrics HTTP server."""
    base = CloudConfig(model="builtin:tiny-target", port=0, metrics_port=0, grace_period=2.0)
    return dataclasses.replace(base, **overrides)


class ServerThread:
    """Run a CloudServer on a background thread (sync tests and blocking gRPC clients can use it)."""

    def __init__(self, cfg: CloudConfig | None = None, lm: LoadedModel | None = None) -> None:
        self.cfg = cfg or tiny_config()
        self.lm = lm if lm is not None else load_model(self.cfg.model)
        self.loop = asyncio.new_event_loop()
        self.server = CloudServer(self.cfg, lm=self.lm)
        self._thread = threading.Thread(target=self.loop.run_forever, name="cloud-test-loop", daemon=True)
        self._cond = threading.Condition()
        self._live = 0
        self.server.state.manager.add_listener(self._on_live)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run a coroutine factory on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    def start(self, load: bool = True) -> ServerThread:
        """Serve (health NOT_SERVING), then load the model unless told not to (see `load`)."""
        self._thread.start()
        self.call(self.server.start)
        if load:
            self.load()
        return self

    def load(self) -> None:
        """Finish start-up: the model becomes available and health reports SERVING."""
        self.call(self.server.load)

    def stop(self, grace: float = 0.0) -> None:
        close_sessions()
        if self._thread.is_alive():
            self.call(lambda: self.server.drain(grace), timeout=grace + 30.0)  # the process's sequence
            self.call(self.server.close)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()

    def _on_live(self, count: int) -> None:
        with self._cond:
            self._live = count
            self._cond.notify_all()

    @contextlib.contextmanager
    def engine_held(self) -> Iterator[None]:
        """Hold the batch engine between steps: rounds queue up and share the next forward on exit."""
        engine = self.server.state.engine
        assert engine is not None, "load() first"
        gate = threading.Event()
        blocker = asyncio.run_coroutine_threadsafe(engine.call(gate.wait), self.loop)
        try:
            yield
        finally:
            gate.set()
            blocker.result(30)

    def wait_queued(self, depth: int, timeout: float = 10.0) -> bool:
        """Block until the batch engine holds exactly `depth` jobs (waiting + running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            engine = self.server.state.engine
            if engine is not None and engine.queued == depth:
                return True
            time.sleep(0.005)
        return False

    def wait_live(self, count: int, timeout: float = 10.0) -> bool:
        """Block until the live-session count equals `count` (event-driven, no polling)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._live == count, timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_END = object()


class SyncSession:
    """A blocking Session stream client for tests: send domain messages, receive domain replies."""

    def __init__(self, channel: grpc.Channel, timeout: float = 30.0) -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        self.call = cv.verifier_stub(channel).Session(iter(self._queue.get, _END), timeout=timeout)
        _OPEN.add(self)

    def send(self, message: cv.SessionMessage | pb.SessionRequest) -> None:
        """Queue one message (domain object or raw protobuf)."""
        raw = message if isinstance(message, pb.SessionRequest) else cv.session_message_to_pb(message)
        self._queue.put(raw)

    def recv(self) -> cv.SessionReply:
        """The next reply; grpc.RpcError when the stream ended with an error status."""
        return cv.session_reply_from_pb(next(self.call))

    def half_close(self) -> None:
        self._queue.put(_END)

    def finish(self) -> grpc.StatusCode:
        """Half-close, drain the remaining replies, return the final status code."""
        self.half_close()
        for _ in self.call:
            pass
        return self.call.code()

    def cancel(self) -> None:
        self.call.cancel()

    def close(self) -> None:
        """End the request stream and the call (idempotent): no client thread or server stream is left
        behind for the next test, or for a server stop (grpc aio has crashed stopping under them)."""
        self._queue.put(_END)
        self.call.cancel()
        _OPEN.discard(self)

    def open(self, req: cv.OpenRequest) -> cv.Opened:
        self.send(req)
        reply = self.recv()
        assert isinstance(reply, cv.Opened), reply
        return reply

    def round(self, round_no: int, payload: bytes) -> cv.Verdict:
        self.send(cv.Block(round_no, payload))
        reply = self.recv()
        assert isinstance(reply, cv.Verdict), reply
        return reply


# Strong references on purpose: a session a test dropped is garbage-collected without closing its
# call, and its request-iterator thread then lives on (a weak set let ~90 of them pile up).
_OPEN: set[SyncSession] = set()


def close_sessions() -> None:
    """Close every SyncSession a test left open (tests/conftest.py runs it after each test)."""
    for session in list(_OPEN):
        session.close()


# ── a reference client: drafting with a small model, driving a whole session ────────────────────


def greedy_tokens(lm: LoadedModel, prompt: Sequence[int], n: int) -> list[int]:
    """The target's own greedy continuation (argmax, lowest id on ties), n tokens."""
    return greedy_continuation(lm, prompt, n)


class ReferenceDrafter:
    """Drafts with a small model through the round core (common.rounds.draft_one); a fresh cache per call.

    The draft at absolute position m is drawn from drafter_rng(seed, m): `seed` defaults to the
    request's seed (params.seed, else 0), as the edge does.
    """

    def __init__(
        self, lm: LoadedModel, codec: Codec, params: SamplingParams, seed: int | None = None
    ) -> None:
        self.lm = lm
        self.codec = codec
        self.params = params
        self.seed = seed if seed is not None else (params.seed if params.seed is not None else 0)

    def rng(self, position: int) -> np.random.Generator:
        """The drafter's generator at an absolute position (never the verifier's stream)."""
        return drafter_rng(self.seed, position)

    def draft(self, tokens: Sequence[int], n: int) -> list[Draft]:
        """n drafts continuing `tokens` (simple, not fast)."""
        cache = CachedLM(self.lm)
        logits = cache.extend(list(tokens))[-1]  # [V]
        drafts: list[Draft] = []
        for i in range(n):
            drafts.append(draft_one(logits.numpy(), self.codec, self.params, self.seed, len(tokens) + i))
            if i + 1 < n:
                logits = cache.extend([drafts[-1].token])[-1]  # [V]
        return drafts


@dataclass
class SessionRun:
    """What a driven session produced."""

    output: list[int]
    verdicts: list[cv.Verdict]
    payload_bytes: int
    stats: SpecStats


def run_session(
    channel: grpc.Channel,
    target: LoadedModel,
    drafter: ReferenceDrafter,
    prompt: Sequence[int],
    draft_len: int,
    timeout: float = 60.0,
    chained: bool = False,
    depth: int = 1,
) -> SessionRun:
    """Drive one generation through the round core (SpecState): draft → block → verdict until finished.

    chained=True streams: up to `depth` blocks of one chain in flight, each declaring `more`
    (decided before the next position is drafted), so the cloud verifies them as one long draft.
    """
    params = drafter.params if drafter.params.seed is not None else _seeded(drafter.params, drafter.seed)
    state = SpecState(prompt, params)
    session = SyncSession(channel, timeout)
    session.open(cv.OpenRequest(tuple(prompt), params, drafter.codec.spec, target.fingerprint))
    verdicts: list[cv.Verdict] = []
    while not state.finished:
        while state.draftable and len(state.inflight) < (depth if chained else 1):
            drafts = drafter.draft(state.context(), state.plan(draft_len, chained))
            payload = drafter.codec.encode(drafts)
            block = state.seal(drafts, payload, drafter.codec.spec, more=chained)
            session.send(cv.Block(block.round, payload, more=block.more, chain=block.chain))
        reply = session.recv()
        assert isinstance(reply, cv.Verdict), reply
        verdicts.append(reply)
        state.apply(reply)
    code = session.finish()
    assert code == grpc.StatusCode.OK, code
    return SessionRun(state.output, verdicts, state.stats.payload_bytes, state.stats)


def _seeded(params: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(params, seed=seed)
