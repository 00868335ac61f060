"""The wire seam: every draftlink.v1 message converts pb → domain → pb (and back) without loss."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidRequestError
from common.rpc import convert as cv
from common.rpc import pb
from common.types import FinishReason, SamplingParams

u32 = st.integers(0, 2**32 - 1)
ids = st.lists(u32, max_size=20).map(tuple)
# float32-representable values survive the wire exactly
f32 = st.floats(0.0, 100.0, width=32, allow_nan=False)
top_p = st.floats(0.0, 1.0, width=32, exclude_min=True)
reasons = st.sampled_from([None, FinishReason.STOP, FinishReason.LENGTH])

sampling = st.builds(
    SamplingParams,
    temperature=f32,
    top_p=top_p,
    seed=st.none() | st.integers(0, 2**64 - 1),
    max_new_tokens=st.integers(1, 2**32 - 1),
    stop_token_ids=ids,
)


@given(sampling)
def test_sampling_roundtrip(params: SamplingParams) -> None:
    assert cv.sampling_from_pb(cv.sampling_to_pb(params)) == params


def test_sampling_wire_defaults() -> None:
    msg = pb.SamplingParams(temperature=0.0, max_new_tokens=3)
    params = cv.sampling_from_pb(msg)
    assert params.top_p == 1.0  # 0 on the wire means disabled
    assert params.seed is None  # unset optional
    assert cv.sampling_from_pb(pb.SamplingParams(max_new_tokens=1, seed=0)).seed == 0  # 0 is a seed


@pytest.mark.parametrize(
    "msg",
    [
        pb.SamplingParams(temperature=1.0, max_new_tokens=0),
        pb.SamplingParams(temperature=-1.0, max_new_tokens=1),
        pb.SamplingParams(temperature=float("nan"), max_new_tokens=1),
        pb.SamplingParams(temperature=1.0, top_p=1.5, max_new_tokens=1),
        pb.SamplingParams(temperature=1000.0, max_new_tokens=1),
    ],
)
def test_sampling_invalid(msg: pb.SamplingParams) -> None:
    with pytest.raises(InvalidRequestError, match="sampling"):
        cv.sampling_from_pb(msg)


@pytest.mark.parametrize("reason", [None, FinishReason.STOP, FinishReason.LENGTH])
def test_finish_reason_roundtrip(reason: FinishReason | None) -> None:
    assert cv.finish_reason_from_pb(cv.finish_reason_to_pb(reason)) is reason


def test_finish_reason_unknown_value_is_none() -> None:
    assert cv.finish_reason_from_pb(99) is None  # a newer server's enum value


@given(
    st.builds(
        cv.OpenRequest,
        prompt_token_ids=ids,
        sampling=sampling,
        codec=st.text(max_size=20),
        tokenizer_fingerprint=st.text(max_size=64),
        request_id=st.text(max_size=10),
    )
    | st.builds(cv.Block, round=u32, payload=st.binary(max_size=64))
    | st.just(cv.Close())
)
def test_session_message_roundtrip(message: cv.SessionMessage) -> None:
    wire = cv.session_message_to_pb(message)
    again = pb.SessionRequest.FromString(wire.SerializeToString())
    assert cv.session_message_from_pb(again) == message


@given(
    st.builds(cv.Opened, session_id=st.text(max_size=10), prompt_tokens=u32)
    | st.builds(
        cv.Verdict,
        round=u32,
        accepted=u32,
        next_token=st.none() | u32,
        finished=st.booleans(),
        finish_reason=reasons,
        verify_seconds=f32,
        resampled=st.booleans(),
    )
)
def test_session_reply_roundtrip(reply: cv.SessionReply) -> None:
    wire = cv.session_reply_to_pb(reply)
    assert cv.session_reply_from_pb(pb.SessionResponse.FromString(wire.SerializeToString())) == reply


def test_verdict_next_token_zero_is_present() -> None:
    """Token id 0 is a real token: presence, not truthiness, decides."""
    wire = cv.session_reply_to_pb(cv.Verdict(round=0, accepted=2, next_token=0))
    assert wire.verdict.HasField("next_token")
    none = cv.session_reply_to_pb(cv.Verdict(round=0, accepted=2, next_token=None, finished=True))
    assert not none.verdict.HasField("next_token")


def test_empty_oneofs_are_invalid() -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        cv.session_message_from_pb(pb.SessionRequest())
    with pytest.raises(InvalidRequestError, match="empty"):
        cv.session_reply_from_pb(pb.SessionResponse())


def test_open_without_sampling_is_invalid() -> None:
    msg = pb.SessionRequest(open=pb.OpenSession(prompt_token_ids=[1], codec="qs:ell=8"))
    with pytest.raises(InvalidRequestError, match="sampling"):
        cv.session_message_from_pb(msg)
    with pytest.raises(InvalidRequestError, match="sampling"):
        cv.generate_request_from_pb(pb.GenerateRequest(prompt_token_ids=[1]))


@given(
    st.builds(
        cv.ServerInfo,
        model_id=st.text(max_size=20),
        tokenizer_fingerprint=st.text(max_size=64),
        vocab_size=u32,
        codecs=st.lists(st.text(max_size=5), max_size=4).map(tuple),
        limits=st.builds(cv.Limits, u32, u32, u32, u32, u32),
        server_version=st.text(max_size=8),
        bitstream_version=u32,
        model_options=st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3).map(
            lambda d: tuple(sorted(d.items()))
        ),
    )
)
def test_info_roundtrip(info: cv.ServerInfo) -> None:
    wire = cv.info_to_pb(info)
    assert cv.info_from_pb(pb.InfoResponse.FromString(wire.SerializeToString())) == info


@given(st.builds(cv.GenerateRequest, prompt_token_ids=ids, sampling=sampling, request_id=st.text(max_size=8)))
def test_generate_request_roundtrip(req: cv.GenerateRequest) -> None:
    assert cv.generate_request_from_pb(cv.generate_request_to_pb(req)) == req


@given(st.builds(cv.GenerateChunk, token_ids=ids, finished=st.booleans(), finish_reason=reasons))
def test_generate_chunk_roundtrip(chunk: cv.GenerateChunk) -> None:
    assert cv.generate_chunk_from_pb(cv.generate_chunk_to_pb(chunk)) == chunk
