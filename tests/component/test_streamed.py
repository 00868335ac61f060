"""Streamed rounds and resume on the real round core (SpecState + VerifySession, tiny models, one process)."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import numpy as np
import pytest

from bench.inprocess import speculative_generate
from cloud.verifier import VerifierLimits, VerifySession
from common.codec import make_codec
from common.models import CachedLM, LoadedModel, load_model
from common.protocol import Block
from common.rounds import InFlight, SpecState
from common.types import SamplingParams
from tests.support.cloud import ReferenceDrafter, greedy_tokens
from tests.support.stats import chi_square_pvalue

PROMPT = (11, 305, 42, 7, 1500, 99)


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    return load_model("builtin:tiny-target")


@pytest.fixture(scope="module")
def drafter() -> LoadedModel:
    return load_model("builtin:tiny-draft")


@pytest.mark.parametrize("spec", ["ksqs:k=16,ell=100", "csqs:alpha=0.05,eta=0.02,ell=240", "dense:fp16"])
@pytest.mark.parametrize(("draft_len", "depth"), [(1, 3), (3, 2), (4, 4)])
def test_streamed_greedy_equals_target(
    target: LoadedModel, drafter: LoadedModel, spec: str, draft_len: int, depth: int
) -> None:
    params = SamplingParams(temperature=0.0, seed=1, max_new_tokens=30)
    run = speculative_generate(drafter, target, PROMPT, spec, params, draft_len, depth=depth)
    assert run.tokens == greedy_tokens(target, PROMPT, 30)


def test_streamed_seeded_text_does_not_depend_on_block_boundaries(
    target: LoadedModel, drafter: LoadedModel
) -> None:
    """Chains draft every position and both sides key randomness by position: the text of a seeded
    request is the same whatever the block length and pipeline depth (fixed codec)."""
    params = SamplingParams(temperature=1.0, seed=5, max_new_tokens=40)
    runs = [
        speculative_generate(drafter, target, PROMPT, "ksqs:k=8,ell=64", params, n, depth=d).tokens
        for n, d in ((1, 1), (2, 3), (5, 2), (7, 4))
    ]
    assert all(r == runs[0] for r in runs)
    assert len(runs[0]) == 40


def _target_probs(target: LoadedModel, context: tuple[int, ...], temperature: float) -> np.ndarray:
    """p(· | context) of the target, [V] float64."""
    from common.sampling import probs_from_logits

    return probs_from_logits(CachedLM(target).extend(list(context))[-1].numpy(), temperature)


def test_streamed_rounds_sample_the_target_distribution(target: LoadedModel) -> None:
    """Chi-square of the first two tokens over seeded streamed generations (L=1, depth 2): the
    second token is verified as the continuation of the first block, or drafted past a rejection
    and voided. Checked: x0 against p(·), and x1 | x0 against p(· | x0) for the commonest x0."""
    far = load_model("builtin:tiny-draft?noise=0.3")
    temp, n = 1.0, 800
    pairs = []
    voided = 0
    for seed in range(n):
        params = SamplingParams(temperature=temp, seed=seed, max_new_tokens=2)
        run = speculative_generate(far, target, PROMPT, "ksqs:k=4,ell=8", params, 1, depth=2)
        pairs.append((run.tokens[0], run.tokens[1]))
        voided += run.void_blocks > 0
    assert voided > n // 10  # rejections happened, so void blocks and continuations both occurred
    first = np.bincount([a for a, _ in pairs], minlength=target.vocab_size)
    assert chi_square_pvalue(first, _target_probs(target, PROMPT, temp)) > 1e-3
    for x0 in np.argsort(-first)[:2]:
        second = np.bincount([b for a, b in pairs if a == x0], minlength=target.vocab_size)
        assert second.sum() >= 100
        assert chi_square_pvalue(second, _target_probs(target, (*PROMPT, int(x0)), temp)) > 1e-3


def _run_until(
    verifier: VerifySession, state: SpecState, wire: deque[InFlight], ref: ReferenceDrafter, stop: int
) -> None:
    """Drive a streamed generation until `stop` verdicts were applied (or it finished)."""
    applied = 0
    while not state.finished and applied < stop:
        while state.draftable and len(state.inflight) < 3:
            drafts = ref.draft(state.context(), state.plan(3, True))
            wire.append(state.seal(drafts, ref.codec.encode(drafts), ref.codec.spec, more=True))
        b = wire.popleft()
        out = verifier.verify_block(Block(b.round, b.payload, b.more, b.chain))
        if out is not None:
            state.apply(out.verdict)
            applied += 1


@pytest.mark.parametrize("cut", [1, 3, 6])
def test_resume_continues_exactly(target: LoadedModel, drafter: LoadedModel, cut: int) -> None:
    """The cloud 'dies' after `cut` verdicts; a new session opened with the committed tokens and the
    blocks still in flight produces exactly the uninterrupted text (seeded, position-keyed)."""
    params = SamplingParams(temperature=1.0, seed=9, max_new_tokens=30)
    codec = make_codec("ksqs:k=8,ell=64", target.vocab_size)
    limits = VerifierLimits(8, 64, 30)
    ref = ReferenceDrafter(drafter, codec, params)

    def fresh(resume: tuple[int, ...] = ()) -> VerifySession:
        return VerifySession(target, params, PROMPT, limits, make_codec(codec.spec, 2000), resume)

    whole = SpecState(PROMPT, params)
    _run_until(fresh(), whole, deque(), ref, 10_000)
    state, wire = SpecState(PROMPT, params), deque[InFlight]()
    _run_until(fresh(), state, wire, ref, cut)
    wire = deque(state.reopen())  # blocks in flight go to the new session; lost ones are re-sent
    _run_until(fresh(tuple(state.output)), state, wire, ref, 10_000)
    assert state.output == whole.output
    assert state.stats.resumes == 1


def test_resume_token_validation(target: LoadedModel) -> None:
    from cloud.verifier import check_resume
    from common.errors import InvalidRequestError
    from common.protocol import OpenRequest

    params = SamplingParams(seed=1, max_new_tokens=4, stop_token_ids=(3,))
    for resume, match in (((1, 2, 4, 5), "max_new_tokens"), ((2000,), "out of range"), ((3,), "stop token")):
        with pytest.raises(InvalidRequestError, match=match):
            check_resume(OpenRequest(PROMPT, replace(params), "qs:ell=4", "fp", "", resume), 2000)
