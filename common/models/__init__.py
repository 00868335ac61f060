"""Model specs → loaded (model, tokenizer); tokenizer fingerprint; KV-cached forwards; fetching."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.models.cached import CachedLM
    from common.models.engine import BatchEngine, BatchLimits, EngineObserver, Job, Work
    from common.models.loading import LoadedModel, check_compatible, load_model, tokenizer_fingerprint
    from common.models.packed import PackedLM, SeqKV

__all__ = [
    "BatchEngine",
    "BatchLimits",
    "CachedLM",
    "EngineObserver",
    "Job",
    "LoadedModel",
    "PackedLM",
    "SeqKV",
    "Work",
    "check_compatible",
    "load_model",
    "tokenizer_fingerprint",
]

# Lazy (PEP 562) so `python -m common.models.fetch` and the test conftest's all_fetched() check
# do not pay for importing torch and transformers.
_HOME = (
    {"CachedLM": "cached", "PackedLM": "packed", "SeqKV": "packed"}
    | dict.fromkeys(["LoadedModel", "check_compatible", "load_model", "tokenizer_fingerprint"], "loading")
    | dict.fromkeys(["BatchEngine", "BatchLimits", "EngineObserver", "Job", "Work"], "engine")
)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"common.models.{_HOME[name]}"), name)
    raise AttributeError(f"module 'common.models' has no attribute {name!r}")
