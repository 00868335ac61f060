"""PackedLM: one forward over ragged sequences equals per-sequence CachedLM; O(1) rollback; errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ModelError
from common.models import CachedLM, LoadedModel, load_model
from common.models.packed import MIN_CAPACITY, PackedLM, SeqKV

ATOL = 1e-4


def ids(n: int, seed: int) -> list[int]:
    """n token ids from a seeded generator."""
    return torch.randint(0, 2000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model("builtin:tiny-target")


@pytest.fixture(scope="module")
def packed(lm: LoadedModel) -> PackedLM:
    return PackedLM(lm)


class Pair:
    """One sequence held twice: in the packed layer and in a CachedLM reference."""

    def __init__(self, packed: PackedLM, lm: LoadedModel) -> None:
        self.seq = packed.new_seq()
        self.ref = CachedLM(lm)

    def prime(self, packed: PackedLM, tokens: list[int]) -> None:
        packed.forward([(self.seq, tokens, 0)])
        self.ref.extend(tokens)

    def crop(self, length: int) -> None:
        self.seq.crop(length)
        self.ref.crop(length)


def check_mixed_batch(packed: PackedLM, lm: LoadedModel, mode_seed: int = 0) -> None:
    """Fresh prefill, 1-token decode, 5-token verify block, rolled-back seq: one forward."""
    prefill, decode, verify, rolled = (Pair(packed, lm) for _ in range(4))
    decode.prime(packed, ids(37, 1))
    verify.prime(packed, ids(90, 2))
    rolled.prime(packed, ids(20, 3))
    rolled.prime(packed, ids(5, 4))  # a draft block, then three of its tokens rejected
    rolled.crop(22)
    work = [
        (prefill, ids(33, 5 + mode_seed), 33),  # all rows of a fresh prompt
        (decode, ids(1, 6), 1),
        (verify, ids(5, 7), 5),
        (rolled, ids(3, 8), 2),  # only the last 2 rows
    ]
    out = packed.forward([(p.seq, tokens, rows) for p, tokens, rows in work])
    for (pair, tokens, rows), got in zip(work, out, strict=True):
        want = pair.ref.extend(tokens)[len(tokens) - rows :]
        assert got.shape == (rows, lm.vocab_size)
        assert got.dtype == torch.float32
        assert got.device.type == "cpu"
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        assert pair.seq.num_tokens == pair.ref.num_tokens


@pytest.mark.parametrize("mode", ["segments", "gathered"])
def test_mixed_batch_equals_cachedlm(lm: LoadedModel, mode: str) -> None:
    check_mixed_batch(PackedLM(lm, mode), lm)  # type: ignore[arg-type]


def test_fast_linear_mixed_batch_equals_cachedlm() -> None:
    fast = load_model("builtin:tiny-target", fast_linear=True)
    check_mixed_batch(PackedLM(fast), fast)


def test_int8_single_item_equals_cachedlm_and_batches_run() -> None:
    """int8 scales activations per tensor (per forward), so co-batched tokens change a session's
    logits; one item with all rows is the same tensor CachedLM sees and must match."""
    q = load_model("builtin:tiny-target", int8=True)
    packed = PackedLM(q)
    pair = Pair(packed, q)
    for n, seed in ((24, 1), (1, 2), (5, 3)):
        tokens = ids(n, seed)
        (got,) = packed.forward([(pair.seq, tokens, n)])
        torch.testing.assert_close(got, pair.ref.extend(tokens), atol=ATOL, rtol=0)
    # mixed batch: runs, right shapes, and still mostly the fp32 model's argmax
    fp32 = load_model("builtin:tiny-target")
    a, b = packed.new_seq(), packed.new_seq()
    prompt_a, prompt_b = ids(40, 4), ids(9, 5)
    got_a, got_b = packed.forward([(a, prompt_a, 40), (b, prompt_b, 9)])
    assert got_a.shape == (40, q.vocab_size)
    assert got_b.shape == (9, q.vocab_size)
    want = CachedLM(fp32).extend(prompt_a)
    assert float((got_a.argmax(-1) == want.argmax(-1)).float().mean()) >= 0.6


def test_cachedlm_unchanged_by_install() -> None:
    """Installing the packed attention keeps CachedLM's logits bit for bit (sdpa delegation)."""
    lm = load_model("builtin:tiny-target")
    seq = ids(30, 9)

    def run() -> torch.Tensor:
        c = CachedLM(lm)
        parts = [c.extend(seq[:20]), c.extend(seq[20:25])]
        c.crop(22)
        return torch.cat([*parts, c.extend(seq[25:])])

    before = run()
    PackedLM(lm)
    assert lm.model.config._attn_implementation == "draftlink_packed_sdpa"
    assert torch.equal(run(), before)


def test_eager_base_attention() -> None:
    lm = load_model("builtin:tiny-target")
    lm.model.set_attn_implementation("eager")
    packed = PackedLM(lm)
    assert lm.model.config._attn_implementation == "draftlink_packed_eager"
    check_mixed_batch(packed, lm)


def test_rollback_leaves_no_trace(packed: PackedLM) -> None:
    prefix, rejected, after = ids(25, 10), ids(6, 11), ids(4, 12)

    def rolled_back(poison: bool) -> torch.Tensor:
        seq = packed.new_seq()
        packed.forward([(seq, prefix, 0)])
        packed.forward([(seq, rejected, 6)])
        seq.crop(27)  # keeps 2 of the 6
        if poison:  # the rolled-back positions must never be read again
            with torch.inference_mode():  # the storage is an inference tensor
                for kv in seq._kv.values():  # one [2, Hkv, capacity, D] tensor per layer
                    kv[:, :, 27:] = float("nan")
        return packed.forward([(seq, after, 4)])[0]

    got = rolled_back(poison=False)
    assert torch.equal(rolled_back(poison=True), got)
    fresh = packed.new_seq()
    packed.forward([(fresh, prefix, 0)])
    packed.forward([(fresh, rejected[:2], 0)])
    (want,) = packed.forward([(fresh, after, 4)])
    # not bitwise: the 2 kept tokens' K/V came from a 6-row GEMM there, a 2-row one here
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    fresh.crop(0)
    (again,) = packed.forward([(fresh, prefix, 25)])
    fresh.reset()
    assert fresh.capacity == 0
    assert torch.equal(again, packed.forward([(fresh, prefix, 25)])[0])


def test_growth_keeps_history(packed: PackedLM, lm: LoadedModel) -> None:
    pair = Pair(packed, lm)
    sizes = [MIN_CAPACITY - 1, 1, 1, MIN_CAPACITY + 7, 3]  # grows at 65 and again at 136
    capacities = []
    for n, seed in zip(sizes, range(20, 30), strict=False):
        tokens = ids(n, seed)
        (got,) = packed.forward([(pair.seq, tokens, 1)])
        torch.testing.assert_close(got, pair.ref.extend(tokens)[-1:], atol=ATOL, rtol=0)
        capacities.append(pair.seq.capacity)
    assert capacities == [MIN_CAPACITY, MIN_CAPACITY, 2 * MIN_CAPACITY, 4 * MIN_CAPACITY, 4 * MIN_CAPACITY]


def test_rows_zero_and_lm_head_only_on_wanted_rows(packed: PackedLM, lm: LoadedModel) -> None:
    seen: list[tuple[int, ...]] = []
    hook = lm.model.lm_head.register_forward_hook(lambda _m, inp, _out: seen.append(tuple(inp[0].shape)))
    try:
        a, b = packed.new_seq(), packed.new_seq()
        out = packed.forward([(a, ids(300, 13), 1), (b, ids(7, 14), 0)])
    finally:
        hook.remove()
    assert [t.shape for t in out] == [(1, lm.vocab_size), (0, lm.vocab_size)]
    assert seen == [(1, 1, lm.model.config.hidden_size)]  # never [1, 307, hidden]
    (none,) = packed.forward([(b, ids(2, 15), 0)])
    assert none.shape == (0, lm.vocab_size)
    assert b.num_tokens == 9


def test_bad_items_change_nothing(packed: PackedLM) -> None:
    a, b = packed.new_seq(), packed.new_seq()
    packed.forward([(a, ids(4, 16), 0)])
    other = PackedLM(load_model("builtin:tiny-target")).new_seq()
    bad: list[list[tuple[SeqKV, list[int], int]]] = [
        [(a, [], 0)],
        [(a, [1, 2], 3)],
        [(a, [1], -1)],
        [(a, [1], 1), (a, [2], 1)],
        [(b, [1], 1), (other, [1], 1)],
        [(b, [5, 999_999], 1)],
        [(b, [-1], 1)],
    ]
    for items in bad:
        with pytest.raises(ModelError):
            packed.forward(items)
    assert (a.num_tokens, b.num_tokens) == (4, 0)
    with pytest.raises(ModelError):
        a.crop(5)
    with pytest.raises(ModelError):
        a.crop(-1)
    assert packed.forward([]) == []
    with pytest.raises(ModelError):
        PackedLM(a.owner.lm, "paged")  # type: ignore[arg-type]


def test_failed_forward_keeps_lengths(
    packed: PackedLM, lm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = Pair(packed, lm)
    pair.prime(packed, ids(10, 17))

    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("device lost")

    monkeypatch.setattr(lm.model.model.norm, "forward", boom)
    with pytest.raises(RuntimeError):
        packed.forward([(pair.seq, ids(3, 18), 1)])
    monkeypatch.undo()
    assert pair.seq.num_tokens == 10
    tokens = ids(2, 19)
    (got,) = packed.forward([(pair.seq, tokens, 2)])
    torch.testing.assert_close(got, pair.ref.extend(tokens), atol=ATOL, rtol=0)


# ── property: random extend/crop interleavings, batched, equal per-sequence replay ──────────────

STEP = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(1, 9), st.integers(0, 10_000)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(STEP, min_size=1, max_size=6), crop_at=st.lists(st.floats(0, 1), min_size=6, max_size=6)
)
def test_random_interleavings_equal_replay(
    packed: PackedLM, lm: LoadedModel, steps: list[list[tuple[int, int, int, int]]], crop_at: list[float]
) -> None:
    pairs = [Pair(packed, lm) for _ in range(3)]
    for step_no, step in enumerate(steps):
        chosen: dict[int, tuple[int, int, int]] = {}  # seq index → (action, n, seed); one item per seq
        for index, action, n, seed in step:
            chosen.setdefault(index, (action, n, seed))
        items = []
        for index, (action, n, seed) in chosen.items():
            pair = pairs[index]
            if action == 0 and pair.seq.num_tokens:  # roll back first, then extend
                pair.crop(int(crop_at[step_no] * pair.seq.num_tokens))
            items.append((pair, ids(n, seed), min(n, action + 1)))
        out = packed.forward([(p.seq, tokens, rows) for p, tokens, rows in items])
        for (pair, tokens, rows), got in zip(items, out, strict=True):
            want = pair.ref.extend(tokens)[len(tokens) - rows :]
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
