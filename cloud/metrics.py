"""The cloud's Prometheus metrics, on its own registry (names in docs/ARCHITECTURE.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.metrics import (
    PREFIX,
    TOKENS_BUCKETS,
    SpecDecodeMetrics,
    build_info,
    latency_histogram,
    new_registry,
)
from common.models.engine import EngineObserver

SESSION_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)

OUTCOMES = ("finished", "closed", "cancelled", "error", "idle_timeout", "shutdown")


class CloudMetrics:
    """Spec-decode counters (cloud view), sessions, errors, Generate tokens, build info."""

    def __init__(self, registry: CollectorRegistry | None = None, model: str = "") -> None:
        self.registry = registry if registry is not None else new_registry()
        self.spec = SpecDecodeMetrics(self.registry)
        self.running_sessions = Gauge(
            f"{PREFIX}running_sessions", "Live Session and Generate streams", registry=self.registry
        )
        self.sessions = Counter(
            f"{PREFIX}sessions", "Ended sessions by outcome", ["outcome"], registry=self.registry
        )
        self.rpc_errors = Counter(
            f"{PREFIX}rpc_errors",
            "RPCs ended with an error status, by code",
            ["code"],
            registry=self.registry,
        )
        self.model_queue_depth = Gauge(
            f"{PREFIX}model_queue_depth",
            "Model jobs waiting or running on the batch engine",
            registry=self.registry,
        )
        self.batch_sessions = Histogram(
            f"{PREFIX}batch_sessions",
            "Sessions whose work shared one target forward",
            buckets=SESSION_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}batch_tokens",
            "Tokens in one target forward",
            buckets=TOKENS_BUCKETS,
            registry=self.registry,
        )
        self.forward_seconds = latency_histogram(
            self.registry, "forward_seconds", "One batched target forward (all sessions in it)"
        )
        self.queue_wait_seconds = latency_histogram(
            self.registry, "queue_wait_seconds", "Time a round waited before its first target forward"
        )
        self.generate_tokens = Counter(
            f"{PREFIX}generate_tokens", "Tokens produced by Generate (cloud-only)", registry=self.registry
        )
        for outcome in OUTCOMES:  # export zeros so dashboards see every series from the start
            self.sessions.labels(outcome)
        build_info(self.registry, "cloud", model=model)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample (tests, logs); 0 when absent."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else float(got)


class CloudEngineObserver(EngineObserver):
    """The batch engine's hooks → the cloud's batching histograms (called on the engine thread)."""

    def __init__(self, metrics: CloudMetrics) -> None:
        self.metrics = metrics

    def on_step(self, sessions: int, tokens: int, seconds: float) -> None:
        self.metrics.batch_sessions.observe(sessions)
        self.metrics.batch_tokens.observe(tokens)
        self.metrics.forward_seconds.observe(seconds)

    def on_first_forward(self, wait_seconds: float) -> None:
        self.metrics.queue_wait_seconds.observe(wait_seconds)
