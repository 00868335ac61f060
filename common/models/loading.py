"""Model specs → LoadedModel (model + tokenizer + fingerprint); tokenizer compatibility check."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.errors import ModelError, TokenizerMismatchError
from common.models import fast, tiny
from common.models.gguf_load import load_gguf

log = logging.getLogger("draftlink.models")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
SPEC_KINDS = ("builtin", "hf", "gguf")


@dataclass(eq=False)
class LoadedModel:
    """A causal LM in eval mode with its tokenizer; logits are sliced to ``vocab_size``."""

    spec: str
    model: Any  # transformers PreTrainedModel (or its int8-quantized copy)
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    vocab_size: int  # = len(tokenizer); the embedding may be padded beyond it
    fingerprint: str  # tokenizer_fingerprint(tokenizer)
    eos_token_ids: tuple[int, ...]
    device: str = "cpu"
    dtype: str = "float32"
    options: dict[str, bool] = field(default_factory=dict)  # fast_linear / int8 as loaded


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the token → id mapping and the special tokens (not config.vocab_size)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    added = sorted(
        (int(i), str(t.content), bool(t.special)) for i, t in tokenizer.added_tokens_decoder.items()
    )
    special = {
        "eos": tokenizer.eos_token,
        "bos": tokenizer.bos_token,
        "special": sorted(str(t) for t in tokenizer.all_special_tokens),
    }
    blob = json.dumps({"vocab": vocab, "added": added, "special": special}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def check_compatible(drafter_fp: str, drafter_name: str, target_fp: str, target_name: str) -> None:
    """Raise TokenizerMismatchError unless both models share one tokenizer fingerprint."""
    if drafter_fp != target_fp:
        raise TokenizerMismatchError(
            f"tokenizer mismatch: drafter {drafter_name!r} (fingerprint {drafter_fp[:16]}…) and "
            f"target {target_name!r} (fingerprint {target_fp[:16]}…) use different vocabularies; "
            "pick a drafter and a target from the same model family"
        )


def _eos_ids(tokenizer: Any, model: Any) -> tuple[int, ...]:
    """Union of the tokenizer's, config's and generation config's EOS ids, plus ChatML/document ends."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)):
        ids.update([source] if isinstance(source, int) else (source or []))
    gen = getattr(model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None)
    ids.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
    # ChatML's turn end and the document end both stop generation (Qwen's own generation_config
    # lists both for instruct models; the GGUF metadata keeps only one)
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in ("<|im_end|>", "<|endoftext|>") if t in vocab)
    return tuple(sorted(i for i in ids if 0 <= i < len(tokenizer)))


def _load_tiny(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    tok = tiny.tiny_tokenizer()
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    model: Any = tiny.build_tiny(tiny.parse_tiny(name), len(tok), eos)
    return model.to(dtype), tok


def _load_pretrained(path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model from {path!r}: {exc}") from exc
    return model.eval(), tok


def _load_builtin(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    # imported here so `python -m common.models.fetch` does not find itself pre-imported
    from common.models import fetch

    if name.startswith("tiny-"):
        return _load_tiny(name, dtype)
    if name in fetch.QWEN_MODELS:
        model_dir = fetch.model_dir(name)
        if not fetch.is_fetched(name):
            raise ModelError(
                f"builtin:{name} is not fetched (expected {model_dir}): run `make fetch-models` "
                "(or `python -m common.models.fetch`) once"
            )
        return _load_pretrained(str(model_dir), dtype)
    known = [*tiny.VARIANTS, *fetch.QWEN_MODELS]
    raise ModelError(f"unknown builtin model {name!r}; known: {', '.join('builtin:' + k for k in known)}")


def _load_any(spec: str, dtype: torch.dtype) -> tuple[Any, Any]:
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SPEC_KINDS or not rest:
        raise ModelError(
            f"unknown model spec {spec!r}: expected builtin:<name>, hf:<id-or-dir> or gguf:<file>"
        )
    if kind == "builtin":
        return _load_builtin(rest, dtype)
    if kind == "hf":
        return _load_pretrained(rest, dtype)
    path = Path(rest).expanduser()
    if not path.is_file():
        raise ModelError(f"gguf file not found: {path}")
    return load_gguf(path, dtype)


def _spread(model: Any) -> Any:
    """device="auto": spread the layers over every visible GPU (accelerate's device map).

    accelerate is an optional extra (`pip install 'draftlink[multi-gpu]'`); the batched layer
    keeps each layer's KV cache on that layer's device.
    """
    try:
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError:
        raise ModelError(
            "device 'auto' (a model spread over several GPUs) needs the optional 'accelerate' "
            "package: pip install 'draftlink[multi-gpu]'"
        ) from None
    device_map = infer_auto_device_map(
        model, no_split_module_classes=getattr(model, "_no_split_modules", None)
    )
    log.info("device map over %d device(s): %s", len(set(device_map.values())), device_map)
    return dispatch_model(model, device_map=device_map)


def load_model(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    fast_linear: bool = False,
    int8: bool = False,
) -> LoadedModel:
    """Load a model spec (``builtin:``, ``hf:``, ``gguf:``); ModelError when it cannot."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if device not in ("cpu", "auto") and not device.startswith("cuda"):
        raise ModelError(f"unknown device {device!r}; known: cpu, cuda[:N], auto")
    if int8 and (device != "cpu" or DTYPES[dtype] != torch.float32):
        raise ModelError("int8=True needs device='cpu' and dtype='float32' (dynamic quantization)")
    start = time.perf_counter()
    model, tok = _load_any(spec, DTYPES[dtype])
    model = (_spread(model) if device == "auto" else model.to(device)).eval()
    if device == "auto":
        device = str(model.get_input_embeddings().weight.device)  # where input ids must go
    for p in model.parameters():
        p.requires_grad_(False)
    if int8:
        model = fast.quantize_int8(model)
    if fast_linear:
        fast.use_fast_linear(model)
    lm = LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tok,
        vocab_size=len(tok),
        fingerprint=tokenizer_fingerprint(tok),
        eos_token_ids=_eos_ids(tok, model),
        device=device,
        dtype=dtype,
        options={"fast_linear": fast_linear, "int8": int8},
    )
    log.info(
        "loaded %s in %.2fs (vocab %d, fingerprint %s)",
        spec,
        time.perf_counter() - start,
        lm.vocab_size,
        lm.fingerprint[:12],
    )
    return lm
