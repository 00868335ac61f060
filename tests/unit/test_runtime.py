"""common.runtime's lifecycle with a scripted service and real signals to this process."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from common.runtime import EarlySignals, serve_until_signalled


class Script:
    """A Service that records its calls; drain waits for `released` (live work) up to the grace."""

    def __init__(self, ready_s: float = 0.0, fail: str = "") -> None:
        self.calls: list[str] = []
        self.ready_s = ready_s
        self.fail = fail
        self.released = asyncio.Event()
        self.drained_cleanly: bool | None = None

    async def start(self) -> None:
        self.calls.append("start")
        if self.fail == "start":
            raise OSError("port taken")

    async def ready(self) -> None:
        self.calls.append("ready")
        await asyncio.sleep(self.ready_s)
        if self.fail == "ready":
            raise RuntimeError("model missing")

    async def drain(self, grace: float) -> None:
        self.calls.append(f"drain({grace:g})")
        try:
            await asyncio.wait_for(self.released.wait(), timeout=grace)
            self.drained_cleanly = True
        except TimeoutError:
            self.drained_cleanly = False

    async def force(self) -> None:
        self.calls.append("force")
        self.released.set()

    async def close(self) -> None:
        self.calls.append("close")


def _signal_later(delay: float, sig: signal.Signals = signal.SIGTERM) -> None:
    asyncio.get_running_loop().call_later(delay, os.kill, os.getpid(), sig)


@pytest.fixture(autouse=True)
def _keep_handlers() -> object:
    """The lifecycle must hand the signals back to whatever handled them before."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    assert {s: signal.getsignal(s) for s in before} == before


async def test_first_signal_drains_within_the_grace_period() -> None:
    svc = Script()
    _signal_later(0.05)
    asyncio.get_running_loop().call_later(0.2, svc.released.set)  # live work ends during the drain
    assert await serve_until_signalled(svc, grace=30.0, name="test") is True
    assert svc.calls == ["start", "ready", "drain(30)", "close"]
    assert svc.drained_cleanly is True


async def test_second_signal_forces_the_drain() -> None:
    svc = Script()
    _signal_later(0.05)
    _signal_later(0.3, signal.SIGINT)  # work never ends by itself: only the second signal ends it
    assert await serve_until_signalled(svc, grace=60.0, name="test") is True
    assert svc.calls == ["start", "ready", "drain(60)", "force", "close"]
    assert svc.drained_cleanly is True  # force released the work before the grace ran out


async def test_signal_while_starting_stops_without_a_grace_period() -> None:
    svc = Script(ready_s=30.0)
    _signal_later(0.05)
    assert await serve_until_signalled(svc, grace=60.0, name="test") is False
    assert svc.calls == ["start", "ready", "drain(0)", "close"]


async def test_signal_before_the_loop_ran_counts_as_a_stop() -> None:
    # EarlySignals installs plain handlers before any loop exists; put back what was there (SIGINT is
    # SIG_IGN, not default_int_handler, when the suite runs as a background job)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    early = EarlySignals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. during the heavy imports of a process's main()
        assert early
        svc = Script()
        assert await serve_until_signalled(svc, grace=5.0, name="test", early=early) is True
        assert svc.calls == ["start", "ready", "drain(5)", "close"]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("stage", ["start", "ready"])
async def test_start_up_failures_propagate_and_still_close(stage: str) -> None:
    svc = Script(fail=stage)
    with pytest.raises((OSError, RuntimeError)):
        await serve_until_signalled(svc, grace=5.0, name="test")
    assert svc.calls[-1] == "close"
    assert not any(c.startswith("drain") for c in svc.calls)
