"""The one place where edge failures become HTTP statuses and OpenAI-style error bodies.

status  type                   code                        when
400     invalid_request_error  invalid_json, invalid_type, bad JSON (not UTF-8, NaN/Infinity, not
                               invalid_value,              an object), schema errors (strict types),
                               unsupported_parameter       bad values (lone surrogates included),
                                                           unsupported params (n != 1, logprobs, ...)
401     authentication_error   invalid_api_key             --api-key set and the bearer token is wrong
404     invalid_request_error  model_not_found             `model` is not a served name
413     invalid_request_error  request_too_large,          body over the byte limit (before parsing),
                               context_length_exceeded     prompt longer than the token limit
429     rate_limit_error       too_many_requests           all --max-concurrency slots busy (no queue)
502     server_error           bad_gateway                 the cloud broke the protocol / internal error
503     service_unavailable    cloud_unavailable,          cloud unreachable or dying,
                               cloud_busy                  or out of sessions (RESOURCE_EXHAUSTED)
504     timeout                request_timeout             --request-timeout elapsed
500     server_error           internal_error              a bug on the edge (the connection stays open)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from common.errors import (
    CapacityError,
    CodecError,
    InvalidRequestError,
    PreconditionError,
    RemoteError,
    RequestError,
    SessionTimeoutError,
    UnavailableError,
)
from common.rounds import ProtocolViolationError
from common.rpc.status import code_for, error_from_rpc

log = logging.getLogger("draftlink.edge.errors")
MAX_MESSAGE_CHARS = 1000  # error messages may quote client input; keep bodies small
MAX_PARAM_CHARS = 200


def printable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, lone surrogates escaped (a JSON body must encode as UTF-8)."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class APIError(Exception):
    """An error that is sent to the client as {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        code: str = "invalid_value",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = printable(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = None if param is None else printable(param, MAX_PARAM_CHARS)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def invalid_json(message: str) -> APIError:
    return bad_request(f"invalid JSON body: {message}", code="invalid_json")


def unauthorized() -> APIError:
    return APIError(
        401,
        "invalid or missing API key (send 'Authorization: Bearer <key>')",
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def model_not_found(name: str, served: Sequence[str]) -> APIError:
    msg = f"the model {name!r} does not exist; served: {', '.join(served)}"
    return APIError(404, msg, param="model", code="model_not_found")


def prompt_too_long(tokens: int, limit: int, param: str = "prompt") -> APIError:
    msg = f"the prompt has {tokens} tokens, more than the limit of {limit}"
    return APIError(413, msg, param=param, code="context_length_exceeded")


def body_too_large(size: int, limit: int) -> APIError:
    msg = f"the request body has {size} bytes or more, more than the limit of {limit} bytes"
    return APIError(413, msg, code="request_too_large")


def too_many_requests(limit: int) -> APIError:
    return APIError(
        429,
        f"all {limit} generation slots are busy; retry shortly",
        type="rate_limit_error",
        code="too_many_requests",
        headers={"Retry-After": "1"},
    )


def cloud_unavailable(detail: str) -> APIError:
    return APIError(
        503,
        f"the cloud verifier is unavailable: {detail}",
        type="service_unavailable",
        code="cloud_unavailable",
        headers={"Retry-After": "2"},
    )


# Remote (cloud) failures by domain kind → (status, type, code). The gRPC status → domain error
# step happens once, in common/rpc/status.py.
_REMOTE_TO_HTTP: tuple[tuple[type[RequestError], tuple[int, str, str]], ...] = (
    (InvalidRequestError, (400, "invalid_request_error", "invalid_value")),
    (PreconditionError, (400, "invalid_request_error", "invalid_value")),
    (CapacityError, (503, "service_unavailable", "cloud_busy")),
    (UnavailableError, (503, "service_unavailable", "cloud_unavailable")),
    (SessionTimeoutError, (504, "timeout", "request_timeout")),
)
# An aborted stream is an unavailable cloud, not a protocol fault (a cut one is already a
# ConnectionLostError, an UnavailableError).
_GONE = frozenset({"ABORTED"})


def from_remote(err: RequestError) -> APIError:
    """Map a cloud-side failure (already a domain error) to the HTTP error the client sees."""
    status, typ, code = 502, "server_error", "bad_gateway"
    for cls, mapped in _REMOTE_TO_HTTP:
        if isinstance(err, cls):
            status, typ, code = mapped
            break
    else:
        if isinstance(err, RemoteError) and err.status in _GONE:
            status, typ, code = 503, "service_unavailable", "cloud_unavailable"
    name = code_for(err).name
    headers = {"Retry-After": "2"} if status == 503 else None
    return APIError(status, f"cloud: {name}: {err}", type=typ, code=code, headers=headers)


def from_grpc(err: grpc.RpcError) -> APIError:
    """Map a failed cloud RPC to the HTTP error the client sees (through the one status seam)."""
    return from_remote(error_from_rpc(err))


def from_exception(exc: BaseException) -> APIError:
    """Every exception a generation can raise, mapped once."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return from_grpc(exc)
    if isinstance(exc, RequestError):
        return from_remote(exc)
    if isinstance(exc, CodecError):
        return bad_request(f"codec: {exc}", param="draftlink.codec")
    if isinstance(exc, ProtocolViolationError):
        return APIError(502, f"cloud protocol violation: {exc}", type="server_error", code="bad_gateway")
    if isinstance(exc, TimeoutError):
        return APIError(504, "the request timed out", type="timeout", code="request_timeout")
    log.exception("internal error", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", type="server_error", code="internal_error")


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "constrained-int", "constrained-str"})


def from_validation(errors: Sequence[Any]) -> APIError:
    """FastAPI/pydantic validation errors → 400 (one status for every schema problem)."""
    if not errors:
        return bad_request("invalid request body")
    first = errors[0]
    kind = str(first.get("type", ""))
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if kind != "extra_forbidden":  # drop pydantic's union-member tags: prompt.list[int].2 → prompt.2
        loc = [p for p in loc if p not in _UNION_TAGS and "[" not in p]  # literal[...], list[int]
    if kind.startswith("json") or (kind in ("model_type", "model_attributes_type") and not loc):
        return invalid_json(str(first.get("msg", "")))
    param = ".".join(loc) or None
    code = "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") else "invalid_value"
    return bad_request(f"{param or 'body'}: {first.get('msg', 'invalid')}", param=param, code=code)
