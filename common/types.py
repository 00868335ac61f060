"""Domain types shared by edge and cloud (wire-independent; common.rpc converts them)."""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field


class FinishReason(enum.Enum):
    """Why a generation ended (OpenAI's finish_reason strings as values)."""

    STOP = "stop"
    LENGTH = "length"


def float32(x: float) -> float:
    """x rounded to the nearest float32 (what the wire carries); non-finite or out-of-range x as is."""
    if not math.isfinite(x):
        return x
    try:
        value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:  # |x| beyond float32: left for validate() to reject
        return x
    return value


# vLLM's rule (_SAMPLING_EPS): a temperature below 1e-5 means greedy. Compared at float32 precision,
# so the edge (which holds the JSON float64) and the cloud (which reads the wire float32) agree.
GREEDY_BELOW = float32(1e-5)
# Any 0 < top_p <= max_x p(x) keeps only the most likely token, and max_x p(x) >= 1/V > 5.9e-8 for
# V <= 2**24; raising smaller values to this floor keeps them positive in float32 without changing
# the distribution (1e-300 would otherwise reach the cloud as 0, which the wire reads as "disabled").
TOP_P_FLOOR = float32(1e-8)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters of one generation, applied to the target and mirrored by the drafter.

    Construction normalises once, for both sides: temperature and top_p are stored at float32
    precision (the wire's), a temperature in [0, GREEDY_BELOW) becomes 0.0 (greedy), and a top_p in
    (0, TOP_P_FLOOR) becomes TOP_P_FLOOR. Out-of-range values are kept for validate() to reject.
    """

    temperature: float = 1.0  # 0 → greedy
    top_p: float = 1.0  # (0, 1]
    seed: int | None = None  # None → fresh entropy
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        temperature = float32(self.temperature)
        if 0.0 <= temperature < GREEDY_BELOW:  # -0.0 and denormals included
            temperature = 0.0
        top_p = self.top_p
        if 0.0 < top_p < TOP_P_FLOOR:
            top_p = TOP_P_FLOOR
        object.__setattr__(self, "temperature", temperature)  # frozen: set once, here
        object.__setattr__(self, "top_p", float32(top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise ValueError for values no sampler accepts."""
        if not (self.temperature >= 0.0) or self.temperature > 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.seed is not None and not (0 <= self.seed < 2**64):
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")
