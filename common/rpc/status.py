"""The one error seam: draftlink errors ↔ gRPC status codes (server maps out, client maps back)."""

from __future__ import annotations

import grpc

from common.errors import (
    AuthError,
    CapacityError,
    CodecError,
    ConfigError,
    ConnectionLostError,
    InvalidRequestError,
    ModelError,
    PreconditionError,
    RemoteError,
    RequestError,
    SessionTimeoutError,
    TokenizerMismatchError,
    UnavailableError,
)

__all__ = [
    "INTERNAL_MESSAGE",
    "code_for",
    "error_for_status",
    "error_from_rpc",
    "retryable",
    "status_for",
]

# Server side, most specific first (checked with isinstance, in order). ProtocolError is a
# PreconditionError; TokenizerMismatchError a ModelError.
_TO_CODE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (SessionTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (TokenizerMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelError, grpc.StatusCode.INTERNAL),
)

# Client side: which error class a status code comes back as (everything else: RemoteError).
# CANCELLED and UNKNOWN reach a client that did not cancel when the connection died under a live
# stream (peer killed, relay gone, reset): transient, like UNAVAILABLE.
_FROM_CODE: dict[grpc.StatusCode, type[RequestError]] = {
    grpc.StatusCode.CANCELLED: ConnectionLostError,
    grpc.StatusCode.UNKNOWN: ConnectionLostError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: SessionTimeoutError,
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.PERMISSION_DENIED: AuthError,
}

INTERNAL_MESSAGE = "internal server error"


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status code an exception travels as (unknown errors → INTERNAL)."""
    if isinstance(exc, RemoteError | ConnectionLostError):
        return getattr(grpc.StatusCode, exc.status, grpc.StatusCode.UNKNOWN)
    for cls, code in _TO_CODE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Server side: the status code and details for an exception (unknown errors → INTERNAL)."""
    code = code_for(exc)
    if code == grpc.StatusCode.INTERNAL and not isinstance(exc, ModelError | RemoteError):
        # never leak internals (tracebacks, paths) to the client; the server logs them
        return code, INTERNAL_MESSAGE
    return code, str(exc) or type(exc).__name__


def error_for_status(code: grpc.StatusCode, details: str | None) -> RequestError:
    """Client side: the draftlink error a status code and its details stand for."""
    message = details or code.name
    cls = _FROM_CODE.get(code)
    if cls is None:
        return RemoteError(message, code.name)
    if cls is ConnectionLostError:
        return ConnectionLostError(message, code.name)
    return cls(message)


def error_from_rpc(exc: grpc.RpcError) -> RequestError:
    """Client side: convert a grpc (or grpc.aio) RpcError into a draftlink error."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for_status(code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN, details)


def retryable(err: RequestError, opening: bool = False) -> bool:
    """Client side: is this failure worth another attempt (same or next server, within the deadline)?

    The server or the path failed, not the request: UNAVAILABLE, and streams cut under us
    (ConnectionLostError). While opening a stream, a full server (RESOURCE_EXHAUSTED) is worth
    trying elsewhere too. Never: invalid arguments, preconditions, auth, deadlines, INTERNAL.
    """
    return isinstance(err, UnavailableError) or (opening and isinstance(err, CapacityError))
