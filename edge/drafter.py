"""The drafter: the edge's small model on the batch engine (one model thread, every request batched)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from common.codec import Codec, Draft
from common.models import LoadedModel
from common.models.engine import BatchEngine, BatchLimits, Job, Work
from common.models.packed import PackedLM, SeqKV
from common.rounds import draft_one, synced_prefix
from common.types import SamplingParams

DraftResult = tuple[list[Draft], bytes, float]  # drafts, codec payload, seconds from submit to done


class Drafter:
    """Owns the loaded drafter and its batch engine: draft blocks of concurrent requests share forwards."""

    def __init__(self, lm: LoadedModel, limits: BatchLimits | None = None) -> None:
        self.lm = lm
        self.engine = BatchEngine(PackedLM(lm), limits or BatchLimits(batch_wait_s=0.0))

    def new_state(self, params: SamplingParams) -> DraftState:
        """Per-request state (its own KV cache inside the batched layer, the tokens it holds)."""
        return DraftState(self.engine.model.new_seq(), params)

    async def draft(
        self,
        state: DraftState,
        context: Sequence[int],
        n: int,
        codec: Codec,
        abort: Callable[[], bool] | None = None,
    ) -> DraftResult:
        """Up to n drafts continuing `context`, compressed by `codec` (see DraftJob)."""
        result: DraftResult = await self.engine.run(DraftJob(state, context, n, codec, abort))
        return result

    def close(self) -> None:
        self.engine.close(wait=False)


class DraftState:
    """One generation's drafter context: its KV cache, the tokens it holds, the request's seed.

    Touched only by the engine thread (inside DraftJobs); one job per generation at a time.
    """

    def __init__(self, kv: SeqKV, params: SamplingParams) -> None:
        if params.seed is None:
            raise ValueError("the edge seeds every request before drafting")
        self.kv = kv
        self.params = params
        self.seed: int = params.seed
        self.stop_ids = frozenset(params.stop_token_ids)  # drafting past a stop token is wasted work
        self.held: list[int] = []  # the tokens the KV cache holds (a prefix of the last context)
        self.codec_seconds = 0.0  # time in the codec (compress + draw + encode), all blocks so far

    def ends_chain(self, drafts: Sequence[Draft]) -> bool:
        """A block ending in a stop-token draft cannot be continued (if accepted, the text ends)."""
        return bool(drafts) and drafts[-1].token in self.stop_ids


class DraftJob(Job):
    """Draft one block on the engine: sync the cache to the context, then one forward per draft.

    Each forward yields q for the next position; draft_one compresses it and draws the draft
    from q̂ with the position-keyed drafter stream, all on the engine thread, so a block of L
    drafts costs L engine steps and no event-loop round trips. Stops early after a stop-token
    draft, or when `abort()` turns true (the chain these drafts continue has ended).
    """

    def __init__(
        self,
        state: DraftState,
        context: Sequence[int],
        n: int,
        codec: Codec,
        abort: Callable[[], bool] | None,
    ) -> None:
        self.seq = state.kv
        self.state = state
        self.context = list(context)
        self.n = n
        self.codec = codec
        self.abort = abort
        self.drafts: list[Draft] = []
        self.done = n <= 0
        self.started = time.perf_counter()
        self._fed = False

    def next_work(self) -> Work | None:
        s, ctx = self.state, self.context
        if self.done:
            return None
        if not self._fed:  # first forward: feed what the cache lacks of the context
            self._fed = True
            keep = min(synced_prefix(s.held, ctx), self.seq.num_tokens)
            self.seq.crop(keep)
            s.held = list(ctx)
            return Work(ctx[keep:], 1)
        token = self.drafts[-1].token
        s.held.append(token)
        return Work([token], 1)

    def on_logits(self, logits: torch.Tensor) -> None:
        pos = len(self.context) + len(self.drafts)  # absolute position of this draft
        t0 = time.perf_counter()
        d = draft_one(logits[-1].numpy(), self.codec, self.state.params, self.state.seed, pos)
        self.state.codec_seconds += time.perf_counter() - t0
        self.drafts.append(d)
        stop = d.token in self.state.stop_ids or (self.abort is not None and self.abort())
        self.done = len(self.drafts) >= self.n or stop

    def result(self) -> DraftResult:
        t0 = time.perf_counter()
        payload = self.codec.encode(self.drafts)
        self.state.codec_seconds += time.perf_counter() - t0
        return self.drafts, payload, time.perf_counter() - self.started
