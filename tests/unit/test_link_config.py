"""Link config: flags, env twins, validation, and the shapers a config implies."""

from __future__ import annotations

import math

import pytest

from common.errors import ConfigError
from link.config import LinkConfig, build_shapers, load, parse_hostport
from link.metrics import LinkMetrics
from link.relay import queue_limit
from link.shaping import ConstantRate, MarkovRate


def test_defaults_run_on_loopback() -> None:
    cfg = load([], env={})
    assert cfg.listen_addr == ("127.0.0.1", 50052)
    assert cfg.upstream_addr == ("127.0.0.1", 50051)
    assert cfg.metrics_port == 9103
    shapers = build_shapers(cfg, origin=0.0)
    assert all(math.isinf(s.rate_at(0.0)) for s in shapers.values())


def test_flags_beat_env_and_env_applies() -> None:
    env = {"DRAFTLINK_LINK_UPLINK_BPS": "1e6", "DRAFTLINK_LINK_DELAY_MS": "20"}
    cfg = load(["--delay-ms", "5", "--downlink-bps", "3e6", "--listen", "0.0.0.0:6000"], env=env)
    assert (cfg.uplink_bps, cfg.downlink_bps, cfg.delay_ms) == (1e6, 3e6, 5.0)
    assert cfg.listen_addr == ("0.0.0.0", 6000)


def test_unknown_env_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="DRAFTLINK_LINK_UPLINK_BSP"):
        load([], env={"DRAFTLINK_LINK_UPLINK_BSP": "1"})


@pytest.mark.parametrize(
    "argv",
    [
        ["--uplink-bps", "-1"],
        ["--delay-ms", "-3"],
        ["--jitter-ms", "nan"],
        ["--burst-bytes", "-1"],
        ["--listen", "nohost"],
        ["--upstream", "h:notaport"],
        ["--upstream", "h:70000"],
        ["--metrics-port", "99999"],
        ["--schedule", "markov:good=1"],
    ],
)
def test_invalid_values_fail_at_start(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        load(argv, env={})


def test_ipv6_hostport() -> None:
    assert parse_hostport("[::1]:50052", "x") == ("::1", 50052)


def test_markov_schedule_applies_to_chosen_directions_only() -> None:
    spec = "markov:good=2e6,bad=5e5,p_gb=0.1,p_bg=0.3,step=0.5"
    up_only = build_shapers(LinkConfig(schedule=spec, downlink_bps=1e6, seed=3), origin=0.0)
    assert isinstance(up_only["uplink"].schedule, MarkovRate)
    assert up_only["downlink"].schedule == ConstantRate(1e6)
    both = build_shapers(LinkConfig(schedule=spec + ",dir=both", seed=3), origin=0.0)
    up, down = both["uplink"].schedule, both["downlink"].schedule
    assert isinstance(up, MarkovRate)
    assert isinstance(down, MarkovRate)
    assert up is not down  # independent objects, identical channel trajectory
    assert [up.state_at(k) for k in range(500)] == [down.state_at(k) for k in range(500)]


def test_queue_budget_covers_the_bandwidth_delay_product() -> None:
    cfg = LinkConfig(uplink_bps=1e8, delay_ms=100.0)
    shaper = build_shapers(cfg, origin=0.0)["uplink"]
    # 100 Mbit/s × 150 ms = 1.875 MB in flight; the queue holds twice that.
    assert queue_limit(shaper, 0) >= 2 * 1e8 / 8 * 0.1
    slow = build_shapers(LinkConfig(uplink_bps=5e4), origin=0.0)["uplink"]
    assert queue_limit(slow, 0) == 64 * 1024
    assert queue_limit(build_shapers(LinkConfig(delay_ms=1e4), 0.0)["uplink"], 0) == 16 * 1024 * 1024


def test_metrics_names_and_unlimited_rate_reads_zero() -> None:
    metrics = LinkMetrics()
    metrics.set_rate("uplink", math.inf)
    metrics.set_rate("downlink", 5e5)
    metrics.bytes_total.labels(direction="uplink").inc(10)
    metrics.queue_delay.labels(direction="uplink").observe(0.01)
    text = metrics.exposition().decode()
    assert 'draftlink_link_bytes_total{direction="uplink"} 10.0' in text
    assert 'draftlink_link_rate_bps{direction="uplink"} 0.0' in text
    assert 'draftlink_link_rate_bps{direction="downlink"} 500000.0' in text
    assert "draftlink_link_connections 0.0" in text
    assert 'draftlink_link_queue_delay_seconds_count{direction="uplink"} 1.0' in text
