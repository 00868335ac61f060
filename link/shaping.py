"""Pure link-shaping model on an injected clock: rate schedules, token bucket, delay and jitter."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError

# A schedule walk that needs more segments than this is a bug (rates are validated > 0, so any
# finite byte count is reached in finitely many steps); fail loudly instead of spinning.
_MAX_SEGMENTS = 10_000_000
# Markov states are drawn in blocks so one numpy call serves many steps; the block size is
# fixed so the trajectory depends only on the seed, not on the query pattern.
_MARKOV_BLOCK = 1024
GOOD, BAD = 0, 1


def normalize_rate(bps: float | None) -> float:
    """Bits/s with 0, None or inf meaning unlimited (returned as math.inf)."""
    if bps is None or bps == 0 or math.isinf(bps):
        return math.inf
    if bps < 0 or math.isnan(bps):
        raise ConfigError(f"rate must be >= 0 bits/s (0 = unlimited), got {bps!r}")
    return float(bps)


class RateSchedule(ABC):
    """Piecewise-constant rate (bits/s) as a function of time since the link started."""

    @abstractmethod
    def rate_at(self, t: float) -> float:
        """Rate in bits/s in effect at time t (math.inf = unlimited)."""

    @abstractmethod
    def next_change(self, t: float) -> float:
        """The first time strictly after t at which the rate may change (math.inf if never)."""

    @abstractmethod
    def peak(self) -> float:
        """The highest rate the schedule can reach (sizes the relay's queues)."""

    @abstractmethod
    def describe(self) -> str:
        """A short human-readable form for logs."""


@dataclass(frozen=True)
class ConstantRate(RateSchedule):
    """One fixed rate forever; 0 or inf = unlimited."""

    bps: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "bps", normalize_rate(self.bps))

    def rate_at(self, t: float) -> float:
        return self.bps

    def next_change(self, t: float) -> float:
        return math.inf

    def peak(self) -> float:
        return self.bps

    def describe(self) -> str:
        return "unlimited" if math.isinf(self.bps) else f"constant:{self.bps:g}"


class MarkovRate(RateSchedule):
    """Two-state (good/bad) Markov channel stepped every `step` seconds, as in the QS-SD paper.

    State k holds on [k*step, (k+1)*step); the transition into step k+1 is drawn from a seeded
    numpy Generator, so the trajectory is a pure function of the parameters and the seed.
    """

    def __init__(
        self,
        good_bps: float,
        bad_bps: float,
        p_gb: float,
        p_bg: float,
        step: float = 1.0,
        seed: int = 0,
        start: int = GOOD,
    ) -> None:
        if not (0 < good_bps < math.inf and 0 < bad_bps < math.inf):
            raise ConfigError("markov rates must be finite and > 0 bits/s")
        if not (0.0 <= p_gb <= 1.0 and 0.0 <= p_bg <= 1.0):
            raise ConfigError("markov transition probabilities must be in [0, 1]")
        if not (step > 0 and math.isfinite(step)):
            raise ConfigError("markov step must be a positive number of seconds")
        if start not in (GOOD, BAD):
            raise ConfigError("markov start state must be good or bad")
        self.rates = (float(good_bps), float(bad_bps))
        self.p_switch = (float(p_gb), float(p_bg))  # P(leave state) indexed by current state
        self.step = float(step)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._states = bytearray([start])  # one byte per elapsed step; 86 KB per day at 1 s

    def state_at(self, k: int) -> int:
        """The channel state (GOOD/BAD) during step k >= 0."""
        while len(self._states) <= k:
            u = self._rng.random(_MARKOV_BLOCK)
            state = self._states[-1]
            for x in u:
                state = 1 - state if x < self.p_switch[state] else state
                self._states.append(state)
        return self._states[k]

    def _index(self, t: float) -> int:
        return max(0, math.floor(t / self.step))

    def rate_at(self, t: float) -> float:
        return self.rates[self.state_at(self._index(t))]

    def next_change(self, t: float) -> float:
        nxt = (self._index(t) + 1) * self.step
        # Float rounding can put nxt at or below t right at a boundary; never return t itself.
        return nxt if nxt > t else nxt + self.step

    def stationary_bad(self) -> float:
        """Long-run fraction of time in the bad state: p_gb / (p_gb + p_bg)."""
        p_gb, p_bg = self.p_switch
        return 0.0 if p_gb + p_bg == 0 else p_gb / (p_gb + p_bg)

    def mean_rate(self) -> float:
        """Long-run mean rate in bits/s under the stationary distribution."""
        pb = self.stationary_bad()
        return (1 - pb) * self.rates[GOOD] + pb * self.rates[BAD]

    def peak(self) -> float:
        return max(self.rates)

    def describe(self) -> str:
        return (
            f"markov:good={self.rates[GOOD]:g},bad={self.rates[BAD]:g},p_gb={self.p_switch[GOOD]:g},"
            f"p_bg={self.p_switch[BAD]:g},step={self.step:g},seed={self.seed}"
        )


def bytes_between(schedule: RateSchedule, t0: float, t1: float, cap: float = math.inf) -> float:
    """Bytes the schedule can carry over [t0, t1], stopping early once `cap` is reached."""
    total, t = 0.0, t0
    for _ in range(_MAX_SEGMENTS):
        if t >= t1 or total >= cap:
            return min(total, cap)
        rate = schedule.rate_at(t)
        end = min(schedule.next_change(t), t1)
        if math.isinf(rate):
            return cap
        total += rate / 8.0 * (end - t)
        t = end
    raise RuntimeError("rate schedule walk did not terminate")


def time_to_send(schedule: RateSchedule, t0: float, nbytes: float) -> float:
    """The earliest t >= t0 by which the schedule has carried `nbytes` bytes starting at t0."""
    remaining, t = nbytes, t0
    for _ in range(_MAX_SEGMENTS):
        if remaining <= 0:
            return t
        rate = schedule.rate_at(t)
        if math.isinf(rate):
            return t
        end = schedule.next_change(t)
        capacity = rate / 8.0 * (end - t)
        if capacity >= remaining:
            return t + remaining * 8.0 / rate
        remaining -= capacity
        t = end
    raise RuntimeError("rate schedule walk did not terminate")


class TokenBucket:
    """FIFO token bucket in bytes, refilled by a rate schedule; returns serialisation end times.

    Tokens are capped at `burst_bytes` and may not go negative: a chunk larger than the tokens
    on hand leaves once the deficit has been refilled. burst 0 is a plain line-rate serialiser
    (every chunk takes nbytes*8/rate), which is what a real narrow link looks like.
    """

    def __init__(self, schedule: RateSchedule, burst_bytes: int = 0, start: float = 0.0) -> None:
        if burst_bytes < 0:
            raise ConfigError(f"burst must be >= 0 bytes, got {burst_bytes}")
        self.schedule = schedule
        self.burst = float(burst_bytes)
        self._tokens = self.burst  # starts full, like tbf
        self._t = start  # time of the last state update (= last departure when busy)

    def reserve(self, now: float, nbytes: int) -> float:
        """Take nbytes arriving at `now`; return when its last byte leaves the serialiser."""
        t = max(now, self._t)  # FIFO: a chunk cannot start before the previous one left
        self._tokens = min(self.burst, self._tokens + bytes_between(self.schedule, self._t, t, self.burst))
        if self._tokens >= nbytes:
            self._tokens -= nbytes
            self._t = t
            return t
        depart = time_to_send(self.schedule, t, nbytes - self._tokens)
        self._tokens = 0.0
        self._t = depart
        return depart


class Shaper:
    """One direction of the link: token bucket, then fixed delay plus bounded, order-keeping jitter.

    Times passed in are absolute (any clock); the rate schedule sees time since `origin`.
    Jitter is uniform in [-jitter, +jitter] around `delay` (never below zero extra delay), and a
    chunk never departs before the one ahead of it, so a TCP byte stream is never reordered.
    """

    def __init__(
        self,
        schedule: RateSchedule,
        *,
        burst_bytes: int = 0,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        rng: np.random.Generator | None = None,
        origin: float = 0.0,
    ) -> None:
        if delay_s < 0 or jitter_s < 0:
            raise ConfigError("delay and jitter must be >= 0")
        self.schedule = schedule
        self.delay = float(delay_s)
        self.jitter = float(jitter_s)
        self.origin = origin
        self._bucket = TokenBucket(schedule, burst_bytes)
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._last = -math.inf  # departure of the previous chunk (absolute)

    def rate_at(self, now: float) -> float:
        """Rate in bits/s in effect at absolute time `now` (math.inf = unlimited)."""
        return self.schedule.rate_at(max(0.0, now - self.origin))

    def departure(self, now: float, nbytes: int) -> float:
        """Absolute time at which a chunk of nbytes arriving at `now` should be delivered."""
        rel = max(0.0, now - self.origin)
        serialised = self.origin + self._bucket.reserve(rel, nbytes)
        extra = self.delay
        if self.jitter > 0:
            extra = max(0.0, extra + float(self._rng.uniform(-self.jitter, self.jitter)))
        depart = max(serialised + extra, self._last, now)
        self._last = depart
        return depart

    def chunk_limit(self, now: float, target_s: float = 0.005, lo: int = 64, hi: int = 16384) -> int:
        """Largest chunk worth sending at once: about `target_s` of serialisation at the current rate.

        Writing a whole 16 KiB read at 50 kbit/s would hold its first byte back for 2.6 s; small
        chunks keep per-byte latency close to a real link's packet-by-packet serialisation.
        """
        rate = self.rate_at(now)
        if math.isinf(rate):
            return 1 << 30
        return int(min(hi, max(lo, rate / 8.0 * target_s)))


def _parse_kv(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in body.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"schedule option {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


MARKOV_KEYS = {"good", "bad", "p_gb", "p_bg", "step", "seed", "start", "dir"}
DIRECTIONS = ("uplink", "downlink")


@dataclass(frozen=True)
class ScheduleSpec:
    """A parsed --schedule: kind 'constant' (use the per-direction rates) or 'markov' (params)."""

    kind: str
    params: tuple[tuple[str, str], ...] = ()
    directions: tuple[str, ...] = ()

    def build(self, default_seed: int) -> RateSchedule:
        """A fresh MarkovRate for one direction (same seed -> same channel trajectory)."""
        if self.kind != "markov":
            raise ConfigError("only markov schedules are built from the spec")
        p = dict(self.params)
        try:
            return MarkovRate(
                good_bps=float(p["good"]),
                bad_bps=float(p["bad"]),
                p_gb=float(p["p_gb"]),
                p_bg=float(p["p_bg"]),
                step=float(p.get("step", "1.0")),
                seed=int(p.get("seed", str(default_seed))),
                start=BAD if p.get("start", "good") == "bad" else GOOD,
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"bad markov schedule ({exc}); need good=,bad=,p_gb=,p_bg=") from None


def parse_schedule(spec: str) -> ScheduleSpec:
    """Parse 'constant' or 'markov:good=2e6,bad=5e5,p_gb=0.1,p_bg=0.3,step=1.0,seed=0[,dir=...]'.

    dir is uplink (default: the paper's bottleneck), downlink or both; other directions keep
    their constant --*-bps rate.
    """
    kind, _, body = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "constant":
        if body.strip():
            raise ConfigError("the constant schedule takes no options; use --uplink-bps/--downlink-bps")
        return ScheduleSpec("constant")
    if kind != "markov":
        raise ConfigError(f"unknown schedule {spec!r}; expected constant or markov:...")
    kv = _parse_kv(body)
    unknown = sorted(set(kv) - MARKOV_KEYS)
    if unknown:
        raise ConfigError(f"unknown markov option(s) {unknown}; known: {sorted(MARKOV_KEYS)}")
    which = kv.pop("dir", "uplink")
    if which not in (*DIRECTIONS, "both"):
        raise ConfigError(f"markov dir must be uplink, downlink or both, got {which!r}")
    if kv.get("start", "good") not in ("good", "bad"):
        raise ConfigError("markov start must be good or bad")
    out = ScheduleSpec("markov", tuple(sorted(kv.items())), DIRECTIONS if which == "both" else (which,))
    out.build(0)  # validate eagerly so a bad spec fails at start-up
    return out
