"""Error types shared by the codec, models, config and both services."""

from __future__ import annotations


class DraftlinkError(Exception):
    """Base class of every error draftlink raises on purpose."""


class CodecError(DraftlinkError, ValueError):
    """A codec spec, a distribution or a payload is invalid (wire: INVALID_ARGUMENT)."""


class ConfigError(DraftlinkError, ValueError):
    """A configuration value (flag or DRAFTLINK_* env key) is invalid."""


class ModelError(DraftlinkError):
    """A model spec cannot be loaded (unknown, not fetched, or incompatible)."""


class TokenizerMismatchError(ModelError):
    """Drafter and verifier tokenizers differ (wire: FAILED_PRECONDITION)."""


# ── request errors: what a service refuses, independent of the transport ──────────────────────
# common/rpc/status.py maps each class to a gRPC status (server) and back (client); the edge maps
# them to HTTP statuses in edge/errors.py. Nothing here imports grpc.


class RequestError(DraftlinkError):
    """A request a service refused (or a failure the client saw), by kind."""


class InvalidRequestError(RequestError, ValueError):
    """Malformed or out-of-range content (bad ids, prompt over the limit, bad sampling params)."""


class PreconditionError(RequestError):
    """The request cannot run in this state (tokenizer/codec mismatch, protocol order)."""


class ProtocolError(PreconditionError):
    """Messages out of protocol order: a block before open, rounds out of order, after close."""


class CapacityError(RequestError):
    """The server is full (max sessions) or a message is over its size limit."""


class UnavailableError(RequestError):
    """The server is starting up, shutting down, or cannot be reached."""


class ConnectionLostError(UnavailableError):
    """A live stream was cut: the peer died, the connection reset, or the network cancelled it.

    `status` names how the client saw it ("UNAVAILABLE", "CANCELLED", "UNKNOWN").
    """

    def __init__(self, message: str = "", status: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.status = status


class SessionTimeoutError(RequestError):
    """A session was idle for longer than the server's idle timeout (or a deadline passed)."""


class AuthError(RequestError):
    """The caller did not present valid credentials (token)."""


class RemoteError(RequestError):
    """Any other failure reported by the peer; `status` names it (e.g. "INTERNAL", "CANCELLED")."""

    def __init__(self, message: str, status: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.status = status
