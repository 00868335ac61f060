"""BatchEngine: continuous batching of pull-based model Jobs on one dedicated model thread."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from common.errors import ConfigError, ModelError
from common.models.packed import PackedLM, SeqKV

log = logging.getLogger("draftlink.models")
T = TypeVar("T")


@dataclass(frozen=True)
class Work:
    """One request for model work: append ``tokens`` to the job's seq, logits for the last ``rows``."""

    tokens: Sequence[int]  # ids to append to the job's seq (>= 1)
    rows: int  # logits wanted for the last `rows` of them (0 <= rows <= len(tokens))


class Job(ABC):
    """A unit of model work driven by the engine thread (a verify round, a prefill, a draft block).

    next_work / on_logits / result run on the engine thread, strictly one after another. After
    ``run`` returns or raises (cancellation included) the engine no longer touches the job or its
    seq; a job that failed or was withdrawn mid-work may leave extra tokens in its seq (crop it).
    """

    seq: SeqKV

    @abstractmethod
    def next_work(self) -> Work | None:
        """The next work item; None when the job is done."""

    @abstractmethod
    def on_logits(self, logits: torch.Tensor) -> None:
        """Logits of the last completed work item: [rows, V] float32 CPU."""

    @abstractmethod
    def result(self) -> Any:
        """What the awaiting coroutine gets once next_work returned None."""

    def on_forward(self, sessions: int, started: float) -> None:  # noqa: B027 - optional hook
        """The job's work is in a forward of `sessions` jobs that began at perf_counter `started`."""


@dataclass(frozen=True)
class BatchLimits:
    """How much one forward may carry and how long the engine waits to fill it."""

    max_batch_tokens: int = 2048  # tokens per forward
    max_batch_sessions: int = 32  # jobs per forward
    batch_wait_s: float = 0.001  # gather window when fewer than max jobs are ready
    prefill_chunk: int = 512  # longest slice of one job's work in one forward

    def __post_init__(self) -> None:
        if min(self.max_batch_tokens, self.max_batch_sessions, self.prefill_chunk) < 1:
            raise ConfigError(f"batch limits must be >= 1: {self}")
        if not 0.0 <= self.batch_wait_s < 10.0:
            raise ConfigError(f"batch_wait_s must be in [0, 10): {self.batch_wait_s}")


class EngineObserver:
    """Metric hooks (no-ops here); called on the engine thread, so keep them quick."""

    def on_step(self, sessions: int, tokens: int, seconds: float) -> None:
        """One forward: jobs in it, tokens fed, seconds it took."""

    def on_first_forward(self, wait_seconds: float) -> None:
        """A job entered its first forward ``wait_seconds`` after it was submitted."""


class EngineClosedError(ModelError):
    """The engine was closed before (or while) the job ran."""


@dataclass(eq=False)
class _Entry:
    """Engine bookkeeping for one submitted job."""

    job: Job
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    submitted: float
    work: Work | None = None
    fed: int = 0  # tokens of `work` already fed
    take: int = 0  # tokens of `work` in the step being run
    rows: list[torch.Tensor] = field(default_factory=list)  # wanted rows collected across slices
    started: bool = False
    busy: bool = False  # the engine thread is calling into the job or forwarding it
    cancelled: bool = False
    finished: bool = False  # no more work: result, error or withdrawal
    counted_out: bool = False  # already subtracted from the `queued` gauge
    released: asyncio.Future[None] | None = None  # set by a cancelled run() waiting for `busy` to end
    outcome: tuple[Any, BaseException | None] | None = None  # (result, error), handed over by _settle


def _resolve(entry: _Entry, value: Any = None, error: BaseException | None = None) -> None:
    """Complete the awaiting future from any thread (no-op if it is already done)."""

    def settle() -> None:
        if entry.future.done():
            return
        if error is not None:
            entry.future.set_exception(error)
        else:
            entry.future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        entry.loop.call_soon_threadsafe(settle)


class BatchEngine:
    """Runs every forward of one PackedLM on one thread, batching the ready jobs of many callers."""

    def __init__(self, model: PackedLM, limits: BatchLimits, observer: EngineObserver | None = None) -> None:
        self.model = model
        self.limits = limits
        self.observer = observer or EngineObserver()
        self._cond = threading.Condition()
        self._inbox: list[_Entry] = []  # submitted, next_work not yet asked (guarded by _cond)
        self._calls: list[tuple[Callable[[], Any], ThreadFuture[Any]]] = []  # guarded by _cond
        self._ready: collections.deque[_Entry] = collections.deque()  # engine thread only
        self._running: list[_Entry] = []  # the step in progress (engine thread only)
        self._count = 0  # jobs submitted and not finished (guarded by _cond)
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="model-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Jobs waiting or running (a gauge)."""
        return self._count

    async def run(self, job: Job) -> Any:
        """Submit ``job`` and await its result(); cancelling withdraws it before its next step."""
        loop = asyncio.get_running_loop()
        entry = _Entry(job, loop, loop.create_future(), time.perf_counter())
        with self._cond:
            if self._closed:
                raise EngineClosedError("the model engine is closed")
            self._inbox.append(entry)
            self._count += 1
            self._cond.notify()
        try:
            return await entry.future
        except asyncio.CancelledError:
            await self._withdraw(entry)
            raise

    async def _withdraw(self, entry: _Entry) -> None:
        """Mark a cancelled job; if the engine is inside it right now, wait for that step to end."""
        with self._cond:
            entry.cancelled = True
            if not entry.busy:
                self._finish(entry)
                return
            entry.released = entry.loop.create_future()
        await entry.released

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the model thread between steps (loading, warm-up) and return its value."""
        future: ThreadFuture[T] = ThreadFuture()
        with self._cond:
            if self._closed:
                raise EngineClosedError("the model engine is closed")
            self._calls.append((fn, future))
            self._cond.notify()
        return await asyncio.wrap_future(future)

    def close(self, wait: bool = True) -> None:
        """Stop after the current step; waiting jobs and calls fail with EngineClosedError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # ── engine thread ──────────────────────────────────────────────────────────────────────────

    def _main(self) -> None:
        try:
            self._serve()
        except Exception:  # a bug here must not leave callers awaiting forever
            log.exception("model engine thread failed")
        finally:
            with self._cond:
                self._closed = True
            self._shutdown()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._inbox or self._calls or self._ready):
                    self._cond.wait()
                if self._closed:
                    break
            self._run_calls()
            if self._stopping():
                break
            self._admit()
            self._gather()
            if self._stopping():  # close() during a call or the gather window: no further step
                break
            self._running = self._select()
            if self._running:
                self._step(self._running)
            self._running = []

    def _stopping(self) -> bool:
        with self._cond:
            return self._closed

    def _run_calls(self) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
        for fn, future in calls:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def _admit(self) -> None:
        """Ask new jobs for their first work and queue them behind the jobs already ready."""
        with self._cond:
            fresh = [e for e in self._inbox if not e.finished]  # skip jobs withdrawn while waiting
            self._inbox = []
            for entry in fresh:
                entry.busy = True
        for entry in fresh:
            self._advance(entry)
        self._settle(fresh)

    def _gather(self) -> None:
        """Wait up to batch_wait_s for more jobs while the next forward has room for them."""
        limits = self.limits
        if limits.batch_wait_s <= 0 or not self._ready:
            return
        pending = sum(len(e.work.tokens) - e.fed for e in self._ready if e.work is not None)
        deadline = time.perf_counter() + limits.batch_wait_s
        with self._cond:
            while (
                not self._closed
                and len(self._ready) + len(self._inbox) < limits.max_batch_sessions
                and pending < limits.max_batch_tokens
            ):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        if self._inbox:
            self._admit()

    def _select(self) -> list[_Entry]:
        """FIFO from the ready queue until the session or token budget is spent; long work is sliced."""
        limits = self.limits
        budget = limits.max_batch_tokens
        chosen: list[_Entry] = []
        skipped: list[_Entry] = []  # a second job on a seq already in this step keeps its place
        seqs: set[int] = set()
        with self._cond:
            while self._ready and len(chosen) < limits.max_batch_sessions and budget > 0:
                entry = self._ready.popleft()
                if entry.finished or entry.work is None:
                    continue
                if id(entry.job.seq) in seqs:
                    skipped.append(entry)
                    continue
                entry.take = min(len(entry.work.tokens) - entry.fed, limits.prefill_chunk, budget)
                budget -= entry.take
                entry.busy = True
                seqs.add(id(entry.job.seq))
                chosen.append(entry)
            self._ready.extendleft(reversed(skipped))
        return chosen

    def _step(self, batch: list[_Entry]) -> None:
        """One packed forward over the chosen slices, then each job's callbacks; requeue or finish."""
        items: list[tuple[SeqKV, Sequence[int], int]] = []
        for entry in batch:
            assert entry.work is not None
            tokens, a, b = entry.work.tokens, entry.fed, entry.fed + entry.take
            wanted_from = len(tokens) - entry.work.rows  # rows are the work's last tokens
            items.append((entry.job.seq, tokens[a:b], max(0, b - max(a, wanted_from))))
        start = time.perf_counter()
        for entry in batch:
            with contextlib.suppress(Exception):  # a hook never breaks the step
                entry.job.on_forward(len(batch), start)
        try:
            logits = self.model.forward(items)
        except Exception as exc:
            log.exception("packed forward over %d jobs failed", len(batch))
            for entry in batch:
                self._fail(entry, exc)
            self._settle(batch)
            return
        self._observe(batch, start, time.perf_counter() - start)
        for entry, rows in zip(batch, logits, strict=True):
            entry.fed += entry.take
            if rows.shape[0]:
                entry.rows.append(rows)
            if entry.cancelled or entry.work is None or entry.fed < len(entry.work.tokens):
                continue
            self._deliver(entry)
        self._settle(batch)

    def _deliver(self, entry: _Entry) -> None:
        """The work item is complete: hand over all its rows, then ask for the next one."""
        rows, entry.rows = entry.rows, []
        logits = torch.cat(rows) if rows else torch.empty(0, self.model.lm.vocab_size)
        try:
            entry.job.on_logits(logits)
        except Exception as exc:
            self._fail(entry, exc)
            return
        self._advance(entry)

    def _advance(self, entry: _Entry) -> None:
        """Ask the job for its next work; finish it (result or error) when there is none."""
        try:
            work = entry.job.next_work()
            if work is not None and (not work.tokens or not 0 <= work.rows <= len(work.tokens)):
                raise ModelError(f"bad work: {len(work.tokens)} tokens, {work.rows} rows")
            value = entry.job.result() if work is None else None
        except Exception as exc:
            self._fail(entry, exc)
            return
        entry.work, entry.fed = work, 0
        if work is None:
            entry.finished = True
            entry.outcome = (value, None)

    def _fail(self, entry: _Entry, exc: BaseException) -> None:
        entry.finished = True
        entry.work = None
        entry.outcome = (None, exc)

    def _settle(self, entries: list[_Entry]) -> None:
        """After the engine is done with ``entries`` this step: requeue, or count out and resolve."""
        done: list[_Entry] = []
        with self._cond:
            for entry in entries:
                entry.busy = False
                if entry.cancelled or entry.finished:
                    self._finish(entry)
                    done.append(entry)
                else:
                    self._ready.append(entry)  # round robin: served jobs go to the back
        # resolved after counting out, so `queued` is already down when the caller wakes
        for entry in done:
            if entry.released is not None:
                _resolve_released(entry.released, entry.loop)
            elif entry.outcome is not None:
                _resolve(entry, *entry.outcome)

    def _finish(self, entry: _Entry) -> None:
        """Count a job out exactly once (under _cond)."""
        entry.finished = True
        if not entry.counted_out:
            entry.counted_out = True
            self._count -= 1

    def _observe(self, batch: list[_Entry], start: float, seconds: float) -> None:
        try:
            self.observer.on_step(len(batch), sum(e.take for e in batch), seconds)
            for entry in batch:
                if not entry.started:
                    entry.started = True
                    self.observer.on_first_forward(start - entry.submitted)
        except Exception:
            log.exception("engine observer failed")

    def _shutdown(self) -> None:
        with self._cond:
            entries = [*self._inbox, *self._ready, *self._running]
            calls, self._calls, self._inbox, self._running = self._calls, [], [], []
            self._ready.clear()
            for entry in entries:
                self._finish(entry)
        for entry in entries:
            if entry.released is not None:
                _resolve_released(entry.released, entry.loop)
            _resolve(entry, error=EngineClosedError("the model engine was closed"))
        for _, future in calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineClosedError("the model engine was closed"))


def _resolve_released(released: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
    def settle() -> None:
        if not released.done():
            released.set_result(None)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
