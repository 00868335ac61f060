"""Pure ASGI front door: the API key before any body byte is read; no exception drops a connection."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.errors import APIError, from_exception, unauthorized

log = logging.getLogger("draftlink.edge.http")
PROTECTED_PREFIX = "/v1/"


class Gate:
    """Wraps the app: 401 on /v1/* without the bearer key, and a JSON 500 for any uncaught exception.

    Starlette's own catch-all (ServerErrorMiddleware) answers and then re-raises, and uvicorn closes
    the connection on a re-raised exception, resetting unrelated requests pooled on it; here the
    exception ends with the answer, so the keep-alive connection survives.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, on_error: Callable[[APIError], None]) -> None:
        self.app = app
        self.key = None if api_key is None else api_key.encode("utf-8")
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        protected = self.key is not None and scope["path"].startswith(PROTECTED_PREFIX)
        if protected and not self._authorized(scope):
            await self._reply(unauthorized(), scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            return  # the client left while its body was read: nobody to answer
        except Exception as exc:
            err = from_exception(exc)  # logs the traceback of an internal error
            if started:  # a response is half sent: nothing valid can follow it
                log.error("%s %s failed after the response started: %s", scope["method"], scope["path"], exc)
                return
            await self._reply(err, scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        assert self.key is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.key)
        return False

    async def _reply(self, err: APIError, scope: Scope, receive: Receive, send: Send) -> None:
        self.on_error(err)
        response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        await response(scope, receive, send)
