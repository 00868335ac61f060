"""Load a GGUF file as a plain transformers model (dequantized), without accelerate.

transformers' ``from_pretrained(gguf_file=...)`` needs ``accelerate`` and yields a model that
refuses ``save_pretrained``; building the model from the GGUF's config and loading the
dequantized state dict gives an ordinary model we can run and save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from common.errors import ModelError


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a GGUF file; ModelError if it cannot be read."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
        tensors = load_gguf_checkpoint(  # type: ignore[no-untyped-call]
            str(path), return_tensors=True, model_to_load=model, torch_dtype=dtype
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load GGUF {path}: {exc}") from exc
    result = model.load_state_dict(tensors["tensors"], strict=False)
    # a tied output head has no tensor of its own in the GGUF
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"GGUF {path} does not match its config: missing {missing}, unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    return model.eval(), tok
