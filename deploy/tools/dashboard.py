"""Generate deploy/grafana/dashboards/draftlink.json (run: python -m deploy.tools.dashboard)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARD_PATH = Path(__file__).resolve().parents[1] / "grafana" / "dashboards" / "draftlink.json"
DATASOURCE = {"type": "prometheus", "uid": "draftlink-prometheus"}
RATE = "[$__rate_interval]"
EDGE, CLOUD, LINK = 'job="$edge_job"', 'job="$cloud_job"', 'job="$link_job"'
# Dashboard variables: the Prometheus job of each process (compose and the k8s Services use these).
JOB_VARIABLES = {"edge_job": "draftlink-edge", "cloud_job": "draftlink-cloud", "link_job": "draftlink-link"}
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel and its legend."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """A Grafana panel: kind is 'timeseries' or 'stat'; width and height in grid units."""

    title: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def rate_sum(metric: str, selector: str, by: str = "") -> str:
    """sum [by (label)] (rate(metric{selector}[$__rate_interval]))."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}{RATE}))"


def quantiles(
    metric: str, selector: str, what: str, qs: tuple[float, ...] = QUANTILES, by: str = ""
) -> tuple[Query, ...]:
    """p50/p90/p99 of a histogram (metric is the base name, without _bucket), optionally per label."""
    grouping = f"le, {by}" if by else "le"
    return tuple(
        Query(
            f"histogram_quantile({q}, {rate_sum(metric + '_bucket', selector, grouping)})",
            f"{what} p{round(q * 100)}",
        )
        for q in qs
    )


def ratio(num: str, den: str, selector: str) -> str:
    """sum(rate(num)) / sum(rate(den)) over the same selector."""
    return f"{rate_sum(num, selector)} / {rate_sum(den, selector)}"


SD = "draftlink_spec_decode_"
ACCEPTANCE = ratio(f"{SD}num_accepted_tokens_total", f"{SD}num_draft_tokens_total", EDGE)
MEAN_ACCEPTANCE_LENGTH = f"1 + {ratio(f'{SD}num_accepted_tokens_total', f'{SD}num_drafts_total', EDGE)}"
# The cloud counts codec payload bytes only (the edge counts whole serialized request messages).
BITS_PER_DRAFT_TOKEN = f"8 * {ratio('draftlink_uplink_bytes_total', f'{SD}num_draft_tokens_total', CLOUD)}"
TOKENS_PER_S = rate_sum("draftlink_generated_tokens_total", EDGE)


def stat_panels() -> list[Panel]:
    """The headline row: current values of the four numbers people ask for first."""
    return [
        Panel("Tokens/s", "none", (Query(TOKENS_PER_S, "tokens/s"),), "stat", 6, 4),
        Panel("Acceptance rate", "percentunit", (Query(ACCEPTANCE, "acceptance"),), "stat", 6, 4),
        Panel("Bits per draft token", "none", (Query(BITS_PER_DRAFT_TOKEN, "bits"),), "stat", 6, 4),
        Panel(
            "Running sessions (cloud)",
            "none",
            (Query(f"sum(draftlink_running_sessions{{{CLOUD}}})", "sessions"),),
            "stat",
            6,
            4,
        ),
    ]


def latency_panels() -> list[Panel]:
    """Throughput and the latency percentiles (TTFT, inter-token, request, round phases)."""
    cloud_tokens = rate_sum("draftlink_generate_tokens_total", CLOUD)
    phases = (
        *quantiles("draftlink_round_seconds", EDGE, "round (edge)"),
        *quantiles("draftlink_draft_seconds", EDGE, "draft (edge)"),
        *quantiles("draftlink_verify_seconds", CLOUD, "verify (cloud)"),
    )
    return [
        Panel(
            "Tokens/s",
            "none",
            (Query(TOKENS_PER_S, "edge: generated"), Query(cloud_tokens, "cloud: Generate (cloud-only)")),
            description="Generated tokens per second (edge: every mode; cloud: the autoregressive RPC).",
        ),
        Panel("Time to first token", "s", quantiles("draftlink_time_to_first_token_seconds", EDGE, "TTFT")),
        Panel("Inter-token latency", "s", quantiles("draftlink_inter_token_latency_seconds", EDGE, "ITL")),
        Panel("Request latency", "s", quantiles("draftlink_request_latency_seconds", EDGE, "end to end")),
        Panel("Round phases", "s", phases, width=24, description="Round = draft + link + verify."),
    ]


def acceptance_panels() -> list[Panel]:
    """Speculative decoding quality: acceptance, acceptance length, per position, resampling."""
    per_pos = (
        f"{rate_sum(f'{SD}num_accepted_tokens_per_pos_total', EDGE, 'position')}"
        f" / ignoring(position) group_left {rate_sum(f'{SD}num_drafts_total', EDGE)}"
    )
    resampled = rate_sum(f"{SD}num_resampled_total", EDGE)
    verified = f"({rate_sum(f'{SD}num_accepted_tokens_total', EDGE)} + {resampled})"
    resampling = f"{resampled} / {verified}"
    cloud_acceptance = ratio(f"{SD}num_accepted_tokens_total", f"{SD}num_draft_tokens_total", CLOUD)
    return [
        Panel(
            "Acceptance rate",
            "percentunit",
            (Query(ACCEPTANCE, "edge view"), Query(cloud_acceptance, "cloud view")),
            description="Accepted draft tokens / verified draft tokens.",
        ),
        Panel(
            "Mean acceptance length",
            "none",
            (Query(MEAN_ACCEPTANCE_LENGTH, "tokens per round"),),
            description="1 + accepted drafts per verified block (vLLM's definition): tokens per round.",
        ),
        Panel(
            "Per-position acceptance",
            "percentunit",
            (Query(per_pos, "position {{position}}"),),
            description="Rounds whose draft at this 0-based position was accepted / rounds.",
        ),
        Panel(
            "Resampling rate",
            "percentunit",
            (Query(resampling, "residual draws / verified positions"),),
            description="Rejections (residual draws) / positions the verifier tested (accepted + rejected),"
            " as the response's resampling_rate.",
        ),
    ]


def link_panels() -> list[Panel]:
    """Bandwidth: uplink bytes per token, bits per draft token, what the link carries."""
    per_token = ratio("draftlink_uplink_bytes_total", "draftlink_generated_tokens_total", EDGE)
    downlink = ratio("draftlink_downlink_bytes_total", "draftlink_generated_tokens_total", EDGE)
    payload = f"{rate_sum('draftlink_uplink_bytes_total', CLOUD)} / {TOKENS_PER_S}"
    link_bits = f"8 * {rate_sum('draftlink_link_bytes_total', LINK, 'direction')}"
    return [
        Panel(
            "Bytes per generated token",
            "decbytes",
            (
                Query(per_token, "uplink (gRPC messages, edge)"),
                Query(payload, "uplink codec payload (cloud)"),
                Query(downlink, "downlink (verdicts, edge)"),
            ),
        ),
        Panel(
            "Bits per draft token",
            "none",
            (Query(BITS_PER_DRAFT_TOKEN, "codec payload bits / draft token"),),
            description="Measured on the cloud: codec payload bits per verified draft token.",
        ),
        Panel(
            "Link throughput vs configured rate",
            "bps",
            (
                Query(link_bits, "carried {{direction}}"),
                Query(f"max by (direction) (draftlink_link_rate_bps{{{LINK}}})", "rate {{direction}}"),
            ),
            description="Configured rate 0 means unlimited.",
        ),
        Panel(
            "Link queue delay",
            "s",
            quantiles("draftlink_link_queue_delay_seconds", LINK, "{{direction}}", (0.5, 0.99), "direction"),
        ),
    ]


def load_panels() -> list[Panel]:
    """Sessions, requests and errors."""
    return [
        Panel(
            "Sessions and requests in flight",
            "none",
            (
                Query(f"sum(draftlink_running_sessions{{{CLOUD}}})", "cloud sessions"),
                Query(f"sum(draftlink_running_requests{{{EDGE}}})", "edge requests"),
                Query(f"sum(draftlink_link_connections{{{LINK}}})", "link connections"),
            ),
        ),
        Panel(
            "Sessions and requests finished",
            "reqps",
            (
                Query(rate_sum("draftlink_sessions_total", CLOUD, "outcome"), "cloud session {{outcome}}"),
                Query(rate_sum("draftlink_requests_total", EDGE, "finish_reason"), "edge {{finish_reason}}"),
            ),
        ),
        Panel(
            "Errors by code",
            "reqps",
            (
                Query(rate_sum("draftlink_request_errors_total", EDGE, "code"), "edge HTTP {{code}}"),
                Query(rate_sum("draftlink_rpc_errors_total", CLOUD, "code"), "cloud gRPC {{code}}"),
            ),
            width=24,
        ),
    ]


def batching_panels() -> list[Panel]:
    """The cloud's continuous batching: how full each target forward is and what it costs."""

    def mean(metric: str, selector: str) -> str:
        return f"{rate_sum(metric + '_sum', selector)} / {rate_sum(metric + '_count', selector)}"

    return [
        Panel(
            "Batch size per target forward",
            "none",
            (
                Query(mean("draftlink_batch_sessions", CLOUD), "sessions (mean)"),
                *quantiles("draftlink_batch_sessions", CLOUD, "sessions", (0.5, 0.99)),
                Query(mean("draftlink_batch_tokens", CLOUD), "tokens (mean)"),
                Query(f"sum(draftlink_model_queue_depth{{{CLOUD}}})", "jobs waiting or running"),
            ),
            description="Sessions and tokens that shared one batched target forward (cloud).",
        ),
        Panel(
            "Forward time and queue wait",
            "s",
            (
                *quantiles("draftlink_forward_seconds", CLOUD, "forward", (0.5, 0.99)),
                *quantiles("draftlink_queue_wait_seconds", CLOUD, "wait before forward", (0.5, 0.99)),
            ),
            description="One batched forward, and how long a round waits before its first forward.",
        ),
    ]


ROWS: tuple[tuple[str, Any], ...] = (
    ("Overview", stat_panels),
    ("Throughput and latency", latency_panels),
    ("Speculative decoding", acceptance_panels),
    ("Batching (cloud)", batching_panels),
    ("Link and bandwidth", link_panels),
    ("Load and errors", load_panels),
)


def panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    """One panel in Grafana's dashboard JSON model."""
    targets = [
        {"datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend, "refId": chr(ord("A") + i)}
        for i, q in enumerate(panel.queries)
    ]
    out: dict[str, Any] = {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": panel.options or {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": targets,
    }
    if panel.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return out


def layout() -> list[dict[str, Any]]:
    """Rows of panels packed left to right, 24 grid units wide."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for title, build in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False, "panels": []})
        panels[-1]["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for panel in build():
            if x + panel.width > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(panel_json(panel, pid, x, y))
            pid, x, row_h = pid + 1, x + panel.width, max(row_h, panel.height)
        y += row_h
    return panels


def variables() -> list[dict[str, Any]]:
    """Constant-like custom variables naming each process's Prometheus job."""
    return [
        {
            "name": name,
            "label": name.replace("_", " "),
            "type": "custom",
            "query": job,
            "current": {"text": job, "value": job},
            "options": [{"selected": True, "text": job, "value": job}],
            "hide": 0,
        }
        for name, job in JOB_VARIABLES.items()
    ]


def dashboard() -> dict[str, Any]:
    """The whole dashboard (provisioned by deploy/grafana/provisioning/dashboards/draftlink.yaml)."""
    return {
        "uid": "draftlink",
        "title": "draftlink",
        "description": "Edge-cloud speculative decoding: throughput, latency, acceptance, bandwidth.",
        "tags": ["draftlink"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "panels": layout(),
    }


def render() -> str:
    """The dashboard as the committed JSON text."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard JSON (or, with --check, fail when the committed file is stale)."""
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        current = DASHBOARD_PATH.read_text() if DASHBOARD_PATH.exists() else ""
        if current != render():
            print(f"{DASHBOARD_PATH} is stale: run python -m deploy.tools.dashboard", file=sys.stderr)
            return 1
        return 0
    DASHBOARD_PATH.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_PATH.write_text(render())
    print(f"wrote {DASHBOARD_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
