"""The edge's FastAPI app: OpenAI routes, SSE streaming, /health, /metrics, auth and error handlers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

import common
from edge.body import parse_json, read_body, validate
from edge.errors import APIError, from_exception, from_validation
from edge.gate import Gate
from edge.introspect import config_body
from edge.metrics import CONTENT_TYPE
from edge.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    chunk_body,
    completion_body,
    models_body,
    usage_chunk,
)
from edge.service import EdgeService, Run

log = logging.getLogger("draftlink.edge.http")
T = TypeVar("T")
Body = TypeVar("Body", CompletionRequest, ChatCompletionRequest)
DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGoneError(Exception):
    """The HTTP client disconnected before its (non-streaming) response was ready."""


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class SSEResponse(StreamingResponse):
    """StreamingResponse that always finalizes its generator (disconnect mid-send included)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (ClientGoneError) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGoneError
    finally:
        watcher.cancel()
        task.cancel()


class Routes:
    """Handlers bound to one EdgeService."""

    def __init__(self, service: EdgeService) -> None:
        self.s = service

    async def parse(self, request: Request, model: type[Body]) -> Body:
        """Body → request model: byte limit before reading it all, strict JSON, then the schema."""
        raw = await read_body(request, self.s.limits.max_body_bytes)
        return validate(model, parse_json(raw))

    async def generate(self, body: CompletionRequest | ChatCompletionRequest, request: Request) -> Response:
        arrival = time.perf_counter()
        chat = isinstance(body, ChatCompletionRequest)
        req = await self.s.resolve(body)
        self.s.acquire()
        try:
            gen = self.s.new_generation(req)
        except BaseException:
            self.s.release()  # the slot must come back whatever failed
            raise
        run = Run(gen, self.s.drafter.lm.tokenizer, body.stop_strings(), self.s.metrics, arrival)
        try:
            await until_disconnect(request, gen.start())
        except BaseException as exc:
            gen.abort()
            self.s.release()
            if isinstance(exc, ClientGoneError):
                run.finish("abort")
                return Response(status_code=499)
            if not isinstance(exc, Exception):
                raise
            raise self._failure(exc) from exc
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = self._stream(run, chat, include_usage, body.return_token_ids)
            return SSEResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        return await self._complete(run, chat, body.return_token_ids, request)

    async def _complete(self, run: Run, chat: bool, token_ids: bool, request: Request) -> Response:
        try:
            text = await until_disconnect(request, run.collect())
        except ClientGoneError:
            run.finish("abort")
            return Response(status_code=499)
        except Exception as exc:
            raise self._failure(exc) from exc
        finally:
            run.gen.abort()
            self.s.release()
        reason = run.finish_reason or "stop"
        run.finish(reason)
        extra = run.extra(run.gen.prompt_tokens, token_ids)
        body = completion_body(run.gen.req.request_id, self.s.model_name, text, reason, extra, chat)
        return JSONResponse(body)

    async def _stream(self, run: Run, chat: bool, include_usage: bool, token_ids: bool) -> AsyncIterator[str]:
        rid, model, created = run.gen.req.request_id, self.s.model_name, int(time.time())
        outcome = "abort"  # until the stream completes or fails
        try:
            if chat:
                yield sse(chunk_body(rid, model, created, chat, "", role=True))
            async for delta in run.deltas():
                yield sse(chunk_body(rid, model, created, chat, delta))
            reason = run.finish_reason or "stop"
            extra = run.extra(run.gen.prompt_tokens, token_ids)
            last = chunk_body(rid, model, created, chat, None, finish_reason=reason)
            if token_ids:
                last["choices"][0]["token_ids"] = extra.pop("token_ids")
            yield sse({**last, "metrics": extra["metrics"]})
            if include_usage:
                yield sse(usage_chunk(rid, model, created, chat, extra))
            outcome = reason
            yield DONE
        except Exception as exc:
            err = self._failure(exc)
            self.s.metrics.request_errors.labels(code=str(err.status)).inc()
            outcome = ""
            log.warning("stream %s failed: %s", rid, err.message)
            yield sse(err.body())
            yield DONE
        finally:
            run.gen.abort()
            self.s.release()
            if outcome:
                run.finish(outcome)

    def _failure(self, exc: Exception) -> APIError:
        """Map a generation failure once; a dead cloud flips /health to 503 until it answers again."""
        err = from_exception(exc)
        if err.code == "cloud_unavailable":
            self.s.client.mark_unhealthy(err.message)
        return err

    async def health(self) -> JSONResponse:
        ok = self.s.client.healthy and not self.s.draining
        body = {
            "status": "draining" if self.s.draining else ("ok" if ok else "unavailable"),
            "model": self.s.cfg.model,
            "model_loaded": True,
            "served_model": self.s.model_name,
            "cloud": self.s.client.health_report(),
            "running_requests": self.s.running,
        }
        return JSONResponse(body, status_code=200 if ok else 503)


def build_app(service: EdgeService) -> FastAPI:
    """The HTTP app (routes, auth on /v1/*, every error as an OpenAI-style body)."""
    app = FastAPI(title="draftlink edge", version=common.__version__, docs_url=None, redoc_url=None)
    routes = Routes(service)
    metrics = service.metrics

    def count(err: APIError) -> None:
        metrics.request_errors.labels(code=str(err.status)).inc()

    # The key is checked in front of FastAPI, so no body is read (or judged) without it; the same
    # layer turns any uncaught exception into a 500 without closing the connection.
    app.add_middleware(Gate, api_key=service.cfg.api_key, on_error=count)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        count(exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _api_error(request, from_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "invalid_request"
        err = APIError(exc.status_code, str(exc.detail), code=code)
        return await _api_error(request, err)

    # No handler for Exception here: Starlette would re-raise it after answering (see edge.gate).

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await routes.generate(await routes.parse(request, CompletionRequest), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await routes.generate(await routes.parse(request, ChatCompletionRequest), request)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(models_body([service.model_name], service.created))

    @app.get("/v1/draftlink/config")  # under /v1: the Gate checks the key
    async def draftlink_config() -> JSONResponse:
        return JSONResponse(config_body(service))

    @app.get("/health")
    async def health() -> JSONResponse:
        return await routes.health()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return app
