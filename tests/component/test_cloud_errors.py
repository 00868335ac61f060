"""Bad input against a live cloud: its status code and message, no leaks, the server keeps serving."""

from __future__ import annotations

import asyncio
import math
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.codec import KIND_IDS, Codec, make_codec
from common.codec.bitio import BitWriter
from common.codec.enumerative import bits_for, composition_bound
from common.models import LoadedModel
from common.rpc import convert as cv
from common.rpc import pb
from common.types import SamplingParams
from tests.support.cloud import (
    ReferenceDrafter,
    ServerThread,
    SyncSession,
    greedy_tokens,
    run_session,
    tiny_config,
)

PROMPT = (11, 305, 42, 7, 1500, 99)
MAX_PROMPT = 256
KSQS = "ksqs:k=12,ell=100"  # K = 12 is not a power of two: index 12..15 fits in the 4-bit field
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(tiny_config(max_sessions=3, max_prompt_tokens=MAX_PROMPT, max_new_tokens=500)) as srv:
        yield srv


pytestmark = pytest.mark.usefixtures("no_leaked_sessions")


def open_req(lm: LoadedModel, codec: str = KSQS, **kw: object) -> cv.OpenRequest:
    params = {"temperature": 0.0, "max_new_tokens": 20, **kw}
    return cv.OpenRequest(PROMPT, SamplingParams(**params), codec, lm.fingerprint)  # type: ignore[arg-type]


def expect_status(
    channel: grpc.Channel, messages: Sequence[object], code: grpc.StatusCode, match: str
) -> None:
    """Send messages, half-close, read to the end: the stream must end with code and match."""
    session = SyncSession(channel)
    for m in messages:
        session.send(m)  # type: ignore[arg-type]
    session.half_close()
    with pytest.raises(grpc.RpcError) as info:
        for _ in session.call:
            pass
    assert info.value.code() == code, info.value.details()
    assert match in (info.value.details() or ""), info.value.details()


# ── hand-crafted bitstreams ────────────────────────────────────────────────────────────────────


def frame(kind: str, n: int, w: BitWriter, version: int = 1) -> bytes:
    return struct.pack(">BBH", version, KIND_IDS[kind], n) + w.getvalue()


def ksqs_raw(codec: Codec, srank: int, crank: int, idx: int) -> bytes:
    k, v, ell = 12, codec.vocab_size, 100
    w = BitWriter()
    w.write(srank, bits_for(math.comb(v, k)))
    w.write(crank, bits_for(composition_bound(ell, k)))
    w.write(idx, bits_for(k))
    return frame("ksqs", 1, w)


def valid_ksqs(v: int, n: int = 1, seed: int = 0) -> bytes:
    codec = make_codec(KSQS, v)
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.full(v, 0.05))  # [V]
    return codec.encode([codec.compress(q, rng) for _ in range(n)])


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[LoadedModel], list[object]]
    code: grpc.StatusCode
    match: str


def _payload_case(name: str, payload: Callable[[int], bytes], match: str, spec: str = KSQS) -> Case:
    return Case(name, lambda lm: [open_req(lm, spec), cv.Block(0, payload(lm.vocab_size))], INVALID, match)


def _qs_token_out_of_range(v: int) -> bytes:
    w = BitWriter()
    w.write(0, bits_for(composition_bound(240, v)))  # rank 0: all ℓ mass on the last id
    w.write(2**11 - 1, 11)  # token 2047 >= V = 2000
    return frame("qs", 1, w)


def _csqs_k_too_big(v: int) -> bytes:
    w = BitWriter()
    w.write_gamma(v + 1)  # K_t > V
    w.write(0, 64)
    return frame("csqs", 1, w)


def _dense_nan(v: int) -> bytes:
    wire = np.full(v, 1.0 / v, dtype=">f4")
    wire[3] = np.nan
    w = BitWriter()
    w.write(5, 11)
    w.write(int.from_bytes(wire.tobytes(), "big"), 32 * v)
    return frame("dense:fp32", 1, w)


def _ksqs(srank: int | None = None, crank: int = 0, idx: int = 0) -> Callable[[int], bytes]:
    def build(v: int) -> bytes:
        codec = make_codec(KSQS, v)
        return ksqs_raw(codec, math.comb(v, 12) if srank is None else srank, crank, idx)

    return build


CASES = [
    # protocol order
    Case(
        "block_before_open",
        lambda lm: [cv.Block(0, valid_ksqs(lm.vocab_size))],
        PRECONDITION,
        "must be OpenSession",
    ),
    Case("close_before_open", lambda lm: [cv.Close()], PRECONDITION, "must be OpenSession"),
    Case("open_twice", lambda lm: [open_req(lm), open_req(lm)], PRECONDITION, "already open"),
    Case(
        "round_skipped",
        lambda lm: [open_req(lm), cv.Block(1, valid_ksqs(lm.vocab_size))],
        PRECONDITION,
        "round 1 out of order",
    ),
    Case(
        "round_repeated",
        lambda lm: [
            open_req(lm),
            cv.Block(0, valid_ksqs(lm.vocab_size)),
            cv.Block(0, valid_ksqs(lm.vocab_size)),
        ],
        PRECONDITION,
        "round 0 out of order: expected round 1",
    ),
    Case(
        "block_after_close",
        lambda lm: [open_req(lm), cv.Close(), cv.Block(0, valid_ksqs(lm.vocab_size))],
        PRECONDITION,
        "after CloseSession",
    ),
    Case(
        "open_after_close",
        lambda lm: [open_req(lm), cv.Close(), open_req(lm)],
        PRECONDITION,
        "after CloseSession",
    ),
    Case("empty_request", lambda lm: [pb.SessionRequest()], INVALID, "empty SessionRequest"),
    Case(
        "empty_request_mid_session",
        lambda lm: [open_req(lm), pb.SessionRequest()],
        INVALID,
        "empty SessionRequest",
    ),
    # open validation
    Case("unknown_codec", lambda lm: [open_req(lm, "zstd:level=3")], PRECONDITION, "unsupported codec"),
    Case(
        "bad_codec_params", lambda lm: [open_req(lm, "ksqs:k=0,ell=100")], PRECONDITION, "unsupported codec"
    ),
    Case(
        "fingerprint_mismatch",
        lambda lm: [cv.OpenRequest(PROMPT, SamplingParams(temperature=0.0), KSQS, "0" * 64)],
        PRECONDITION,
        "fingerprint mismatch",
    ),
    Case(
        "prompt_over_limit",
        lambda lm: [cv.OpenRequest((1,) * (MAX_PROMPT + 1), SamplingParams(), KSQS, lm.fingerprint)],
        INVALID,
        f"max_prompt_tokens={MAX_PROMPT}",
    ),
    Case(
        "prompt_id_out_of_range",
        lambda lm: [cv.OpenRequest((1, lm.vocab_size), SamplingParams(), KSQS, lm.fingerprint)],
        INVALID,
        "out of range",
    ),
    Case(
        "empty_prompt",
        lambda lm: [cv.OpenRequest((), SamplingParams(), KSQS, lm.fingerprint)],
        INVALID,
        "empty",
    ),
    Case("negative_temperature", lambda lm: [_raw_open(lm, temperature=-1.0)], INVALID, "temperature"),
    Case("top_p_over_one", lambda lm: [_raw_open(lm, top_p=1.5)], INVALID, "top_p"),
    Case("max_new_tokens_zero", lambda lm: [_raw_open(lm, max_new_tokens=0)], INVALID, "max_new_tokens"),
    Case(
        "max_new_tokens_over_limit",
        lambda lm: [open_req(lm, max_new_tokens=501)],
        INVALID,
        "server limit 500",
    ),
    # payloads
    _payload_case("garbage_payload", lambda v: b"garbage!", "malformed"),
    _payload_case("empty_payload", lambda v: b"", "malformed"),
    _payload_case("truncated_payload", lambda v: valid_ksqs(v, 3)[:-1], "truncated"),
    _payload_case("trailing_bytes", lambda v: valid_ksqs(v) + b"\x00", "trailing"),
    _payload_case("unknown_bitstream_version", lambda v: b"\x07" + valid_ksqs(v)[1:], "version"),
    _payload_case("wrong_codec_kind", lambda v: b"\x01\x03" + valid_ksqs(v)[2:], "kind"),
    _payload_case("too_many_drafts", lambda v: valid_ksqs(v, 17), "max_draft_len is 16"),
    _payload_case(
        "header_count_lies", lambda v: valid_ksqs(v, 2)[:2] + b"\x00\x05" + valid_ksqs(v, 2)[4:], "truncated"
    ),
    _payload_case("support_rank_out_of_range", _ksqs(), "support rank out of range"),
    _payload_case(
        "counts_rank_out_of_range", _ksqs(0, crank=composition_bound(100, 12)), "counts rank out of range"
    ),
    _payload_case("token_index_out_of_support", _ksqs(0, crank=0, idx=13), "token index out of range"),
    _payload_case("token_with_zero_count", _ksqs(0, crank=0, idx=0), "count 0"),
    _payload_case("qs_token_id_over_vocab", _qs_token_out_of_range, "outside the vocabulary", "qs:ell=240"),
    _payload_case(
        "csqs_support_size_over_vocab", _csqs_k_too_big, "Elias-gamma", "csqs:alpha=0.05,eta=0.02,ell=240"
    ),
    _payload_case("dense_nan", _dense_nan, "non-finite", "dense:fp32"),
]


def _raw_open(
    lm: LoadedModel, temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 5
) -> pb.SessionRequest:
    sampling = pb.SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    return pb.SessionRequest(
        open=pb.OpenSession(
            prompt_token_ids=PROMPT, sampling=sampling, codec=KSQS, tokenizer_fingerprint=lm.fingerprint
        )
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_gets_its_status(channel: grpc.Channel, server: ServerThread, case: Case) -> None:
    errors = server.server.metrics.value("draftlink_rpc_errors_total", {"code": case.code.name})
    expect_status(channel, case.build(server.lm), case.code, case.match)
    assert server.wait_live(0)
    assert server.server.metrics.value("draftlink_rpc_errors_total", {"code": case.code.name}) == errors + 1


def test_generate_bad_input(channel: grpc.Channel, server: ServerThread) -> None:
    stub = pb_stub(channel)
    for req, match in [
        (
            pb.GenerateRequest(prompt_token_ids=PROMPT, sampling=pb.SamplingParams(max_new_tokens=0)),
            "max_new_tokens",
        ),
        (pb.GenerateRequest(prompt_token_ids=[], sampling=pb.SamplingParams(max_new_tokens=3)), "empty"),
        (pb.GenerateRequest(prompt_token_ids=PROMPT), "sampling is required"),
        (
            pb.GenerateRequest(prompt_token_ids=[9999], sampling=pb.SamplingParams(max_new_tokens=3)),
            "out of range",
        ),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(req, timeout=10))
        assert info.value.code() == INVALID
        assert match in (info.value.details() or "")


def pb_stub(channel: grpc.Channel) -> Any:
    return cv.verifier_stub(channel)


def test_message_over_the_size_limit(channel: grpc.Channel, server: ServerThread) -> None:
    limit = server.server.max_message_bytes
    expect_status(
        channel,
        [open_req(server.lm), cv.Block(0, b"\x01" * (limit + 1))],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    )


def test_too_many_sessions(channel: grpc.Channel, server: ServerThread) -> None:
    held = [SyncSession(channel) for _ in range(3)]
    for s in held:
        s.open(open_req(server.lm))
    expect_status(channel, [open_req(server.lm)], grpc.StatusCode.RESOURCE_EXHAUSTED, "too many sessions")
    for s in held:
        s.send(cv.Close())
        assert s.finish() == grpc.StatusCode.OK
    # capacity is back
    s = SyncSession(channel)
    s.open(open_req(server.lm))
    assert s.finish() == grpc.StatusCode.OK


# ── clients that vanish ────────────────────────────────────────────────────────────────────────


def test_client_cancels_after_open(channel: grpc.Channel, server: ServerThread) -> None:
    def ended() -> float:
        m = server.server.metrics
        return sum(m.value("draftlink_sessions_total", {"outcome": o}) for o in ("cancelled", "closed"))

    before = ended()
    s = SyncSession(channel)
    s.open(open_req(server.lm))
    s.cancel()  # while the server waits for a block: the read ends (labelled cancelled when grpc knows yet)
    assert server.wait_live(0)
    assert ended() == before + 1


def test_client_vanishes_while_its_round_is_queued(channel: grpc.Channel, server: ServerThread) -> None:
    """Block the model engine, queue a round, drop the whole channel: the session is released."""
    cancelled = server.server.metrics.value("draftlink_sessions_total", {"outcome": "cancelled"})
    gate = threading.Event()
    engine = server.server.state.engine
    assert engine is not None
    blocker = asyncio.run_coroutine_threadsafe(engine.call(gate.wait), server.loop)
    try:
        with grpc.insecure_channel(server.address) as ch:
            s = SyncSession(ch)
            s.open(open_req(server.lm))
            s.send(cv.Block(0, valid_ksqs(server.lm.vocab_size)))
            assert server.wait_queued(1)  # the blocker runs, the round waits behind it
        assert server.wait_live(0)  # released while its job was still queued behind the blocker
        assert (
            server.server.metrics.value("draftlink_sessions_total", {"outcome": "cancelled"}) == cancelled + 1
        )
    finally:
        gate.set()
    assert blocker.result(10)


def test_generate_client_cancels_mid_stream(channel: grpc.Channel, server: ServerThread) -> None:
    sampling = pb.SamplingParams(temperature=1.0, max_new_tokens=500)
    call = pb_stub(channel).Generate(
        pb.GenerateRequest(prompt_token_ids=PROMPT, sampling=sampling), timeout=30
    )
    assert len(next(call).token_ids) == 1
    call.cancel()
    assert server.wait_live(0)


def test_client_deadline(channel: grpc.Channel, server: ServerThread) -> None:
    s = SyncSession(channel, timeout=0.5)
    s.open(open_req(server.lm))
    with pytest.raises(grpc.RpcError) as info:
        s.recv()  # the server waits for a block; the client's deadline passes first
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.wait_live(0)


def test_idle_session_is_evicted() -> None:
    with ServerThread(tiny_config(session_idle_timeout=0.3)) as srv, grpc.insecure_channel(srv.address) as ch:
        s = SyncSession(ch)
        s.open(open_req(srv.lm))
        with pytest.raises(grpc.RpcError) as info:
            s.recv()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle" in (info.value.details() or "")
        assert srv.wait_live(0)
        assert srv.server.metrics.value("draftlink_sessions_total", {"outcome": "idle_timeout"}) == 1


def test_bad_sessions_do_not_disturb_a_healthy_one(channel: grpc.Channel, server: ServerThread) -> None:
    lm = server.lm
    codec = make_codec(KSQS, lm.vocab_size)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    drafter = ReferenceDrafter(lm, codec, params)  # exact drafter: every block fully accepted
    healthy = SyncSession(channel)
    healthy.open(cv.OpenRequest(PROMPT, params, KSQS, lm.fingerprint))
    tokens = list(PROMPT)
    for r, case in enumerate(CASES[:3] + CASES[-6:]):
        expect_status(channel, case.build(lm), case.code, case.match)
        drafts = drafter.draft(tokens, 2)
        v = healthy.round(r, codec.encode(drafts))
        tokens += [d.token for d in drafts[: v.accepted]] + (
            [v.next_token] if v.next_token is not None else []
        )
        if v.finished:
            break
    assert tokens[len(PROMPT) :] == greedy_tokens(lm, PROMPT, 12)
    assert healthy.finish() == grpc.StatusCode.OK


# ── fuzzing a live server ──────────────────────────────────────────────────────────────────────

SPECS = [KSQS, "qs:ell=240", "dense:fp16", "csqs:alpha=0.05,eta=0.02,ell=240", "bogus", ""]


@st.composite
def payloads(draw: st.DrawFn, v: int) -> bytes:
    kind = draw(st.sampled_from(["random", "valid", "mutated", "prefix"]))
    if kind == "random":
        return draw(st.binary(max_size=80))
    valid = valid_ksqs(v, draw(st.integers(0, 4)), draw(st.integers(0, 3)))
    if kind == "valid":
        return valid
    if kind == "prefix":
        return draw(st.binary(max_size=6)) + valid[draw(st.integers(0, len(valid))) :]
    pos = draw(st.integers(0, len(valid) - 1))
    return valid[:pos] + bytes([draw(st.integers(0, 255))]) + valid[pos + 1 :]


@st.composite
def requests(draw: st.DrawFn, lm: LoadedModel) -> pb.SessionRequest:
    kind = draw(st.sampled_from(["open", "block", "block", "close", "empty"]))
    if kind == "open":
        sampling = pb.SamplingParams(
            temperature=draw(st.floats(-1, 3, width=32)),
            top_p=draw(st.floats(-0.5, 1.5, width=32)),
            max_new_tokens=draw(st.integers(0, 600)),
            stop_token_ids=draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)),
        )
        op = pb.OpenSession(
            prompt_token_ids=draw(st.lists(st.integers(0, lm.vocab_size + 5), max_size=8)),
            sampling=sampling,
            codec=draw(st.sampled_from(SPECS)),
            tokenizer_fingerprint=draw(st.sampled_from([lm.fingerprint, lm.fingerprint, "", "f" * 64])),
        )
        return pb.SessionRequest(open=op)
    if kind == "block":
        block = pb.DraftBlock(round=draw(st.integers(0, 3)), payload=draw(payloads(lm.vocab_size)))
        return pb.SessionRequest(block=block)
    return pb.SessionRequest(close=pb.CloseSession()) if kind == "close" else pb.SessionRequest()


OK_CODES = {grpc.StatusCode.OK, INVALID, PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_fuzz_then_verify_normally(channel: grpc.Channel, server: ServerThread) -> None:
    lm = server.lm
    good_open = cv.session_message_to_pb(open_req(lm))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.booleans(), st.lists(requests(lm), max_size=6))
    def fuzz(start_open: bool, msgs: list[pb.SessionRequest]) -> None:
        session = SyncSession(channel, timeout=20)
        for m in ([good_open] if start_open else []) + msgs:
            session.send(m)
        session.half_close()
        try:
            for _ in session.call:
                pass
        except grpc.RpcError:
            pass
        assert session.call.code() in OK_CODES, (session.call.code(), session.call.details())
        assert server.wait_live(0)

    fuzz()
    _raw_bytes_fuzz(server)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    drafter = ReferenceDrafter(lm, make_codec(KSQS, lm.vocab_size), params)
    assert run_session(channel, lm, drafter, PROMPT, 4).output == greedy_tokens(lm, PROMPT, 16)


def _raw_bytes_fuzz(server: ServerThread) -> None:
    """Undecodable protobuf on the wire: grpc answers with a status; the server keeps serving."""

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.binary(max_size=40), min_size=1, max_size=4))
    def fuzz(chunks: list[bytes]) -> None:
        with grpc.insecure_channel(server.address) as ch:
            call = ch.stream_stream("/draftlink.v1.Verifier/Session")(iter(chunks), timeout=10)
            try:
                for _ in call:
                    pass
            except grpc.RpcError:
                pass
            assert call.code() != grpc.StatusCode.UNKNOWN
        assert server.wait_live(0)

    fuzz()
