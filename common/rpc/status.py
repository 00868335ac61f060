"""The one error seam: draftlink errors ↔ gRPC status codes (server maps out, client maps back)."""

from __future__ import annotations

import grpc

from common.errors import CodecError, ConfigError, DraftlinkError, ModelError, TokenizerMismatchError


class RequestError(DraftlinkError):
    """A request the server refused; `code` is the gRPC status it travels as."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidRequestError(RequestError, ValueError):
    """Malformed or out-of-range content (bad ids, prompt over the limit, bad sampling params)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PreconditionError(RequestError):
    """The request cannot run in this state (tokenizer/codec mismatch, protocol order)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ProtocolError(PreconditionError):
    """Messages out of protocol order: a block before open, rounds out of order, after close."""


class CapacityError(RequestError):
    """The server is full (max sessions)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(RequestError):
    """The server is starting up or shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class SessionTimeoutError(RequestError):
    """A session was idle for longer than the server's idle timeout (or a deadline passed)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RemoteError(RequestError):
    """Any other status from the server (INTERNAL, UNKNOWN, CANCELLED, ...)."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.code = code


# Errors raised by other modules, most specific first (checked with isinstance, in order).
_FOREIGN: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (TokenizerMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelError, grpc.StatusCode.INTERNAL),
)

# Client side: which error class a status code comes back as.
_BY_CODE: dict[grpc.StatusCode, type[RequestError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: SessionTimeoutError,
}

INTERNAL_MESSAGE = "internal server error"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Server side: the status code and details for an exception (unknown errors → INTERNAL)."""
    if isinstance(exc, RequestError):
        return exc.code, str(exc) or type(exc).__name__
    for cls, code in _FOREIGN:
        if isinstance(exc, cls):
            return code, str(exc) or cls.__name__
    # never leak internals (tracebacks, paths) to the client; the server logs them
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def error_for_status(code: grpc.StatusCode, details: str | None) -> RequestError:
    """Client side: the draftlink error a status code and its details stand for."""
    message = details or code.name
    cls = _BY_CODE.get(code)
    if cls is None:
        return RemoteError(message, code)
    return cls(message)


def error_from_rpc(exc: grpc.RpcError) -> RequestError:
    """Client side: convert a grpc (or grpc.aio) RpcError into a draftlink error."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for_status(code, details)
