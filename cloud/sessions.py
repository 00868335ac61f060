"""Live sessions: a bounded registry of per-stream state, with clean release on every exit path."""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud.metrics import CloudMetrics
from cloud.verifier import VerifySession
from common.errors import CapacityError, UnavailableError

log = logging.getLogger("draftlink.cloud.sessions")


@dataclass(eq=False)
class SessionEntry:
    """One live Session or Generate stream; `core` holds its KV cache and accepted tokens."""

    id: str
    kind: str  # "session" | "generate"
    request_id: str
    created: float
    core: VerifySession | None = None
    last_active: float = field(default=0.0)
    released: bool = False

    def touch(self, now: float) -> None:
        self.last_active = now


class SessionManager:
    """Bounded session registry: acquire (or RESOURCE_EXHAUSTED / UNAVAILABLE), release (idempotent)."""

    def __init__(
        self,
        max_sessions: int,
        metrics: CloudMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.metrics = metrics
        self.clock = clock
        self.draining = False
        self._live: dict[str, SessionEntry] = {}
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(3)
        self._lock = threading.Lock()  # release() may run from test threads; keep the count exact
        self._listeners: list[Callable[[int], None]] = []

    @property
    def live(self) -> int:
        return len(self._live)

    def entries(self) -> list[SessionEntry]:
        return list(self._live.values())

    def add_listener(self, fn: Callable[[int], None]) -> None:
        """Call fn(live_count) after every acquire/release (tests await counts with it)."""
        self._listeners.append(fn)

    def acquire(self, kind: str, request_id: str = "") -> SessionEntry:
        """Reserve a slot; UnavailableError while draining, CapacityError when full."""
        with self._lock:
            if self.draining:
                raise UnavailableError("server is shutting down; no new sessions")
            if len(self._live) >= self.max_sessions:
                raise CapacityError(f"too many sessions ({self.max_sessions} live); retry later")
            now = self.clock()
            entry = SessionEntry(f"{self._prefix}-{next(self._ids)}", kind, request_id, now, last_active=now)
            self._live[entry.id] = entry
            count = len(self._live)
        if self.metrics is not None:
            self.metrics.running_sessions.set(count)
        self._notify(count)
        return entry

    def release(self, entry: SessionEntry, outcome: str) -> bool:
        """Forget the entry and its state (KV cache freed with it); False when already released."""
        with self._lock:
            if entry.released:
                return False
            entry.released = True
            entry.core = None  # drop the KV cache and token list now, not when the task is collected
            self._live.pop(entry.id, None)
            count = len(self._live)
        if self.metrics is not None:
            self.metrics.running_sessions.set(count)
            self.metrics.sessions.labels(outcome).inc()
        log.debug("session %s (%s) ended: %s", entry.id, entry.request_id or "-", outcome)
        self._notify(count)
        return True

    def drain(self) -> None:
        """Refuse new sessions from now on (live ones continue)."""
        self.draining = True

    def _notify(self, count: int) -> None:
        for fn in self._listeners:
            fn(count)
