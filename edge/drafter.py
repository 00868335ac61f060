"""The drafter: the edge's small model on ONE dedicated worker thread, and per-request draft state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from common.codec import Codec, Draft
from common.models import CachedLM, LoadedModel
from common.rounds import draft_one, synced_prefix
from common.types import SamplingParams

T = TypeVar("T")


class Drafter:
    """Owns the loaded drafter and the single thread every forward of every request runs on."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drafter")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the drafter thread (HTTP and gRPC stay on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def new_state(self, params: SamplingParams) -> DraftState:
        """Per-request state (own KV cache and held tokens)."""
        return DraftState(self.lm, params)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class DraftState:
    """One generation's drafter context: the tokens its KV cache holds and the request seed.

    `draft` runs on the drafter thread; one draft at a time per generation (the round loop
    awaits each), so no lock is needed.
    """

    def __init__(self, lm: LoadedModel, params: SamplingParams) -> None:
        if params.seed is None:
            raise ValueError("the edge seeds every request before drafting")
        self.lm = lm
        self.params = params
        self.seed: int = params.seed
        self.stop_ids = frozenset(params.stop_token_ids)  # drafting past a stop token is wasted work
        self.cache = CachedLM(lm)
        self.held: list[int] = []  # the tokens the KV cache holds
        self.codec_seconds = 0.0  # time in the codec (compress + draw + encode), all blocks so far

    def draft(
        self, context: Sequence[int], n: int, codec: Codec, abort: Callable[[], bool] | None = None
    ) -> tuple[list[Draft], bytes, float]:
        """Up to n drafts continuing `context`, compressed by `codec` → (drafts, payload, seconds).

        Stops early after a stop-token draft, or when `abort()` turns true (the chain these drafts
        continue has ended: the caller discards them). The draft at absolute position m is drawn
        from the position-keyed drafter stream (common.rounds.draft_one).
        """
        start = time.perf_counter()
        drafts: list[Draft] = []
        if n > 0:
            with torch.inference_mode():
                keep = synced_prefix(self.held, context)
                self.cache.crop(keep)
                self.held = list(context)
                logits = self.cache.extend(context[keep:])[-1]  # [V] float32 for the next position
                while True:
                    t0 = time.perf_counter()
                    d = draft_one(logits.numpy(), codec, self.params, self.seed, len(context) + len(drafts))
                    self.codec_seconds += time.perf_counter() - t0
                    drafts.append(d)
                    if len(drafts) == n or d.token in self.stop_ids or (abort is not None and abort()):
                        break
                    logits = self.cache.extend([d.token])[-1]  # [V]
                    self.held.append(d.token)
        t0 = time.perf_counter()
        payload = codec.encode(drafts)
        self.codec_seconds += time.perf_counter() - t0
        return drafts, payload, time.perf_counter() - start

    def ends_chain(self, drafts: Sequence[Draft]) -> bool:
        """A block ending in a stop-token draft cannot be continued (if accepted, the text ends)."""
        return bool(drafts) and drafts[-1].token in self.stop_ids
