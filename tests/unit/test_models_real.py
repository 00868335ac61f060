"""The fetched Qwen2.5-Coder pair (skipped unless `make fetch-models` ran): compatibility, agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.models import CachedLM, LoadedModel, check_compatible, load_model
from common.models.agreement import greedy_agreement

pytestmark = [pytest.mark.real_models, pytest.mark.slow]
PROMPTS = Path(__file__).resolve().parents[2] / "bench" / "prompts" / "code.jsonl"


@pytest.fixture(scope="module")
def pair() -> tuple[LoadedModel, LoadedModel]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_model("builtin:qwen2.5-coder-0.5b"), load_model("builtin:qwen2.5-coder-1.5b")


def test_pair_fingerprints_match(pair: tuple[LoadedModel, LoadedModel]) -> None:
    draft, target = pair
    assert draft.fingerprint == target.fingerprint
    check_compatible(draft.fingerprint, draft.spec, target.fingerprint, target.spec)
    assert draft.vocab_size == target.vocab_size == len(target.tokenizer)
    # Qwen pads the embedding past the tokenizer; logits must be sliced to the tokenizer size
    assert target.model.config.vocab_size >= target.vocab_size
    logits = CachedLM(target).extend(target.tokenizer("def add(a, b):")["input_ids"])
    assert logits.shape[-1] == target.vocab_size
    assert target.tokenizer.convert_tokens_to_ids("<|endoftext|>") in target.eos_token_ids


def test_pair_greedy_agreement_on_code(pair: tuple[LoadedModel, LoadedModel]) -> None:
    draft, target = pair
    with PROMPTS.open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:5]
    prompts = [target.tokenizer(t)["input_ids"] for t in texts]
    agreement = greedy_agreement(target, draft, prompts, n_new=12)
    assert agreement.rate > 0.7, (
        f"greedy agreement {agreement.rate:.3f} ({agreement.matches}/{agreement.positions})"
    )


def test_fast_linear_keeps_argmax_on_real_model(pair: tuple[LoadedModel, LoadedModel]) -> None:
    draft, _ = pair
    fast = load_model("builtin:qwen2.5-coder-0.5b", fast_linear=True)
    ids = draft.tokenizer("import os\n\ndef list_files(path):\n")["input_ids"]
    stock_c, fast_c = CachedLM(draft), CachedLM(fast)
    stock_c.extend(ids)
    fast_c.extend(ids)
    block = [220, 470, 284, 2643, 1769]  # 5-token verify block
    a, b = stock_c.extend(block), fast_c.extend(block)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_gguf_spec_loads_the_verified_file(pair: tuple[LoadedModel, LoadedModel]) -> None:
    from common.models import fetch

    draft, _ = pair
    lm = load_model(f"gguf:{fetch.gguf_path('qwen2.5-coder-0.5b')}")
    assert lm.fingerprint == draft.fingerprint
    ids = draft.tokenizer("def fibonacci(n):\n")["input_ids"]
    # the cached dir holds bf16 roundings of the same dequantized weights: argmax (nearly) agrees
    same = CachedLM(lm).extend(ids).argmax(-1) == CachedLM(draft).extend(ids).argmax(-1)
    assert float(same.float().mean()) >= 0.8
