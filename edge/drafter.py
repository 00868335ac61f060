"""The drafter: the edge's small model on ONE dedicated worker thread, and per-request draft state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from common.codec import Codec, Draft, make_codec
from common.models import CachedLM, LoadedModel
from common.sampling import probs_from_logits
from common.types import SamplingParams
from edge.rounds import valid_cache_len

T = TypeVar("T")


class Drafter:
    """Owns the loaded drafter and the single thread every forward of every request runs on."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drafter")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the drafter thread (HTTP and gRPC stay on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def new_state(
        self,
        prompt_ids: Sequence[int],
        codec_spec: str,
        rng: np.random.Generator,
        params: SamplingParams,
    ) -> DraftState:
        """Per-request state (own KV cache, own codec object: C-SQS is stateful)."""
        codec = make_codec(codec_spec, self.lm.vocab_size)
        return DraftState(self.lm, prompt_ids, codec, rng, params)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class DraftState:
    """One generation's drafter context: the token sequence, its KV cache and codec.

    Thread discipline: `draft` runs on the drafter thread, `apply` on the event loop, strictly
    alternating (the round loop awaits each), so no lock is needed.
    """

    def __init__(
        self,
        lm: LoadedModel,
        prompt_ids: Sequence[int],
        codec: Codec,
        rng: np.random.Generator,
        params: SamplingParams,
    ) -> None:
        self.lm = lm
        self.codec = codec
        self.rng = rng
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.stop_ids = frozenset(params.stop_token_ids)  # drafting past a stop token is wasted work
        self.tokens: list[int] = list(prompt_ids)  # prompt + generated
        self.cache = CachedLM(lm)
        self._valid = 0  # cache length still valid (cropped lazily on the drafter thread)

    def draft(self, max_drafts: int) -> tuple[list[Draft], bytes, float]:
        """Draft up to max_drafts tokens, stopping after a stop-token draft → (drafts, payload, seconds)."""
        start = time.perf_counter()
        drafts: list[Draft] = []
        if max_drafts > 0:
            with torch.inference_mode():
                self.cache.crop(min(self._valid, self.cache.num_tokens))
                logits = self.cache.extend(self.tokens[self.cache.num_tokens :])  # [n, V] float32
                while True:
                    # [1, V] float64 q for the next position, same temperature/top_p as the target
                    q = probs_from_logits(logits[-1:].numpy(), self.temperature, self.top_p)[0]
                    d = self.codec.compress(q, self.rng)  # q̂, and x̃ drawn from q̂ (never from q)
                    drafts.append(d)
                    if len(drafts) == max_drafts or d.token in self.stop_ids:
                        break
                    logits = self.cache.extend([d.token])  # [1, V]
        payload = self.codec.encode(drafts)
        return drafts, payload, time.perf_counter() - start

    def apply(self, new_tokens: Sequence[int], accepted: int) -> None:
        """Append a round's output; the cache keeps only the prefix shared with the new context."""
        self._valid = valid_cache_len(self.cache.num_tokens, len(self.tokens), accepted)
        self.tokens.extend(new_tokens)
