"""Edge Prometheus metrics: own registry, names from docs/ARCHITECTURE.md, no per-request labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common.metrics import (
    PREFIX,
    TOKENS_BUCKETS,
    SpecDecodeMetrics,
    build_info,
    latency_histogram,
    new_registry,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class EdgeMetrics:
    """All edge-side metrics in one registry (one instance per process; tests make their own).

    Byte counters count serialized protobuf messages (``ByteSize()``) in each direction: the
    OpenSession (prompt) and DraftBlocks up, SessionOpened and Verdicts down; Generate likewise.
    """

    def __init__(self, registry: CollectorRegistry | None = None, model: str = "") -> None:
        r = self.registry = registry or new_registry()
        self.spec = SpecDecodeMetrics(r)
        self.ttft = latency_histogram(r, "time_to_first_token_seconds", "Request arrival to first token")
        self.itl = latency_histogram(r, "inter_token_latency_seconds", "Gap between output tokens")
        self.e2e = latency_histogram(r, "request_latency_seconds", "Request arrival to last token")
        self.round_seconds = latency_histogram(r, "round_seconds", "One draft + send + verdict round")
        self.draft_seconds = latency_histogram(r, "draft_seconds", "Drafting and encoding one block")
        self.generated_tokens = Counter(f"{PREFIX}generated_tokens", "Tokens generated", registry=r)
        self.requests = Counter(
            f"{PREFIX}requests", "Finished generations by finish_reason", ["finish_reason"], registry=r
        )
        self.request_errors = Counter(
            f"{PREFIX}request_errors", "Failed requests by HTTP status code", ["code"], registry=r
        )
        self.running = Gauge(f"{PREFIX}running_requests", "Generations in progress", registry=r)
        self.cloud_up = Gauge(f"{PREFIX}cloud_up", "1 when the last cloud health check passed", registry=r)
        self.void_draft_tokens = Counter(
            f"{PREFIX}void_draft_tokens", "Drafts sent past a rejection and dropped (streamed)", registry=r
        )
        self.blocks_streamed = Counter(
            f"{PREFIX}blocks_streamed", "Draft blocks sent with a continuation following", registry=r
        )
        self.draft_len = Histogram(
            f"{PREFIX}draft_len", "Drafts per block sent", buckets=TOKENS_BUCKETS, registry=r
        )
        self.resumes = Counter(
            f"{PREFIX}resumes", "Sessions reopened after a cloud or link failure", registry=r
        )
        build_info(r, "edge", model=model)

    def observe_round(self, drafted: int, accepted: int, resampled: bool, verify_s: float) -> None:
        """Counters of one verified round (the numbers SpecStats.record_verdict accumulates)."""
        self.spec.observe_round(drafted, accepted, resampled, 0, 0)
        self.spec.verify_seconds.observe(verify_s)

    def observe_sent(self, drafted: int, streamed: bool) -> None:
        self.draft_len.observe(drafted)
        if streamed:
            self.blocks_streamed.inc()

    def observe_void(self, blocks: int, drafts: int) -> None:
        if blocks:
            self.spec.void_blocks.inc(blocks)
            self.void_draft_tokens.inc(drafts)

    def observe_bytes(self, up: int, down: int) -> None:
        if up:
            self.spec.uplink_bytes.inc(up)
        if down:
            self.spec.downlink_bytes.inc(down)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
