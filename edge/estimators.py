"""Online estimators for the adaptive controller: decayed ridge fits of link, costs, rejection (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class DecayedRidge:
    """y ≈ θ·x by least squares with exponential forgetting, ridge-pulled toward a prior θ₀.

    Minimises Σ_k forget^(age_k) (y_k − θ·x_k)² + Σ_i ridge_i (θ_i − θ₀_i)². The ridge is never
    forgotten: it decides the directions the recent data leave open (e.g. how a round trip splits
    into latency and bits/rate while every block has the same size).
    """

    def __init__(self, prior: Sequence[float], ridge: Sequence[float], forget: float) -> None:
        self.forget = forget
        self.gram = np.zeros((len(prior), len(prior)))  # Σ w x xᵀ
        self.moment = np.zeros(len(prior))  # Σ w x y
        self.ridge = np.asarray(ridge, dtype=np.float64)
        self.prior = np.asarray(prior, dtype=np.float64)
        self.count = 0

    def update(self, x: Sequence[float], y: float) -> None:
        v = np.asarray(x, dtype=np.float64)
        self.gram = self.forget * self.gram + np.outer(v, v)
        self.moment = self.forget * self.moment + v * y
        self.count += 1

    def shrink(self, factor: float) -> None:
        """Forget faster once (after a detected change): the data so far count `factor` as much."""
        self.gram *= factor
        self.moment *= factor

    @property
    def coef(self) -> np.ndarray:
        return np.asarray(
            np.linalg.solve(self.gram + np.diag(self.ridge), self.moment + self.ridge * self.prior)
        )

    def predict(self, x: Sequence[float]) -> float:
        return float(self.coef @ np.asarray(x, dtype=np.float64))

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.gram.copy(), self.moment.copy()

    def load(self, gram: np.ndarray, moment: np.ndarray, weight: float) -> None:
        """Start from another fit's sums, scaled so they weigh at most `weight` observations."""
        scale = min(1.0, weight / max(float(gram[0, 0]), 1e-9))
        self.gram, self.moment = gram * scale, moment * scale


class LinkEstimator:
    """Round trip and uplink rate from per-block link times: t_link = RTT + bits / R.

    t_link is what a verdict took beyond the cloud's own time (verify + queue). A decayed ridge fit
    in kilobits; two large residuals of the same sign in a row (a rate or delay change, e.g. a
    Markov channel switching) make it forget most of the past at once, so it re-fits in a few rounds.
    """

    def __init__(self, rtt: float = 0.01, rate_bps: float = 1e7, forget: float = 0.8) -> None:
        self.fit = DecayedRidge((rtt, 1e3 / rate_bps), (0.02, 0.02), forget)
        self.noise = 0.005  # EWMA of |residual| (seconds)
        self._last_jump = 0  # sign of the previous large residual (0: none)
        self.changes = 0

    @property
    def count(self) -> int:
        return self.fit.count

    def update(self, bits: float, seconds: float) -> None:
        x = (1.0, bits / 1e3)
        resid = seconds - self.fit.predict(x)
        big = abs(resid) > 3.0 * self.noise + 1e-3
        sign = int(math.copysign(1, resid)) if big else 0
        if sign and sign == self._last_jump and self.count >= 2:
            self.fit.shrink(0.1)
            self.changes += 1
            sign = 0  # the next jump must be confirmed afresh
        self._last_jump = sign
        self.noise = 0.9 * self.noise + 0.1 * min(abs(resid), 10.0 * self.noise + 1e-3)
        self.fit.update(x, seconds)

    @property
    def rtt(self) -> float:
        return max(0.0, float(self.fit.coef[0]))

    @property
    def sec_per_bit(self) -> float:
        return max(1e-11, float(self.fit.coef[1]) / 1e3)  # never free: at most 100 Gbit/s

    def seconds(self, bits: float) -> float:
        return self.rtt + self.sec_per_bit * bits


class CostLine:
    """A cost c(n) = a + b·n in seconds (drafting or verifying a block of n drafts).

    The ridge prior follows the measured level: a = share·level, b = (1 − share)·level / n̄, so
    while every block has the same n the split between a and b is the prior's, and the fit still
    predicts the blocks seen.
    """

    def __init__(self, level: float, intercept_share: float, forget: float = 0.85) -> None:
        self.share = intercept_share
        self.level = level  # EWMA of block cost
        self.mean_n = 4.0  # EWMA of n
        self.fit = DecayedRidge((0.0, 0.0), (0.1, 0.1 * 16.0), forget)
        self._reprior()

    def _reprior(self) -> None:
        n = max(self.mean_n, 1.0)
        self.fit.prior = np.array([self.share * self.level, (1.0 - self.share) * self.level / n])

    def update(self, n: int, seconds: float) -> None:
        first = self.fit.count == 0
        self.level = seconds if first else 0.8 * self.level + 0.2 * seconds
        self.mean_n = float(n) if first else 0.8 * self.mean_n + 0.2 * n
        self._reprior()
        self.fit.update((1.0, float(n)), seconds)

    @property
    def coef(self) -> tuple[float, float]:
        a, b = self.fit.coef
        return max(0.0, float(a)), max(0.0, float(b))


@dataclass
class RejectionSnapshot:
    """What a RejectionModel carries to a client's next request (its prior)."""

    gram: np.ndarray
    moment: np.ndarray
    by_pos: np.ndarray  # [positions, 2] decayed (Σ residual, Σ weight)


class RejectionModel:
    """P(reject a position) ≈ μ₀ + μ₁·f + κ·δ, plus a residual by position in the chain.

    f = 1 − max q (how unsure the drafter was there) stands for the drafter–target mismatch; δ =
    d_TV(q, q̂) is the distortion of the codec the draft was sent with. The §7 bound is κ = 1;
    measured κ is lower (the target's tail overlaps the dropped mass), so κ is learned, starting
    from a prior and identified as the codec (hence δ) changes. Decayed, so it follows the text.
    """

    PRIOR = (0.15, 0.3, 0.6)

    def __init__(self, forget: float = 0.98, positions: int = 32) -> None:
        self.fit = DecayedRidge(self.PRIOR, (2.0, 2.0, 2.0), forget)
        self.forget = forget
        self.shrink = 6.0  # pseudo-observations of "no position effect" in each position's residual
        self.by_pos = np.zeros((positions, 2))
        self.observed = 0

    def update(self, position: int, rejected: bool, flat: float, distortion: float) -> None:
        x = (1.0, flat, distortion)
        j = min(position, self.by_pos.shape[0] - 1)
        self.by_pos[j] = self.forget * self.by_pos[j] + (float(rejected) - self.fit.predict(x), 1.0)
        self.fit.update(x, float(rejected))
        self.observed += 1

    @property
    def coef(self) -> tuple[float, float, float]:
        """(μ₀, μ₁, κ) with κ in [0, 1] (the triangle inequality's range)."""
        mu0, mu1, kappa = (float(v) for v in self.fit.coef)
        return mu0, mu1, min(1.0, max(0.0, kappa))

    def rejection(self, flat: float, distortion: float) -> float:
        mu0, mu1, kappa = self.coef
        return mu0 + mu1 * flat + kappa * distortion

    def profile(self, length: int, offset: int = 0) -> np.ndarray:
        """[length] residual rejection at chain positions offset .. offset+length−1 (shrunk to 0)."""
        j = np.minimum(np.arange(offset, offset + length), self.by_pos.shape[0] - 1)
        return np.asarray(self.by_pos[j, 0] / (self.by_pos[j, 1] + self.shrink))

    def snapshot(self) -> RejectionSnapshot:
        gram, moment = self.fit.state()
        return RejectionSnapshot(gram, moment, self.by_pos.copy())

    @classmethod
    def restore(cls, snap: RejectionSnapshot, weight: float = 24.0) -> RejectionModel:
        """A model starting from a snapshot, weighing at most `weight` positions (the text may differ)."""
        model = cls(positions=snap.by_pos.shape[0])
        model.fit.load(snap.gram, snap.moment, weight)
        total = float(snap.by_pos[:, 1].sum())
        model.by_pos = snap.by_pos * min(1.0, weight / max(total, 1e-9))
        return model
