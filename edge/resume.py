"""Resume policy: which failures a generation survives, and how it finds a cloud again in time.

A session (or Generate stream) that fails with a retryable status (common.rpc.status.retryable:
UNAVAILABLE, a stream cut under us) is reopened, on the same target or the next one
(CloudClient.choose), with the prompt plus the tokens already committed. Reopening is tried
until `resume_timeout` seconds after the failure, never past the request's deadline; a failure
that is not retryable (invalid argument, precondition, auth, deadline, INTERNAL) is final.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from common.errors import ConnectionLostError, RequestError, UnavailableError
from common.rpc.status import error_for_status, error_from_rpc, retryable
from edge.client import CloudClient, CloudTarget
from edge.errors import cloud_unavailable

log = logging.getLogger("draftlink.edge.resume")

OPEN_TIMEOUT_S = 10.0  # one open attempt: OpenSession → SessionOpened needs no model work
CONNECT_WAIT_S = 1.0  # for a channel to (re)connect: longer than its reconnect backoff (edge/client.py)
QUICK_WINDOW_S = 2.0  # a new request while no cloud is known to be up: two reconnect backoffs
MAX_STALLED_RESUMES = 3  # resumes in a row without a new token: the request itself may kill clouds
_PAUSE_S = (0.05, 0.5)  # between rounds of attempts: first pause, longest pause


def as_domain(exc: BaseException) -> RequestError | None:
    """The domain error a cloud-side failure stands for (None: not a cloud failure)."""
    if isinstance(exc, grpc.RpcError):
        return error_from_rpc(exc)
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, asyncio.InvalidStateError):  # written to a call that had just ended
        return ConnectionLostError("the session ended under a write")
    return None


def lost(exc: BaseException) -> RequestError | None:
    """The error that ended a live session, when a resume may survive it; None when it is final."""
    err = as_domain(exc)
    return err if err is not None and retryable(err) else None


async def call_error(call: Any) -> RequestError:
    """The domain error of a call that ended before its generation finished (through the seam)."""
    if call is None:
        return ConnectionLostError("the session is gone")
    try:
        code = await asyncio.wait_for(call.code(), timeout=1.0)
        details = await call.details()
    except (TimeoutError, grpc.RpcError):
        return ConnectionLostError("the session ended without a status")
    if code == grpc.StatusCode.OK:  # the server closed the stream before the generation finished
        return ConnectionLostError("the session ended without finishing")
    return error_for_status(code, details)


class Deadline:
    """A request's absolute deadline on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())


async def connect(
    client: CloudClient,
    claim: Callable[[CloudTarget], None],
    open_on: Callable[[CloudTarget], Awaitable[None]],
    drop: Callable[[], None],
    deadline: Deadline,
    *,
    patient: bool,
    cause: RequestError | None = None,
    avoid: CloudTarget | None = None,
    open_timeout: float | None = OPEN_TIMEOUT_S,
    needs: tuple[str, ...] = (),
) -> CloudTarget:
    """Open on the first target that takes the session; the target it opened on.

    `claim` records the target as used before anything is awaited, so concurrent requests
    spread over the targets (CloudClient.choose orders by use). Targets whose Info lacks one of
    the protocol features in `needs` (e.g. an older cloud without "resume") are skipped.

    Patient (a resume, or a new request while the edge saw a healthy cloud): keep trying, with
    short pauses, until `resume_timeout` has passed; then the error says cloud_unavailable.
    Impatient (a new request while the edge knows no cloud is up): keep trying only for
    QUICK_WINDOW_S (a cloud that just came back is found within one reconnect backoff), then
    fail with the last error so the client can go elsewhere (503 + Retry-After).
    """
    window = min(deadline.remaining(), client.resume_timeout if patient else QUICK_WINDOW_S)
    until = time.monotonic() + window
    last, pause = cause, _PAUSE_S[0]
    while True:
        for target in client.choose(avoid=avoid):
            if target.info is not None and not set(needs) <= set(target.info.features):
                last = last or UnavailableError(f"{target.address} lacks {', '.join(needs)}")
                continue
            claim(target)
            try:
                await _attempt(target, open_on, deadline, open_timeout)
                return target
            except Exception as exc:
                drop()
                err = _attempt_error(exc, target)
                if err is None or not retryable(err, opening=True):
                    if cause is not None:
                        raise cloud_unavailable(
                            f"{target.address} refused the resumed session: {exc}"
                        ) from exc
                    raise
                if isinstance(err, UnavailableError):
                    target.mark_unhealthy(str(err))
                last = err
        if time.monotonic() >= until or deadline.remaining() <= 0:
            break
        await asyncio.sleep(pause)
        pause = min(_PAUSE_S[1], pause * 2)
        if not client.healthy:
            await client.resolve()
    if not patient and last is not None:
        raise last
    what = "took the session back" if cause is not None else "answered"
    raise cloud_unavailable(f"no cloud {what} within {window:.1f}s (last error: {last})")


async def _attempt(
    target: CloudTarget,
    open_on: Callable[[CloudTarget], Awaitable[None]],
    deadline: Deadline,
    open_timeout: float | None,
) -> None:
    """Wait briefly for the target's connection (a restarted cloud: within one backoff), then open."""
    budget = deadline.remaining()
    if budget <= 0:
        raise ConnectionLostError("the request deadline passed while reconnecting")
    try:
        await asyncio.wait_for(target.channel.channel_ready(), timeout=min(CONNECT_WAIT_S, budget))
    except TimeoutError:
        raise ConnectionLostError(f"{target.address}: not connected ({target.status})") from None
    limit = deadline.remaining() if open_timeout is None else min(open_timeout, deadline.remaining())
    await asyncio.wait_for(open_on(target), timeout=limit)


def _attempt_error(exc: Exception, target: CloudTarget) -> RequestError | None:
    if isinstance(exc, TimeoutError):
        return ConnectionLostError(f"{target.address} did not open the session in time")
    return as_domain(exc)
