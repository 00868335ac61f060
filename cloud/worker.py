"""The model worker: ONE dedicated thread runs every model forward, in FIFO order."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ModelWorker:
    """A single-thread executor: a shared model is never used concurrently; jobs run first come first served.

    Each session has at most one job queued at a time (its round), so the FIFO queue is also a
    fair round-robin between sessions. A job whose awaiting task is cancelled before it starts is
    dropped; one already running finishes (torch cannot be interrupted) and its result is discarded.
    """

    def __init__(self, name: str = "draftlink-model") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.queued = 0  # jobs submitted and not yet done (running one included)
        self.listeners: list[Callable[[int], None]] = []  # called with `queued` after each change

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the model thread and await its result."""
        loop = asyncio.get_running_loop()
        self._set(self.queued + 1)
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args))
        finally:
            self._set(self.queued - 1)

    def _set(self, depth: int) -> None:
        self.queued = depth
        for fn in self.listeners:
            fn(depth)

    def close(self, wait: bool = True) -> None:
        """Drop queued jobs; with wait, block until the running one (if any) is done."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
