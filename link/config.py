"""The link's frozen config (flags + DRAFTLINK_LINK_* env twins) and the shapers it implies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.config import field, load_config
from common.errors import ConfigError
from link.shaping import DIRECTIONS, ConstantRate, RateSchedule, Shaper, normalize_rate, parse_schedule

ENV_PREFIX = "DRAFTLINK_LINK_"


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') -> (host, port), or ConfigError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} must be host:port, got {value!r}")
    host = host.strip("[]")
    try:
        num = int(port)
    except ValueError:
        raise ConfigError(f"{what} port must be an integer, got {value!r}") from None
    if not 0 <= num <= 65535:
        raise ConfigError(f"{what} port out of range: {value!r}")
    return host, num


@dataclass(frozen=True)
class LinkConfig:
    """Everything draftlink-link needs; rates in bits/s, 0 = unlimited."""

    listen: str = field("127.0.0.1:50052", "address the edge connects to (host:port)")
    upstream: str = field("127.0.0.1:50051", "cloud address every accepted connection is relayed to")
    uplink_bps: float = field(0.0, "edge->cloud rate in bits/s (0 = unlimited)")
    downlink_bps: float = field(0.0, "cloud->edge rate in bits/s (0 = unlimited)")
    delay_ms: float = field(0.0, "one-way delay added to each direction, in ms")
    jitter_ms: float = field(0.0, "uniform +/- jitter around the delay, in ms (never reorders bytes)")
    burst_bytes: int = field(0, "token-bucket size in bytes (0 = pure line-rate serialisation)")
    schedule: str = field(
        "constant",
        "rate schedule: constant, or markov:good=BPS,bad=BPS,p_gb=P,p_bg=P[,step=S,seed=N,dir=D]",
    )
    metrics_port: int = field(9103, "Prometheus /metrics port on the listen host (0 disables)")
    seed: int = field(0, "seed for jitter and (unless the schedule sets one) the Markov channel")
    log_level: str = field("INFO", "log level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    def validate(self) -> None:
        """Fail at start-up on any value the relay could not honour."""
        parse_hostport(self.listen, "--listen")
        parse_hostport(self.upstream, "--upstream")
        for name in ("uplink_bps", "downlink_bps"):
            try:
                normalize_rate(getattr(self, name))
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.burst_bytes < 0:
            raise ConfigError(f"burst_bytes must be >= 0, got {self.burst_bytes}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port out of range: {self.metrics_port}")
        parse_schedule(self.schedule)

    @property
    def listen_addr(self) -> tuple[str, int]:
        return parse_hostport(self.listen, "--listen")

    @property
    def upstream_addr(self) -> tuple[str, int]:
        return parse_hostport(self.upstream, "--upstream")


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> LinkConfig:
    """Resolve the link config from flags, then DRAFTLINK_LINK_* env, then defaults."""
    return load_config(
        LinkConfig,
        argv,
        prog="draftlink-link",
        description="Shaped TCP relay between the draftlink edge and cloud (rate, delay, jitter).",
        prefix=ENV_PREFIX,
        env=env,
    )


def schedules(cfg: LinkConfig) -> dict[str, RateSchedule]:
    """Rate schedule per direction: the Markov channel where --schedule says, else constant."""
    spec = parse_schedule(cfg.schedule)
    out: dict[str, RateSchedule] = {
        "uplink": ConstantRate(cfg.uplink_bps),
        "downlink": ConstantRate(cfg.downlink_bps),
    }
    for direction in spec.directions:
        out[direction] = spec.build(cfg.seed)  # one instance each; same seed -> same trajectory
    return out


def build_shapers(cfg: LinkConfig, origin: float) -> dict[str, Shaper]:
    """One Shaper per direction, shared by every connection (the link is one bottleneck)."""
    out = {}
    for index, (direction, schedule) in enumerate(schedules(cfg).items()):
        out[direction] = Shaper(
            schedule,
            burst_bytes=cfg.burst_bytes,
            delay_s=cfg.delay_ms / 1000.0,
            jitter_s=cfg.jitter_ms / 1000.0,
            # Independent, reproducible jitter streams per direction.
            rng=np.random.default_rng([cfg.seed, index]),
            origin=origin,
        )
    assert tuple(out) == DIRECTIONS
    return out
