"""The builtin tiny pair: seeded random-init Qwen2-shaped causal LMs on a committed BPE tokenizer.

Agreement control: every tiny draft is the tiny target plus seeded Gaussian weight noise,
``W_draft = W_target + noise · std(W_target) · N(0, 1)`` per weight tensor (norm gains, whose std
is 0, stay identical). ``noise=0`` is the target itself (100 % greedy agreement); the default
draft noise gives partial agreement; ``far`` is an independently seeded model (near zero).
Spec names (all share one tokenizer, hence one fingerprint); greedy agreement measured on the 12
prompts × 16 tokens of tests/unit/test_models_tiny.py:

- ``builtin:tiny-target``
- ``builtin:tiny-draft``        noise 0.05        agreement 0.78 (noise seeds 7/8/9: 0.78/0.70/0.76)
- ``builtin:tiny-draft-exact``  noise 0           agreement 1.0
- ``builtin:tiny-draft-far``    independent seed  agreement 0.0
- ``builtin:tiny-draft?noise=X[&seed=S]``  any level: 0.02 → 0.92, 0.1 → 0.60, 0.2 → 0.29

The model is deliberately high-gain (see the init scales below), so small relative noise already
moves many argmaxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from common.errors import ModelError

TOKENIZER_FILE = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# Qwen-style ChatML; the edge formats chat requests with apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TARGET_SEED = 1234
FAR_SEED = 98765
DEFAULT_NOISE_SEED = 7
DEFAULT_DRAFT_NOISE = 0.05
# Pad the embedding rows past len(tokenizer) like Qwen does, so logit slicing is exercised.
VOCAB_PAD_MULTIPLE = 64
HIDDEN = 64
# Init scales (why): stock 0.02 init gives near-uniform logits. Linear weights at
# GAIN/sqrt(fan_in) keep the residual stream O(1) so the layers matter; the output head's scale
# makes logits std ≈ LOGIT_STD, so most positions are peaked while some stay high-entropy.
LINEAR_GAIN = 1.0
EMBED_STD = 1.0
LOGIT_STD = 6.0

VARIANTS: dict[str, float | None] = {
    "tiny-target": 0.0,
    "tiny-draft": DEFAULT_DRAFT_NOISE,
    "tiny-draft-exact": 0.0,
    "tiny-draft-far": None,  # None = independent model
}


@dataclass(frozen=True)
class TinySpec:
    """Which tiny model to build: base seed, then noise level and noise seed on top of it."""

    base_seed: int = TARGET_SEED
    noise: float = 0.0
    noise_seed: int = DEFAULT_NOISE_SEED


def parse_tiny(name: str) -> TinySpec:
    """``tiny-draft?noise=0.3&seed=9`` → TinySpec; ModelError for an unknown name or bad parameter."""
    base, _, query = name.partition("?")
    if base not in VARIANTS:
        raise ModelError(f"unknown tiny model {name!r}; known: {', '.join(sorted(VARIANTS))}")
    noise = VARIANTS[base]
    spec = TinySpec(base_seed=FAR_SEED, noise=0.0) if noise is None else TinySpec(noise=noise)
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        try:
            if key == "noise":
                spec = TinySpec(spec.base_seed, float(value), spec.noise_seed)
            elif key == "seed":
                spec = TinySpec(spec.base_seed, spec.noise, int(value))
            else:
                raise ValueError(f"unknown parameter {key!r} (known: noise, seed)")
        except ValueError as exc:
            raise ModelError(f"bad tiny model spec {name!r}: {exc}") from None
    if not math.isfinite(spec.noise) or spec.noise < 0:
        raise ModelError(f"bad tiny model spec {name!r}: noise must be finite and >= 0")
    return spec


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The committed byte-level BPE (2000 ids, EOS ``<|endoftext|>``) with a ChatML template."""
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=Tokenizer.from_file(str(TOKENIZER_FILE)),
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    tok.add_special_tokens({"additional_special_tokens": list(CHAT_TOKENS)})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(n_tokens: int, eos_ids: list[int]) -> Qwen2Config:
    """A 4-layer, 64-wide Qwen2 config; vocab padded to a multiple of 64."""
    padded = -(-n_tokens // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    return Qwen2Config(
        vocab_size=padded,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=eos_ids,
        pad_token_id=eos_ids[0],
    )


def _init_weights(model: Qwen2ForCausalLM, seed: int) -> None:
    """Overwrite every parameter from one local generator, independent of transformers' init."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() == 1:
            # RMSNorm gains stay 1, biases (q/k/v) stay small: [hidden] / [heads*head_dim]
            param.copy_(
                torch.ones_like(param) if "norm" in name else 0.1 * torch.randn(param.shape, generator=gen)
            )
        elif name.endswith("embed_tokens.weight"):
            param.copy_(EMBED_STD * torch.randn(param.shape, generator=gen))
        elif name == "lm_head.weight":
            # final hidden is RMS-normalised (unit RMS), so logit std ≈ LOGIT_STD
            param.copy_(LOGIT_STD / math.sqrt(param.shape[1]) * torch.randn(param.shape, generator=gen))
        else:
            # [out, in] linear weights
            param.copy_(LINEAR_GAIN / math.sqrt(param.shape[1]) * torch.randn(param.shape, generator=gen))


def _add_noise(model: Qwen2ForCausalLM, noise: float, seed: int) -> None:
    """W += noise · std(W) · N(0, 1) for every tensor, from its own seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        std = float(param.std()) if param.numel() > 1 else 0.0
        param.add_(noise * std * torch.randn(param.shape, generator=gen))


def build_tiny(spec: TinySpec, n_tokens: int, eos_ids: list[int]) -> Qwen2ForCausalLM:
    """Build the model described by ``spec`` in float32, eval mode."""
    model = Qwen2ForCausalLM(tiny_config(n_tokens, eos_ids))
    with torch.no_grad():
        _init_weights(model, spec.base_seed)
        if spec.noise > 0:
            _add_noise(model, spec.noise, spec.noise_seed)
    model.train(False)  # eval mode
    return model
