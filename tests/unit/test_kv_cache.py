"""CachedLM: incremental logits equal a fresh forward; crop/reset roll back; fast_linear/int8 paths."""

from __future__ import annotations

import pytest
import torch

from common.errors import ModelError
from common.models import CachedLM, LoadedModel, load_model

SEQ = [5, 17, 230, 1999, 42, 7, 7, 300, 12, 901, 64, 3, 88, 1500, 20, 21]


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model("builtin:tiny-target")


def fresh(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Logits of one uncached forward over ids, [n, V]."""
    return CachedLM(lm).extend(ids)


def test_incremental_equals_fresh(lm: LoadedModel) -> None:
    cached = CachedLM(lm)
    parts = [cached.extend(SEQ[:6]), cached.extend(SEQ[6:7]), cached.extend(SEQ[7:])]
    assert cached.num_tokens == len(SEQ)
    torch.testing.assert_close(torch.cat(parts), fresh(lm, SEQ), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("keep", [1, 5, 12, 13, 16])
def test_crop_then_extend_matches_fresh_prefix(lm: LoadedModel, keep: int) -> None:
    cached = CachedLM(lm)
    cached.extend(SEQ[:12])
    cached.extend([1, 2, 3, 4])  # a draft block; keep > 12 keeps part of it
    cached.crop(keep)
    assert cached.num_tokens == keep
    prefix = [*SEQ[:12], 1, 2, 3, 4][:keep]
    nxt = cached.extend(SEQ[:3])  # [3, V]
    torch.testing.assert_close(nxt, fresh(lm, [*prefix, *SEQ[:3]])[keep:], atol=1e-5, rtol=1e-5)


def test_repeated_rollbacks_stay_consistent(lm: LoadedModel) -> None:
    cached = CachedLM(lm)
    cached.extend(SEQ[:4])
    for step in range(4, 12):
        cached.extend([99, 98, 97])  # draft block, fully rejected
        cached.crop(step)
        logits = cached.extend([SEQ[step]])  # [1, V]
        torch.testing.assert_close(logits, fresh(lm, SEQ[: step + 1])[-1:], atol=1e-5, rtol=1e-5)


def test_crop_to_full_length_is_noop_and_reset(lm: LoadedModel) -> None:
    cached = CachedLM(lm)
    cached.extend(SEQ[:5])
    cached.crop(5)
    assert cached.num_tokens == 5
    cached.crop(0)
    assert cached.num_tokens == 0
    torch.testing.assert_close(cached.extend(SEQ[:3]), fresh(lm, SEQ[:3]), atol=1e-5, rtol=1e-5)
    cached.reset()
    assert cached.num_tokens == 0
    torch.testing.assert_close(cached.extend(SEQ[:2]), fresh(lm, SEQ[:2]), atol=1e-5, rtol=1e-5)


def test_bad_crop_and_extend(lm: LoadedModel) -> None:
    cached = CachedLM(lm)
    cached.extend(SEQ[:3])
    with pytest.raises(ModelError):
        cached.crop(4)
    with pytest.raises(ModelError):
        cached.crop(-1)
    with pytest.raises(ModelError):
        cached.extend([])
    assert cached.num_tokens == 3


def test_extend_accepts_tensor(lm: LoadedModel) -> None:
    a = CachedLM(lm).extend(torch.tensor(SEQ[:4]))
    torch.testing.assert_close(a, fresh(lm, SEQ[:4]), atol=0, rtol=0)


def test_fast_linear_matches_stock(lm: LoadedModel) -> None:
    fast = load_model("builtin:tiny-target", fast_linear=True)
    n_fast = sum(type(m).__name__ == "FastLinear" for m in fast.model.modules())
    assert n_fast > 0
    stock_c, fast_c = CachedLM(lm), CachedLM(fast)
    # prefill (stock path above FAST_MAX_TOKENS is fine too), then verify-sized blocks of 1–8
    torch.testing.assert_close(fast_c.extend(SEQ), stock_c.extend(SEQ), atol=1e-4, rtol=1e-4)
    for n in range(1, 9):
        block = SEQ[:n]
        torch.testing.assert_close(fast_c.extend(block), stock_c.extend(block), atol=1e-4, rtol=1e-4)


def test_int8_runs_and_mostly_agrees(lm: LoadedModel) -> None:
    q = load_model("builtin:tiny-target", int8=True)
    a = CachedLM(q).extend(SEQ)
    b = fresh(lm, SEQ)
    assert a.shape == b.shape
    assert a.dtype == torch.float32
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
    assert float(agree) >= 0.6


def test_fast_linear_toggles_back() -> None:
    from common.models.fast import use_fast_linear

    lm = load_model("builtin:tiny-target", fast_linear=True)
    n = use_fast_linear(lm.model, enabled=False)
    assert n > 0
    assert not any(type(m).__name__ == "FastLinear" for m in lm.model.modules())
    assert use_fast_linear(lm.model) == n
