"""CachedLM: incremental forwards over a transformers DynamicCache with rollback (crop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from common.errors import ModelError
from common.models.loading import LoadedModel


class CachedLM:
    """One sequence's KV cache over a loaded model; not thread-safe (one per session)."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self._cache = DynamicCache(config=lm.model.config)
        self._num_tokens = 0

    @property
    def num_tokens(self) -> int:
        """Tokens currently held in the KV cache."""
        return self._num_tokens

    def extend(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` after the cached prefix; return their logits, [n, V] float32 on the CPU."""
        input_ids = torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.long)
        if input_ids.dim() != 1 or input_ids.numel() == 0:
            raise ModelError(f"extend needs a non-empty 1-D id sequence, got shape {tuple(input_ids.shape)}")
        n = int(input_ids.numel())
        with torch.inference_mode():
            out = self.lm.model(
                input_ids=input_ids.to(self.lm.device).unsqueeze(0),  # [1, n]
                cache=self._cache,
                use_cache=True,
            )
            # [1, n, V_padded] → [n, V]: drop embedding-padding ids the tokenizer never emits
            logits: torch.Tensor = out.logits[0, :, : self.lm.vocab_size].float().cpu().contiguous()
        self._num_tokens += n
        return logits

    def crop(self, length: int) -> None:
        """Roll the cache back to its first ``length`` tokens (0 <= length <= num_tokens)."""
        if not 0 <= length <= self._num_tokens:
            raise ModelError(f"cannot crop a cache of {self._num_tokens} tokens to {length}")
        if length == 0:
            self.reset()
            return
        if length < self._num_tokens:
            # transformers 5: a negative count removes that many trailing positions
            self._cache.crop(length - self._num_tokens)
            self._num_tokens = length

    def reset(self) -> None:
        """Drop the whole cache (start a new sequence)."""
        self._cache = DynamicCache(config=self.lm.model.config)
        self._num_tokens = 0
