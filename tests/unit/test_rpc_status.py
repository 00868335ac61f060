"""The error seam: draftlink errors → gRPC status codes (server) and back (client)."""

from __future__ import annotations

import grpc
import pytest

from common import errors as st
from common.errors import CodecError, ConfigError, ModelError, TokenizerMismatchError
from common.rpc import status as seam

SERVER_SIDE = [
    (st.InvalidRequestError("bad ids"), grpc.StatusCode.INVALID_ARGUMENT),
    (st.PreconditionError("wrong codec"), grpc.StatusCode.FAILED_PRECONDITION),
    (st.ProtocolError("round 3 out of order"), grpc.StatusCode.FAILED_PRECONDITION),
    (st.CapacityError("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (st.UnavailableError("draining"), grpc.StatusCode.UNAVAILABLE),
    (st.SessionTimeoutError("idle"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (st.AuthError("bad token"), grpc.StatusCode.UNAUTHENTICATED),
    (CodecError("truncated payload"), grpc.StatusCode.INVALID_ARGUMENT),
    (TokenizerMismatchError("fingerprints differ"), grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError("bad flag"), grpc.StatusCode.INVALID_ARGUMENT),
    (ModelError("cannot load"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("exc", "code"), SERVER_SIDE, ids=lambda x: type(x).__name__)
def test_status_for(exc: Exception, code: grpc.StatusCode) -> None:
    got_code, details = seam.status_for(exc)
    assert got_code == code
    assert details == str(exc)


def test_unknown_errors_are_internal_and_do_not_leak() -> None:
    code, details = seam.status_for(RuntimeError("/secret/path.py line 3: tensor shape mismatch"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in details
    assert details == seam.INTERNAL_MESSAGE


def test_empty_message_gets_the_class_name() -> None:
    assert seam.status_for(st.CapacityError()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CapacityError")


@pytest.mark.parametrize(("exc", "code"), SERVER_SIDE, ids=lambda x: type(x).__name__)
def test_roundtrip_keeps_code_and_message(exc: Exception, code: grpc.StatusCode) -> None:
    """server status_for → client error_for_status → same code, same message."""
    got = seam.error_for_status(*seam.status_for(exc))
    assert seam.code_for(got) == code
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
        (grpc.StatusCode.UNAUTHENTICATED, st.AuthError),
        (grpc.StatusCode.INTERNAL, st.RemoteError),
        (grpc.StatusCode.CANCELLED, st.ConnectionLostError),
        (grpc.StatusCode.UNKNOWN, st.ConnectionLostError),
        (grpc.StatusCode.ABORTED, st.RemoteError),
    ],
)
def test_error_for_status(code: grpc.StatusCode, cls: type[st.RequestError]) -> None:
    err = seam.error_for_status(code, "details here")
    assert type(err) is cls
    assert str(err) == "details here"
    # and back again: the client error maps to the status it came from
    assert seam.code_for(err) == code


def test_error_for_status_without_details_uses_code_name() -> None:
    assert str(seam.error_for_status(grpc.StatusCode.UNAVAILABLE, None)) == "UNAVAILABLE"


class _FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return "too many sessions (2 live)"


def test_error_from_rpc() -> None:
    err = seam.error_from_rpc(_FakeRpcError())
    assert isinstance(err, st.CapacityError)
    assert "too many" in str(err)


def test_domain_errors_carry_no_transport_types() -> None:
    """common.errors never imports grpc: the seam is the only place statuses appear."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(st.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.startswith("grpc") for name in imported)
    assert not hasattr(st.InvalidRequestError("x"), "code")


def test_remote_error_keeps_its_status_name() -> None:
    err = seam.error_for_status(grpc.StatusCode.ABORTED, "conflict")
    assert isinstance(err, st.RemoteError)
    assert err.status == "ABORTED"
    assert seam.code_for(err) == grpc.StatusCode.ABORTED


def test_a_cut_stream_is_a_lost_connection_that_keeps_its_status_name() -> None:
    err = seam.error_for_status(grpc.StatusCode.CANCELLED, "gone")
    assert isinstance(err, st.ConnectionLostError)
    assert isinstance(err, st.UnavailableError)
    assert err.status == "CANCELLED"
    assert seam.code_for(err) == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize(
    ("code", "mid_stream", "opening"),
    [
        (grpc.StatusCode.UNAVAILABLE, True, True),
        (grpc.StatusCode.CANCELLED, True, True),
        (grpc.StatusCode.UNKNOWN, True, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False, False),
        (grpc.StatusCode.UNAUTHENTICATED, False, False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, False, False),
        (grpc.StatusCode.INTERNAL, False, False),
        (grpc.StatusCode.ABORTED, False, False),
    ],
)
def test_retryable(code: grpc.StatusCode, mid_stream: bool, opening: bool) -> None:
    """Resume retries what the server or the path failed at, never what the request got wrong."""
    err = seam.error_for_status(code, "x")
    assert seam.retryable(err) is mid_stream
    assert seam.retryable(err, opening=True) is opening
