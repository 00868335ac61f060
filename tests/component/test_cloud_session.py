"""Cloud servicer on a loopback port with the tiny models: exact verification end to end, Generate."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from common.codec import make_codec
from common.models import LoadedModel, load_model
from common.rpc import convert as cv
from common.rpc import pb
from common.sampling import drafter_rng, probs_from_logits
from common.types import FinishReason, SamplingParams
from tests.support.cloud import (
    ReferenceDrafter,
    ServerThread,
    SyncSession,
    greedy_tokens,
    run_session,
    tiny_config,
)
from tests.support.stats import chi_square_pvalue

PROMPT = (11, 305, 42, 7, 1500, 99)
CODECS = ["dense:fp32", "dense:fp16", "qs:ell=240", "ksqs:k=16,ell=100", "csqs:alpha=0.05,eta=0.02,ell=240"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(tiny_config(max_sessions=8)) as srv:
        yield srv


pytestmark = pytest.mark.usefixtures("no_leaked_sessions")


@pytest.fixture(scope="module")
def drafters() -> dict[str, LoadedModel]:
    return {name: load_model(f"builtin:{name}") for name in ("tiny-draft", "tiny-draft-far")}


def test_info(channel: grpc.Channel, server: ServerThread) -> None:
    info = cv.info_from_pb(cv.verifier_stub(channel).Info(pb.InfoRequest(), timeout=5))
    assert info.model_id == "builtin:tiny-target"
    assert info.tokenizer_fingerprint == server.lm.fingerprint
    assert info.vocab_size == server.lm.vocab_size
    assert set(info.codecs) == {"dense", "qs", "ksqs", "csqs"}
    assert info.bitstream_version == 1
    assert info.limits.max_sessions == 8
    assert info.limits.max_draft_len == server.cfg.max_draft_len
    assert info.limits.max_message_bytes == server.server.max_message_bytes


@pytest.mark.parametrize("spec", CODECS)
def test_greedy_equals_target(channel: grpc.Channel, server: ServerThread, drafters, spec: str) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    drafter = ReferenceDrafter(drafters["tiny-draft"], make_codec(spec, server.lm.vocab_size), params)
    run = run_session(channel, server.lm, drafter, PROMPT, draft_len=4)
    assert run.output == greedy_tokens(server.lm, PROMPT, 24)
    assert run.verdicts[-1].finish_reason is FinishReason.LENGTH
    assert sum(v.accepted for v in run.verdicts) > 0  # the partial-agreement drafter lands some


def test_greedy_far_drafter_forces_rejections(channel: grpc.Channel, server: ServerThread, drafters) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    codec = make_codec("ksqs:k=16,ell=100", server.lm.vocab_size)
    run = run_session(
        channel, server.lm, ReferenceDrafter(drafters["tiny-draft-far"], codec, params), PROMPT, 5
    )
    assert run.output == greedy_tokens(server.lm, PROMPT, 16)
    assert sum(v.resampled for v in run.verdicts) >= len(run.verdicts) // 2


def test_first_token_distribution_matches_target(
    channel: grpc.Channel, server: ServerThread, drafters
) -> None:
    """Many seeded single-round sessions: the first output token is distributed as p (chi-square)."""
    n, temp = 1000, 1.0
    params = SamplingParams(temperature=temp, max_new_tokens=1)
    lm = server.lm
    p = probs_from_logits(greedy_logits(lm, PROMPT), temp, 1.0)[0]  # [V] target p at the first position
    counts = np.zeros(lm.vocab_size, dtype=np.int64)
    codec = make_codec("ksqs:k=4,ell=8", lm.vocab_size)  # coarse q̂: many rejections and resamples
    drafter = ReferenceDrafter(drafters["tiny-draft"], codec, params, seed=123)
    q = probs_from_logits(greedy_logits(drafter.lm, PROMPT), temp, 1.0)[0]
    resampled = 0
    for seed in range(n):
        payload = codec.encode([codec.compress(q, drafter_rng(seed, len(PROMPT)))])
        session = SyncSession(channel)
        session.open(cv.OpenRequest(PROMPT, _with_seed(params, seed), codec.spec, lm.fingerprint))
        v = session.round(0, payload)
        assert v.finished
        assert v.finish_reason is FinishReason.LENGTH
        first = v.next_token if v.accepted == 0 else codec.decode(payload)[0].token
        assert first is not None
        counts[first] += 1
        resampled += v.resampled
        assert session.finish() == grpc.StatusCode.OK
    assert 0.1 * n < resampled < 0.9 * n  # both paths exercised
    assert chi_square_pvalue(counts, p) > 1e-3


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    return SamplingParams(
        params.temperature, params.top_p, seed, params.max_new_tokens, params.stop_token_ids
    )


def greedy_logits(lm: LoadedModel, prompt: tuple[int, ...]) -> np.ndarray:
    from common.models import CachedLM

    return CachedLM(lm).extend(list(prompt))[-1:].numpy()  # [1, V]


def test_seeded_sessions_are_reproducible(channel: grpc.Channel, server: ServerThread, drafters) -> None:
    params = SamplingParams(temperature=0.8, seed=42, max_new_tokens=20)
    runs = []
    for _ in range(2):
        codec = make_codec("csqs:alpha=0.05,eta=0.02,ell=240", server.lm.vocab_size)
        runs.append(
            run_session(
                channel, server.lm, ReferenceDrafter(drafters["tiny-draft"], codec, params), PROMPT, 4
            )
        )
    assert runs[0].output == runs[1].output
    assert [v.accepted for v in runs[0].verdicts] == [v.accepted for v in runs[1].verdicts]


def test_stop_token_ends_session(channel: grpc.Channel, server: ServerThread) -> None:
    ref = greedy_tokens(server.lm, PROMPT, 10)
    params = SamplingParams(temperature=0.0, max_new_tokens=50, stop_token_ids=(ref[6],))
    exact = ReferenceDrafter(server.lm, make_codec("qs:ell=240", server.lm.vocab_size), params)
    run = run_session(channel, server.lm, exact, PROMPT, draft_len=4)
    assert run.output == ref[: ref.index(ref[6]) + 1]
    assert run.verdicts[-1].finish_reason is FinishReason.STOP


def test_zero_draft_blocks_decode_autoregressively(channel: grpc.Channel, server: ServerThread) -> None:
    codec = make_codec("ksqs:k=16,ell=100", server.lm.vocab_size)
    session = SyncSession(channel)
    session.open(
        cv.OpenRequest(
            PROMPT, SamplingParams(temperature=0.0, max_new_tokens=3), codec.spec, server.lm.fingerprint
        )
    )
    out = [session.round(r, codec.encode([])).next_token for r in range(3)]
    assert out == greedy_tokens(server.lm, PROMPT, 3)
    assert session.finish() == grpc.StatusCode.OK


def test_concurrent_sessions_are_isolated(channel: grpc.Channel, server: ServerThread, drafters) -> None:
    """Six sessions at once over one batch engine: each still equals its own greedy reference."""
    prompts = [(i + 3, 2 * i + 100, 7, 1000 + i) for i in range(6)]
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            params = SamplingParams(temperature=0.0, max_new_tokens=14)
            codec = make_codec("ksqs:k=16,ell=100", server.lm.vocab_size)
            drafter = ReferenceDrafter(drafters["tiny-draft"], codec, params)
            results[i] = run_session(channel, server.lm, drafter, prompts[i], 3).output
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i, prompt in enumerate(prompts):
        assert results[i] == greedy_tokens(server.lm, prompt, 14)


# ── Generate ───────────────────────────────────────────────────────────────────────────────────


def generate(
    channel: grpc.Channel, prompt: tuple[int, ...], params: SamplingParams
) -> list[cv.GenerateChunk]:
    req = cv.generate_request_to_pb(cv.GenerateRequest(prompt, params, "t"))
    return [cv.generate_chunk_from_pb(m) for m in cv.verifier_stub(channel).Generate(req, timeout=30)]


def test_generate_greedy_equals_target(channel: grpc.Channel, server: ServerThread) -> None:
    chunks = generate(channel, PROMPT, SamplingParams(temperature=0.0, max_new_tokens=15))
    assert [t for c in chunks for t in c.token_ids] == greedy_tokens(server.lm, PROMPT, 15)
    assert all(len(c.token_ids) == 1 for c in chunks)  # streamed one token per message
    assert chunks[-1].finished
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert not any(c.finished for c in chunks[:-1])


def test_generate_sampling_is_seeded(channel: grpc.Channel, server: ServerThread) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=12)
    a, b = (generate(channel, PROMPT, params) for _ in range(2))
    assert a == b
    other = generate(channel, PROMPT, SamplingParams(temperature=1.0, top_p=0.9, seed=8, max_new_tokens=12))
    assert other != a


def test_generate_stop_token(channel: grpc.Channel, server: ServerThread) -> None:
    ref = greedy_tokens(server.lm, PROMPT, 8)
    chunks = generate(
        channel, PROMPT, SamplingParams(temperature=0.0, max_new_tokens=50, stop_token_ids=(ref[4],))
    )
    assert [t for c in chunks for t in c.token_ids] == ref[: ref.index(ref[4]) + 1]
    assert chunks[-1].finish_reason is FinishReason.STOP
