"""The verifier core without gRPC: validation, stop/length truncation, KV rollback, exactness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud.verifier import (
    RoundOutcome,
    TargetCache,
    VerifierLimits,
    VerifySession,
    check_drafts,
    check_prompt,
    check_sampling,
    decode_block,
    max_message_bytes,
    open_codec,
)
from common.codec import Draft, make_codec
from common.errors import InvalidRequestError, PreconditionError, ProtocolError
from common.models import LoadedModel, load_model
from common.protocol import Block, OpenRequest
from common.rounds import truncate_output
from common.types import FinishReason, SamplingParams
from tests.support.cloud import ReferenceDrafter, greedy_tokens

LIMITS = VerifierLimits(max_draft_len=8, max_prompt_tokens=64, max_new_tokens=100)
PROMPT = (11, 305, 42, 7, 1500, 99)
V = 2000  # the tiny tokenizer's vocabulary


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    return load_model("builtin:tiny-target")


@pytest.fixture(scope="module")
def far() -> LoadedModel:
    return load_model("builtin:tiny-draft-far")


def _verify(sess: VerifySession, round_no: int, payload: bytes, more: bool = False) -> RoundOutcome:
    out = sess.verify_block(Block(round_no, payload, more=more))
    assert out is not None, "not a void block"
    return out


def _lattice(token: int, support: list[int] | None, counts: list[int], ell: int) -> Draft:
    s = None if support is None else np.array(support, dtype=np.int64)
    return Draft(token=token, support=s, counts=np.array(counts, dtype=np.int64), ell=ell)


# ── validation ─────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("prompt", "match"),
    [((), "empty"), (tuple(range(65)), "max_prompt_tokens=64"), ((1, V), "out of range")],
)
def test_check_prompt(prompt: tuple[int, ...], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        check_prompt(prompt, V, LIMITS)


def test_check_sampling_limit() -> None:
    check_sampling(SamplingParams(max_new_tokens=100), LIMITS)
    with pytest.raises(InvalidRequestError, match="exceeds the server limit"):
        check_sampling(SamplingParams(max_new_tokens=101), LIMITS)


def test_open_codec() -> None:
    ok = OpenRequest((1,), SamplingParams(), "ksqs:k=4,ell=8", "fp")
    assert open_codec(ok, "fp", V).kind == "ksqs"
    with pytest.raises(PreconditionError, match="fingerprint mismatch"):
        open_codec(ok, "other", V)
    for spec in ("zstd:level=3", "ksqs:k=0,ell=8", ""):
        with pytest.raises(PreconditionError, match="unsupported codec"):
            open_codec(OpenRequest((1,), SamplingParams(), spec, "fp"), "fp", V)


@pytest.mark.parametrize(
    ("draft", "match"),
    [
        (_lattice(V, [1, V], [1, 1], 2), "out of range"),  # token id >= V
        (_lattice(3, [3, 3], [1, 1], 2), "distinct ascending"),  # duplicate support ids
        (_lattice(5, [5, 3], [1, 1], 2), "distinct ascending"),  # not ascending
        (_lattice(3, [3, V + 4], [1, 1], 2), "distinct ascending"),  # support id out of range
        (_lattice(3, [-1, 3], [1, 1], 2), "distinct ascending"),  # negative id
        (_lattice(3, [3, 4], [1, 2], 2), "sum to ell"),  # counts not summing to ell
        (_lattice(3, [3, 4], [3, -1], 2), "sum to ell"),  # negative count
        (_lattice(3, [3, 4], [1], 1), "differ in length"),
        (_lattice(4, [3, 4], [2, 0], 2), "q̂ = 0"),  # token that cannot have been drawn
        (_lattice(3, None, [1, 1], 2), "length V"),  # dense counts of the wrong length
        (Draft(token=1, support=None, counts=None, ell=0, probs=np.ones(3) / 3), "non-negative vector"),
        (Draft(token=1, support=None, counts=None, ell=0), "no distribution"),
    ],
)
def test_check_drafts_rejects(draft: Draft, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        check_drafts([draft], V)


def test_decode_block_errors() -> None:
    codec = make_codec("ksqs:k=4,ell=8", V)
    rng = np.random.default_rng(0)
    q = np.full(V, 1.0 / V)
    nine = codec.encode([codec.compress(q, rng) for _ in range(9)])
    with pytest.raises(InvalidRequestError, match="9 drafts; max_draft_len is 8"):
        decode_block(codec, nine, V, 8)
    good = codec.encode([codec.compress(q, rng)])
    assert len(decode_block(codec, good, V, 8)) == 1
    for bad in (good[:-1], good + b"\0", b"", b"\x02" + good[1:]):
        with pytest.raises(InvalidRequestError, match="malformed"):
            decode_block(codec, bad, V, 8)


# ── stop and length ────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("output", "generated", "max_new", "stops", "want"),
    [
        ([1, 2, 3], 0, 10, (), (3, None)),
        ([1, 2, 3], 0, 10, (2,), (2, FinishReason.STOP)),  # stop inside: kept, then end
        ([1, 2, 3], 0, 10, (3,), (3, FinishReason.STOP)),  # stop is the next token
        ([1, 2, 3], 8, 10, (), (2, FinishReason.LENGTH)),  # budget 2 < 3
        ([1, 2, 3], 7, 10, (), (3, FinishReason.LENGTH)),  # exactly fills the budget
        ([1, 2, 3], 8, 10, (2,), (2, FinishReason.STOP)),  # stop wins on the last allowed token
        ([5], 0, 1, (), (1, FinishReason.LENGTH)),
    ],
)
def test_truncate_output(
    output: list[int], generated: int, max_new: int, stops: tuple[int, ...], want: tuple[int, object]
) -> None:
    params = SamplingParams(max_new_tokens=max_new, stop_token_ids=stops)
    assert truncate_output(output, generated, params) == want


def test_stop_inside_accepted_drafts(target: LoadedModel) -> None:
    """Exact drafts, stop id = the 2nd greedy token: 2 accepted, no next token, STOP."""
    ref = greedy_tokens(target, PROMPT, 6)
    params = SamplingParams(temperature=0.0, max_new_tokens=50, stop_token_ids=(ref[1],))
    codec = make_codec("ksqs:k=8,ell=64", target.vocab_size)
    sess = VerifySession(target, params, PROMPT, LIMITS, codec)
    drafts = ReferenceDrafter(target, codec, params).draft(PROMPT, 4)
    out = _verify(sess, 0, codec.encode(drafts))
    assert (out.verdict.accepted, out.verdict.next_token) == (2, None)
    assert out.verdict.finish_reason is FinishReason.STOP
    assert out.raw_accepted == 4
    assert sess.output_tokens == ref[:2]
    with pytest.raises(ProtocolError, match="finished"):
        _verify(sess, 1, codec.encode(drafts))


@pytest.mark.parametrize(("max_new", "accepted", "has_next"), [(2, 2, False), (5, 4, True), (1, 1, False)])
def test_length_limit(target: LoadedModel, max_new: int, accepted: int, has_next: bool) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new)
    codec = make_codec("qs:ell=64", target.vocab_size)
    sess = VerifySession(target, params, PROMPT, LIMITS, codec)
    drafts = ReferenceDrafter(target, codec, params).draft(PROMPT, 4)
    v = _verify(sess, 0, codec.encode(drafts)).verdict
    assert (v.accepted, v.next_token is not None, v.finish_reason) == (
        accepted,
        has_next,
        FinishReason.LENGTH,
    )
    assert sess.output_tokens == greedy_tokens(target, PROMPT, max_new)


def test_round_order(target: LoadedModel) -> None:
    codec = make_codec("qs:ell=64", target.vocab_size)
    sess = VerifySession(target, SamplingParams(temperature=0.0, max_new_tokens=9), PROMPT, LIMITS, codec)
    with pytest.raises(ProtocolError, match="round 1 out of order: expected round 0"):
        _verify(sess, 1, codec.encode([]))
    _verify(sess, 0, codec.encode([]))
    with pytest.raises(ProtocolError, match="round 0 out of order"):
        _verify(sess, 0, codec.encode([]))


# ── KV rollback ────────────────────────────────────────────────────────────────────────────────


def _fresh_logits(lm: LoadedModel, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([ids]))
    return np.asarray(out.logits[0, :, : lm.vocab_size].float().numpy())  # [n, V]


def test_kv_rollback_leaves_no_trace(target: LoadedModel, far: LoadedModel) -> None:
    """After rounds with rejections, the next forward equals a fresh forward of the same prefix."""
    params = SamplingParams(temperature=1.0, seed=3, max_new_tokens=60)
    codec = make_codec("ksqs:k=8,ell=64", target.vocab_size)
    sess = VerifySession(target, params, PROMPT, LIMITS, codec)
    drafter = ReferenceDrafter(far, codec, params, seed=1)
    rejected = 0
    for r in range(6):
        drafts = drafter.draft(sess.target.tokens, 6)
        out = _verify(sess, r, codec.encode(drafts))
        rejected += out.raw_accepted < 6
    assert rejected >= 3  # the far drafter forces rejections, hence cache crops
    extra = drafter.draft(sess.target.tokens, 3)
    ids = [d.token for d in extra]
    tokens = list(sess.target.tokens)
    got = sess.target.forward(ids)  # [4, V] from the rolled-back cache
    want = _fresh_logits(target, tokens + ids)[-4:]  # [4, V] from scratch
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_chunked_prefill_matches_one_forward(target: LoadedModel) -> None:
    prompt = [int(i) for i in np.random.default_rng(0).integers(0, V, 40)]
    chunked = TargetCache(target, prompt, prefill_chunk=7).forward([5, 6])  # [3, V]
    np.testing.assert_allclose(chunked, _fresh_logits(target, [*prompt, 5, 6])[-3:], rtol=1e-4, atol=1e-4)


# ── exactness at the core ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("spec", ["ksqs:k=16,ell=100", "dense:fp16", "csqs:alpha=0.05,eta=0.02,ell=240"])
def test_greedy_core_equals_target(target: LoadedModel, spec: str) -> None:
    drafter_lm = load_model("builtin:tiny-draft")
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    codec = make_codec(spec, target.vocab_size)
    sess = VerifySession(target, params, PROMPT, LIMITS, codec)
    drafter = ReferenceDrafter(drafter_lm, make_codec(spec, target.vocab_size), params)
    while not sess.finished:
        _verify(sess, sess.round, codec.encode(drafter.draft(sess.target.tokens, 4)))
    assert sess.output_tokens == greedy_tokens(target, PROMPT, 20)


def test_generate_steps_equal_greedy(target: LoadedModel) -> None:
    sess = VerifySession(target, SamplingParams(temperature=0.0, max_new_tokens=12), PROMPT, LIMITS)
    while not sess.finished:
        assert sess.step().verdict.next_token is not None
    assert sess.output_tokens == greedy_tokens(target, PROMPT, 12)
    with pytest.raises(ProtocolError, match="no draft blocks"):
        _verify(sess, 0, b"")


def test_max_message_bytes_fits_a_dense_block() -> None:
    codec = make_codec("dense:fp32", 151_936)
    block = 4 + (LIMITS.max_draft_len * codec.formula_bits() + 7) // 8
    assert block < max_message_bytes(LIMITS, 151_936)
