"""builtin:tiny-* models: offline loading, fingerprints, logits slicing, agreement levels, spec errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from common.errors import ModelError, TokenizerMismatchError
from common.models import CachedLM, LoadedModel, check_compatible, load_model, tokenizer_fingerprint
from common.models.agreement import greedy_agreement

PROMPTS = Path(__file__).resolve().parents[2] / "bench" / "prompts"


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    return load_model("builtin:tiny-target")


@pytest.fixture(scope="module")
def prompt_ids(target: LoadedModel) -> list[list[int]]:
    """6 code + 6 English prompts, last 48 tokens each."""
    texts: list[str] = []
    for name in ("code.jsonl", "english.jsonl"):
        with (PROMPTS / name).open(encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f][:6]
    return [target.tokenizer(t)["input_ids"][-48:] for t in texts]


def test_tiny_loads_offline_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    lm = load_model("builtin:tiny-draft")
    assert time.perf_counter() - start < 2.0
    assert lm.vocab_size == len(lm.tokenizer) == 2000
    assert lm.model.config.vocab_size > lm.vocab_size  # padded embedding, like Qwen
    assert lm.tokenizer.eos_token == "<|endoftext|>"
    assert lm.tokenizer.eos_token_id in lm.eos_token_ids
    assert lm.tokenizer.convert_tokens_to_ids("<|im_end|>") in lm.eos_token_ids


def test_tiny_chat_template_and_roundtrip(target: LoadedModel) -> None:
    tok = target.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    src = "def f(x):\n    return x * 2  # héllo ✓\n"
    assert tok.decode(tok(src)["input_ids"]) == src


def test_tiny_is_deterministic_and_peaked(target: LoadedModel, prompt_ids: list[list[int]]) -> None:
    again = load_model("builtin:tiny-target")
    a = CachedLM(target).extend(prompt_ids[0])
    b = CachedLM(again).extend(prompt_ids[0])
    assert a.shape == (len(prompt_ids[0]), target.vocab_size)
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    probs = torch.softmax(a, dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)  # [n] nats
    # far from uniform (log 2000 ≈ 7.6 nats), with both peaked and spread-out positions
    assert float(entropy.median()) < 4.0
    assert float(entropy.min()) < 1.5
    assert float(entropy.max()) > 2.0


def test_fingerprints_match_across_tiny_pair(target: LoadedModel) -> None:
    for spec in ("builtin:tiny-draft", "builtin:tiny-draft-exact", "builtin:tiny-draft-far"):
        draft = load_model(spec)
        assert draft.fingerprint == target.fingerprint
        check_compatible(draft.fingerprint, spec, target.fingerprint, "builtin:tiny-target")


def test_fingerprint_ignores_config_but_sees_vocab(target: LoadedModel) -> None:
    tok = load_model("builtin:tiny-target").tokenizer
    assert tokenizer_fingerprint(tok) == target.fingerprint
    tok.add_tokens(["<extra>"])
    assert tokenizer_fingerprint(tok) != target.fingerprint


def test_mismatched_tokenizer_refused_naming_both() -> None:
    with pytest.raises(TokenizerMismatchError) as info:
        check_compatible("a" * 64, "builtin:tiny-draft", "b" * 64, "hf:some/other-model")
    assert "builtin:tiny-draft" in str(info.value)
    assert "hf:some/other-model" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "low", "high"),
    [
        ("builtin:tiny-draft-exact", 1.0, 1.0),
        ("builtin:tiny-draft", 0.6, 0.9),
        ("builtin:tiny-draft-far", 0.0, 0.1),
        ("builtin:tiny-draft?noise=0", 1.0, 1.0),
        ("builtin:tiny-draft?noise=0.02", 0.85, 1.0),
    ],
)
def test_agreement_levels(
    target: LoadedModel, prompt_ids: list[list[int]], spec: str, low: float, high: float
) -> None:
    rate = greedy_agreement(target, load_model(spec), prompt_ids, n_new=16).rate
    assert low <= rate <= high, f"{spec}: greedy agreement {rate:.3f} outside [{low}, {high}]"


def test_noise_seed_changes_draft(target: LoadedModel, prompt_ids: list[list[int]]) -> None:
    a = CachedLM(load_model("builtin:tiny-draft")).extend(prompt_ids[0])
    b = CachedLM(load_model("builtin:tiny-draft?seed=8")).extend(prompt_ids[0])
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    "spec",
    [
        "builtin:nope",
        "builtin:tiny-draft?noise=-1",
        "builtin:tiny-draft?noise=abc",
        "builtin:tiny-draft?temperature=2",
        "nope:thing",
        "tiny-target",
        "gguf:/nonexistent/model.gguf",
    ],
)
def test_bad_specs_raise_model_error(spec: str) -> None:
    with pytest.raises(ModelError):
        load_model(spec)


def test_bad_options_raise_model_error() -> None:
    with pytest.raises(ModelError, match="dtype"):
        load_model("builtin:tiny-target", dtype="float8")
    with pytest.raises(ModelError, match="int8"):
        load_model("builtin:tiny-target", dtype="bfloat16", int8=True)


def test_bf16_loads_and_returns_float32_logits(prompt_ids: list[list[int]]) -> None:
    lm = load_model("builtin:tiny-target", dtype="bfloat16")
    logits = CachedLM(lm).extend(prompt_ids[0][:5])
    assert logits.dtype == torch.float32
    assert logits.shape == (5, lm.vocab_size)


def test_hf_dir_spec_roundtrip(target: LoadedModel, prompt_ids: list[list[int]], tmp_path: Path) -> None:
    target.model.save_pretrained(str(tmp_path))
    target.tokenizer.save_pretrained(str(tmp_path))
    lm = load_model(f"hf:{tmp_path}")
    assert lm.fingerprint == target.fingerprint
    assert lm.vocab_size == target.vocab_size
    torch.testing.assert_close(CachedLM(lm).extend(prompt_ids[0]), CachedLM(target).extend(prompt_ids[0]))


def test_hf_missing_dir_is_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        load_model(f"hf:{tmp_path / 'missing'}")


def test_device_auto_without_accelerate_is_a_clear_error() -> None:
    import importlib.util

    if importlib.util.find_spec("accelerate") is not None:
        pytest.skip("accelerate is installed here: the multi-GPU path would run instead")
    with pytest.raises(ModelError, match=r"draftlink\[multi-gpu\]"):
        load_model("builtin:tiny-target", device="auto")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ModelError, match="unknown device"):
        load_model("builtin:tiny-target", device="tpu")
