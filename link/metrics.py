"""The link's Prometheus metrics on its own registry and its own /metrics HTTP server."""

from __future__ import annotations

import math
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

# Modelled time a chunk spends in the link (serialisation wait + delay + jitter): from well under
# a millisecond on a fast link to seconds on a 50 kbit/s one.
_DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LinkMetrics:
    """Byte counters, current rate, open connections and queue delay, per direction."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.bytes_total = Counter(
            "draftlink_link_bytes",
            "Bytes delivered by the link, per direction (uplink = edge->cloud).",
            ["direction"],
            registry=self.registry,
        )
        self.rate_bps = Gauge(
            "draftlink_link_rate_bps",
            "Configured link rate in bits/s now in effect, per direction (0 = unlimited).",
            ["direction"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "draftlink_link_connections", "Relayed connections now open.", registry=self.registry
        )
        self.queue_delay = Histogram(
            "draftlink_link_queue_delay_seconds",
            "Time from a chunk's arrival at the link to its delivery (rate wait + delay + jitter).",
            ["direction"],
            buckets=_DELAY_BUCKETS,
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def set_rate(self, direction: str, bps: float) -> None:
        """Publish the rate in effect (math.inf is exported as 0, the flag's 'unlimited')."""
        self.rate_bps.labels(direction=direction).set(0.0 if math.isinf(bps) else bps)

    def exposition(self) -> bytes:
        """The text exposition of this registry (what GET /metrics returns)."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server in a daemon thread; return the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop the /metrics server if it was started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
