"""The cloud's Prometheus metrics, on its own registry (names in docs/ARCHITECTURE.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from common.metrics import PREFIX, SpecDecodeMetrics, build_info, new_registry

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
            f"{PREFIX}model_queue_depth", "Model jobs queued or running on the worker", registry=self.registry
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
