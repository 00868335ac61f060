"""Process runtime: logging set-up, uvloop, and the one start → serve → drain → stop lifecycle.

Every draftlink process (cloud, edge, link) runs as a `Service` under `serve_until_signalled`:
start (bind; report NOT_SERVING), become ready (load models; report SERVING), wait for SIGTERM or
SIGINT, then drain: report NOT_SERVING, stop accepting, let live work finish within the grace
period, cancel the rest, close. A second signal during the drain forces it (cancel now). A
signal before the service is ready stops it without a drain (there is nothing to drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from types import FrameType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger("draftlink.runtime")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def setup_logging(level: str = "INFO") -> None:
    """One log format for every draftlink process (timestamp, level, logger, message)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run the process's main coroutine on uvloop (a hard dependency on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - only on platforms uvloop does not support
        return asyncio.run(main)
    return uvloop.run(main)


class Service(Protocol):
    """What a process implements to run under `serve_until_signalled`."""

    async def start(self) -> object:
        """Bind and serve what is cheap (health reports NOT_SERVING); fail fast on bad ports."""
        ...

    async def ready(self) -> None:
        """The slow part of start-up (load a model, reach a peer); afterwards report SERVING."""
        ...

    async def drain(self, grace: float) -> None:
        """NOT_SERVING, stop accepting, let live work finish within `grace` seconds, cancel the rest."""
        ...

    async def force(self) -> None:
        """A second signal arrived during the drain: cancel what is left now."""
        ...

    async def close(self) -> None:
        """Release everything (worker threads, metrics servers, channels); always called last."""
        ...


class EarlySignals:
    """Remember SIGTERM/SIGINT that arrive before the event loop runs (during heavy imports).

    Installed first thing in a process's main(); `serve_until_signalled` then takes the signals
    over and treats a remembered one as a stop request.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        for sig in SIGNALS:
            signal.signal(sig, self._remember)

    def _remember(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def __bool__(self) -> bool:
        return bool(self.received)


class _Signals:
    """First signal: stop (drain); any later one: force."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stop = asyncio.Event()
        self.forced = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._before = {sig: signal.getsignal(sig) for sig in SIGNALS}
        for sig in SIGNALS:
            self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.warning("%s: second %s: cancelling what is left now", self.name, sig.name)
            self.forced.set()
        else:
            log.info("%s: received %s: draining", self.name, sig.name)
            self.stop.set()

    def remove(self) -> None:
        """Give the signals back to the handlers from before (a process's EarlySignals: a late
        repeat signal is then only remembered, and cannot turn exit 0 into 143)."""
        for sig in SIGNALS:
            self._loop.remove_signal_handler(sig)
            before = self._before[sig]
            signal.signal(sig, before if before is not None else signal.SIG_DFL)


async def _first(task: asyncio.Future[Any], event: asyncio.Event) -> bool:
    """Wait for task or event; True when the task finished first (the task is left running)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return task.done()


async def serve_until_signalled(
    service: Service, grace: float, name: str, early: EarlySignals | None = None
) -> bool:
    """Run `service` through its lifecycle; True when it became ready (False: stopped while starting).

    Exceptions from start() and ready() propagate (after close()): the caller picks the exit code.
    """
    signals = _Signals(name)
    if early:
        signals.stop.set()
    try:
        await service.start()
        ready = asyncio.ensure_future(service.ready())
        if not await _first(ready, signals.stop):  # stopped while starting: nothing to drain
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ready
            await service.drain(0.0)
            return False
        ready.result()  # raises a failed start-up
        await signals.stop.wait()
        drain = asyncio.ensure_future(service.drain(grace))
        if not await _first(drain, signals.forced):
            await service.force()
        await drain
        return True
    finally:
        with contextlib.suppress(Exception):
            await service.close()
        signals.remove()
        log.info("%s stopped", name)
