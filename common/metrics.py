"""Shared Prometheus helpers: buckets, build_info, spec-decode counters, the /metrics HTTP server."""

from __future__ import annotations

import platform
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

import common

PREFIX = "draftlink_"

# Latency buckets in seconds: 0.5 ms … 60 s (covers a tiny-model forward up to a long request).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Size buckets in bytes: 16 B … 16 MiB (a K-SQS block is tens of bytes, dense fp32 is megabytes).
BYTES_BUCKETS: tuple[float, ...] = tuple(float(16 * 4**i) for i in range(11))
# Token-count buckets (tokens per round, tokens per request).
TOKENS_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 64, 128, 256, 512, 1024, 2048)


def new_registry() -> CollectorRegistry:
    """A fresh registry without the default process/platform collectors (one per component)."""
    return CollectorRegistry(auto_describe=True)


def build_info(registry: CollectorRegistry, component: str, **labels: str) -> Gauge:
    """draftlink_build_info{component, version, python, ...} = 1."""
    extra = dict(sorted(labels.items()))
    names = ["component", "version", "python", *extra]
    gauge = Gauge(f"{PREFIX}build_info", "draftlink build information", names, registry=registry)
    gauge.labels(component, common.__version__, platform.python_version(), *extra.values()).set(1)
    return gauge


def latency_histogram(
    registry: CollectorRegistry, name: str, doc: str, buckets: Sequence[float] = LATENCY_BUCKETS
) -> Histogram:
    """A draftlink_<name> histogram in seconds with the shared latency buckets."""
    return Histogram(f"{PREFIX}{name}", doc, buckets=tuple(buckets), registry=registry)


class SpecDecodeMetrics:
    """The spec-decode counters both edge and cloud export (each from its own view)."""

    def __init__(self, registry: CollectorRegistry, max_positions: int = 64) -> None:
        p = f"{PREFIX}spec_decode_"
        self.num_drafts = Counter(f"{p}num_drafts", "Draft blocks verified", registry=registry)
        self.num_draft_tokens = Counter(f"{p}num_draft_tokens", "Draft tokens verified", registry=registry)
        self.num_accepted_tokens = Counter(
            f"{p}num_accepted_tokens", "Draft tokens accepted", registry=registry
        )
        self.num_accepted_per_pos = Counter(
            f"{p}num_accepted_tokens_per_pos",
            "Draft tokens accepted, by 0-based position in the block",
            ["position"],
            registry=registry,
        )
        self.num_resampled = Counter(
            f"{p}num_resampled", "Rounds that ended in a residual (resampled) token", registry=registry
        )
        self.void_blocks = Counter(
            f"{p}void_blocks",
            "Streamed draft blocks dropped because they were drafted past a rejection",
            registry=registry,
        )
        self.uplink_bytes = Counter(
            f"{PREFIX}uplink_bytes",
            "Uplink bytes edge → cloud (edge: serialized request messages; cloud: codec payloads received)",
            registry=registry,
        )
        self.downlink_bytes = Counter(
            f"{PREFIX}downlink_bytes", "Downlink bytes cloud → edge (serialized responses)", registry=registry
        )
        self.verify_seconds = latency_histogram(
            registry, "verify_seconds", "Decode + target forward + verification time per block"
        )
        self.max_positions = max_positions  # bounds the label cardinality of per_pos

    def observe_round(
        self, drafted: int, accepted: int, resampled: bool, uplink_bytes: int, downlink_bytes: int
    ) -> None:
        """Count one verified block: `accepted` leading drafts of `drafted` were accepted."""
        if drafted > 0:
            self.num_drafts.inc()
            self.num_draft_tokens.inc(drafted)
            self.num_accepted_tokens.inc(accepted)
        for pos in range(min(accepted, self.max_positions)):
            self.num_accepted_per_pos.labels(str(pos)).inc()
        if resampled:
            self.num_resampled.inc()
        self.uplink_bytes.inc(uplink_bytes)
        self.downlink_bytes.inc(downlink_bytes)


@dataclass
class MetricsServer:
    """A running /metrics HTTP server (daemon thread); `close()` stops it."""

    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(port: int, registry: CollectorRegistry, host: str = "127.0.0.1") -> MetricsServer:
    """Serve `registry` on http://host:port/metrics (port 0 = an ephemeral port, see `.port`)."""
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host, int(httpd.server_port), httpd, thread)
