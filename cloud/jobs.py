"""The cloud's work on the batch engine: one verify round (or Generate step) of a session as a Job."""

from __future__ import annotations

import time

import torch

from cloud.verifier import Prepared, RoundOutcome, VerifySession
from common.models.engine import Job, Work
from common.models.packed import SeqKV
from common.protocol import Block


class RoundJob(Job):
    """prepare (validate, decode) → the engine's batched forward → finish (verify, roll back).

    All three run on the engine thread, so a session's KV cache is only ever touched there; the
    session has at most one job in flight (its stream is read in order).
    """

    def __init__(self, session: VerifySession, block: Block | None) -> None:
        cache = session.target.cache
        assert isinstance(cache, SeqKV), "the service's sessions hold the engine's SeqKV"
        self.seq = cache
        self.session = session
        self.block = block  # None: a Generate step
        self.submitted = time.perf_counter()
        self._prep: Prepared | None = None
        self._asked = False
        self._forward_at: float | None = None
        self._batch = 1
        self._outcome: RoundOutcome | None = None

    def next_work(self) -> Work | None:
        if self._asked:
            return None
        self._asked = True
        s = self.session
        self._prep = s.prepare_step() if self.block is None else s.prepare(self.block)
        if self._prep is None:
            return None  # a void block: no forward, no verdict
        tokens, rows = s.feed(self._prep)
        return Work(tokens, rows)

    def on_forward(self, sessions: int, started: float) -> None:
        if self._forward_at is None:  # a long prefill spans several forwards: the first counts
            self._forward_at, self._batch = started, sessions

    def on_logits(self, logits: torch.Tensor) -> None:
        assert self._prep is not None
        queued = (self._forward_at or time.perf_counter()) - self.submitted
        rows = logits.numpy()  # [L+1, V] float32
        self._outcome = self.session.finish(self._prep, rows, queue_seconds=queued, batch_size=self._batch)

    def result(self) -> RoundOutcome | None:
        """The round's outcome; None for a void block."""
        return self._outcome
