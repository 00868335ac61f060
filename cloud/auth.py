"""Shared-token authentication of gRPC calls: 'authorization: Bearer <token>' metadata, constant-time."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from common.errors import AuthError
from common.rpc.status import status_for

log = logging.getLogger("draftlink.cloud.auth")

# Probes cannot send metadata (k8s grpc probes, the image HEALTHCHECK); health reveals nothing.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def token_ok(metadata: Sequence[tuple[str, Any]] | None, token: str) -> bool:
    """True when the call carries 'authorization: Bearer <token>' (compared in constant time)."""
    for key, value in metadata or ():
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, given = value.partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode()):
            return True
    return False


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse every call without the shared token (UNAUTHENTICATED, mapped by the error seam)."""

    def __init__(self, token: str, on_refused: Callable[[str], None] | None = None) -> None:
        self._token = token
        self._on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = str(handler_call_details.method)
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if token_ok(handler_call_details.invocation_metadata, self._token):
            return handler
        code, details = status_for(
            AuthError("missing or invalid token (send 'authorization: Bearer <token>')")
        )
        log.info("refused %s: %s", method, details)
        if self._on_refused is not None:
            self._on_refused(code.name)
        return _refusal(handler, code, details)


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only aborts with (code, details)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    de, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, de, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, de, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, de, ser)
    return grpc.unary_unary_rpc_method_handler(refuse, de, ser)
