"""Batched verification across sessions (one target forward for many): exactness and isolation."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from common.codec import make_codec
from common.models import CachedLM, LoadedModel, load_model
from common.rpc import convert as cv
from common.sampling import drafter_rng, probs_from_logits
from common.types import SamplingParams
from tests.support.cloud import ReferenceDrafter, ServerThread, SyncSession, greedy_tokens, tiny_config
from tests.support.stats import chi_square_pvalue

PROMPTS = [(11, 305, 42, 7, 1500, 99), (5, 17, 300), (1000, 3, 3, 3, 3, 3, 9, 12, 40, 41), (77,)]
WAVE = 16


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(tiny_config(max_sessions=2 * WAVE, max_batch_sessions=32)) as srv:
        yield srv


pytestmark = pytest.mark.usefixtures("no_leaked_sessions")


def _open(
    channel: grpc.Channel, lm: LoadedModel, prompt: tuple[int, ...], params: SamplingParams, spec: str
) -> SyncSession:
    s = SyncSession(channel)
    s.open(cv.OpenRequest(prompt, params, spec, lm.fingerprint))
    return s


def test_first_token_distribution_with_16_sessions_in_one_forward(
    channel: grpc.Channel, server: ServerThread
) -> None:
    """Waves of 16 seeded sessions whose first blocks share one target forward (batch_size == 16):
    the first output token is still distributed as p (chi-square over 1,024 sessions)."""
    lm, temp, spec = server.lm, 1.0, "ksqs:k=4,ell=8"
    prompt = PROMPTS[0]
    drafter = load_model("builtin:tiny-draft")
    q = probs_from_logits(CachedLM(drafter).extend(list(prompt))[-1].numpy(), temp)  # [V]
    p = probs_from_logits(CachedLM(lm).extend(list(prompt))[-1].numpy(), temp)  # [V]
    codec = make_codec(spec, lm.vocab_size)
    counts = np.zeros(lm.vocab_size, dtype=np.int64)
    resampled = 0
    for wave in range(64):
        seeds = range(wave * WAVE, (wave + 1) * WAVE)
        params = [SamplingParams(temperature=temp, seed=seed, max_new_tokens=1) for seed in seeds]
        sessions = [_open(channel, lm, prompt, ps, spec) for ps in params]
        payloads = [codec.encode([codec.compress(q, drafter_rng(seed, len(prompt)))]) for seed in seeds]
        with server.engine_held():
            for s, payload in zip(sessions, payloads, strict=True):
                s.send(cv.Block(0, payload))
            assert server.wait_queued(WAVE)
        for s, payload in zip(sessions, payloads, strict=True):
            v = s.recv()
            assert isinstance(v, cv.Verdict)
            assert v.batch_size == WAVE  # really verified together
            first = v.next_token if v.accepted == 0 else codec.decode(payload)[0].token
            assert first is not None
            counts[first] += 1
            resampled += v.resampled
            assert s.finish() == grpc.StatusCode.OK
    assert 0.1 * counts.sum() < resampled < 0.9 * counts.sum()  # both branches exercised
    assert chi_square_pvalue(counts, p) > 1e-3


@pytest.mark.parametrize("spec", ["ksqs:k=16,ell=100", "dense:fp16", "csqs:alpha=0.05,eta=0.02,ell=240"])
def test_concurrent_greedy_sessions_each_equal_their_own_reference(
    channel: grpc.Channel, server: ServerThread, spec: str
) -> None:
    """Prompts of different lengths (ragged caches, one prefilling while others verify) in lockstep
    batches: every session's greedy output equals its own prompt's greedy target output."""
    lm = server.lm
    drafter = load_model("builtin:tiny-draft")
    params = SamplingParams(temperature=0.0, seed=1, max_new_tokens=16)
    refs = [ReferenceDrafter(drafter, make_codec(spec, lm.vocab_size), params) for _ in PROMPTS]
    sessions = [_open(channel, lm, prompt, params, spec) for prompt in PROMPTS]
    tokens = [list(prompt) for prompt in PROMPTS]
    live, batched = set(range(len(PROMPTS))), 0
    rnd = [0] * len(PROMPTS)
    while live:
        sent = {i: refs[i].draft(tokens[i], 4) for i in live}
        with server.engine_held():
            for i in sorted(live):
                sessions[i].send(cv.Block(rnd[i], refs[i].codec.encode(sent[i])))
            assert server.wait_queued(len(live))
        for i in sorted(live):
            v = sessions[i].recv()
            assert isinstance(v, cv.Verdict)
            batched = max(batched, v.batch_size)
            tokens[i] += [d.token for d in sent[i][: v.accepted]]
            tokens[i] += [] if v.next_token is None else [v.next_token]
            rnd[i] += 1
            if v.finished:
                live.discard(i)
                assert sessions[i].finish() == grpc.StatusCode.OK
    assert batched == len(PROMPTS)
    for prompt, out in zip(PROMPTS, tokens, strict=True):
        assert out[len(prompt) :] == greedy_tokens(lm, prompt, 16)


def test_a_failing_cancelled_or_expired_session_does_not_affect_its_batch(
    channel: grpc.Channel, server: ServerThread
) -> None:
    """In one held batch: a malformed block, a client that cancels, and a deadline that expires;
    the healthy sessions of the same batch still produce exactly their greedy continuation."""
    lm, spec = server.lm, "ksqs:k=16,ell=100"
    params = SamplingParams(temperature=0.0, seed=1, max_new_tokens=1)
    ref = ReferenceDrafter(load_model("builtin:tiny-draft"), make_codec(spec, lm.vocab_size), params)
    healthy = [_open(channel, lm, p, params, spec) for p in PROMPTS[:2]]
    bad, gone = _open(channel, lm, PROMPTS[2], params, spec), _open(channel, lm, PROMPTS[3], params, spec)
    late = SyncSession(channel, timeout=0.5)
    late.open(cv.OpenRequest(PROMPTS[0], params, spec, lm.fingerprint))
    blocks = [ref.draft(prompt, 3) for prompt in PROMPTS[:2]]
    with server.engine_held():
        for s, drafts in zip(healthy, blocks, strict=True):
            s.send(cv.Block(0, ref.codec.encode(drafts)))
        bad.send(cv.Block(0, b"\x01\x03\x00\x01\xff"))  # a truncated ksqs payload
        gone.send(cv.Block(0, ref.codec.encode(ref.draft(PROMPTS[3], 3))))
        late.send(cv.Block(0, ref.codec.encode(ref.draft(PROMPTS[0], 3))))
        assert server.wait_queued(5)
        gone.cancel()
        threading.Event().wait(0.8)  # past late's deadline while its round waits in the queue
    for s, prompt, drafts in zip(healthy, PROMPTS[:2], blocks, strict=True):
        v = s.recv()
        assert isinstance(v, cv.Verdict)
        # the bad block failed at decode, the others were withdrawn: the two healthy ones shared it
        assert v.batch_size == 2
        out = drafts[0].token if v.accepted else v.next_token
        assert [out] == greedy_tokens(lm, prompt, 1)
        assert s.finish() == grpc.StatusCode.OK
    with pytest.raises(grpc.RpcError) as info:
        bad.recv()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        late.recv()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
