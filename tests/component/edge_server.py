"""A real edge in-process: EdgeService + uvicorn (as edge.app serves it) on a loopback port, own thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from edge.app import start_service
from edge.config import EdgeConfig
from edge.http_api import build_app
from edge.service import EdgeService


class EdgeThread:
    """Serve the edge's HTTP API over real sockets (keep-alive, resets and latency are observable)."""

    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="edge-test-loop", daemon=True)
        # proto IPPROTO_TCP, as uvicorn's own sockets have: asyncio sets TCP_NODELAY only then
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._service: EdgeService | None = None
        self._server: uvicorn.Server | None = None
        self._serving: concurrent.futures.Future[None] | None = None
        self._health: concurrent.futures.Future[None] | None = None

    @property
    def service(self) -> EdgeService:
        assert self._service is not None, "EdgeThread not started"
        return self._service

    def call(self, fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
        """Run a coroutine factory on the edge's loop and wait for its result."""

        async def run() -> Any:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def start(self) -> EdgeThread:
        self._thread.start()
        self._service = self.call(lambda: start_service(self.cfg))
        self.call(self.service.client.check_health)
        # as edge.app.serve: /health reads the cache this loop keeps fresh
        self._health = asyncio.run_coroutine_threadsafe(self.service.client.health_loop(), self.loop)
        config = uvicorn.Config(
            build_app(self.service), loop="none", log_config=None, access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.run_coroutine_threadsafe(self._server.serve(sockets=[self._sock]), self.loop)
        deadline = time.monotonic() + 30
        while not self._server.started:
            if self._serving.done() or time.monotonic() > deadline:
                self._serving.result(0)  # raises the start-up error
                raise RuntimeError("the edge's HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            self._serving.result(30)
        if self._health is not None:
            self._health.cancel()
        if self._service is not None:
            self.call(self._service.client.close)
            self._service.drafter.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        self._sock.close()

    def __enter__(self) -> EdgeThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
