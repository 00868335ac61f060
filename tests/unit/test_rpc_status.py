"""The error seam: draftlink errors → gRPC status codes (server) and back (client)."""

from __future__ import annotations

import grpc
import pytest

from common.errors import CodecError, ConfigError, ModelError, TokenizerMismatchError
from common.rpc import status as st

SERVER_SIDE = [
    (st.InvalidRequestError("bad ids"), grpc.StatusCode.INVALID_ARGUMENT),
    (st.PreconditionError("wrong codec"), grpc.StatusCode.FAILED_PRECONDITION),
    (st.ProtocolError("round 3 out of order"), grpc.StatusCode.FAILED_PRECONDITION),
    (st.CapacityError("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (st.UnavailableError("draining"), grpc.StatusCode.UNAVAILABLE),
    (st.SessionTimeoutError("idle"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (CodecError("truncated payload"), grpc.StatusCode.INVALID_ARGUMENT),
    (TokenizerMismatchError("fingerprints differ"), grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError("bad flag"), grpc.StatusCode.INVALID_ARGUMENT),
    (ModelError("cannot load"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("exc", "code"), SERVER_SIDE, ids=lambda x: type(x).__name__)
def test_status_for(exc: Exception, code: grpc.StatusCode) -> None:
    got_code, details = st.status_for(exc)
    assert got_code == code
    assert details == str(exc)


def test_unknown_errors_are_internal_and_do_not_leak() -> None:
    code, details = st.status_for(RuntimeError("/secret/path.py line 3: tensor shape mismatch"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in details
    assert details == st.INTERNAL_MESSAGE


def test_empty_message_gets_the_class_name() -> None:
    assert st.status_for(st.CapacityError()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CapacityError")


@pytest.mark.parametrize(("exc", "code"), SERVER_SIDE, ids=lambda x: type(x).__name__)
def test_roundtrip_keeps_code_and_message(exc: Exception, code: grpc.StatusCode) -> None:
    """server status_for → client error_for_status → same code, same message."""
    got = st.error_for_status(*st.status_for(exc))
    assert got.code == code
    assert str(got) == str(exc)
    assert isinstance(got, st.RequestError)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, st.InvalidRequestError),
        (grpc.StatusCode.FAILED_PRECONDITION, st.PreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, st.CapacityError),
        (grpc.StatusCode.UNAVAILABLE, st.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, st.SessionTimeoutError),
        (grpc.StatusCode.INTERNAL, st.RemoteError),
        (grpc.StatusCode.CANCELLED, st.RemoteError),
    ],
)
def test_error_for_status(code: grpc.StatusCode, cls: type[st.RequestError]) -> None:
    err = st.error_for_status(code, "details here")
    assert type(err) is cls
    assert err.code == code
    assert str(err) == "details here"
    # and back again: the client error maps to the status it came from
    assert st.status_for(err)[0] == code or code == grpc.StatusCode.INTERNAL


def test_error_for_status_without_details_uses_code_name() -> None:
    assert str(st.error_for_status(grpc.StatusCode.UNAVAILABLE, None)) == "UNAVAILABLE"


class _FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return "too many sessions (2 live)"


def test_error_from_rpc() -> None:
    err = st.error_from_rpc(_FakeRpcError())
    assert isinstance(err, st.CapacityError)
    assert "too many" in str(err)
