"""Benchmark methods: a label per arm, and the request options (`draftlink` extension) it sends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CLOUD_ONLY = "cloud-only"
PIPELINED = "pipelined:"  # prefix: streamed rounds with the codec after it
ADAPTIVE = "adaptive"  # draft_len and codec chosen by the edge ("auto")
ADAPTIVE_PIPELINED = "adaptive-pipelined"


@dataclass(frozen=True)
class Method:
    """One arm of the grid: `cloud-only`, a codec spec, `pipelined:<codec>`, `adaptive[-pipelined]`."""

    label: str
    codec: str | None  # None: cloud-only or chosen by the edge
    pipeline: bool = False
    adaptive: bool = False

    @property
    def cloud_only(self) -> bool:
        return self.label == CLOUD_ONLY

    @property
    def static(self) -> bool:
        """A fixed codec and draft length (the arms adaptive is compared with)."""
        return self.codec is not None

    def options(self, draft_len: int) -> dict[str, Any]:
        """The request's `draftlink` object."""
        if self.cloud_only:
            return {"mode": "cloud-only"}
        if self.adaptive:
            return {"mode": "speculative", "codec": "auto", "draft_len": "auto", "pipeline": self.pipeline}
        return {"mode": "speculative", "codec": self.codec, "draft_len": draft_len, "pipeline": self.pipeline}


def parse_method(label: str) -> Method:
    """The arm a method label names (labels are what tables, CSV and CLI use)."""
    label = label.strip()
    if label == CLOUD_ONLY:
        return Method(label, None)
    if label in (ADAPTIVE, ADAPTIVE_PIPELINED):
        return Method(label, None, pipeline=label == ADAPTIVE_PIPELINED, adaptive=True)
    if label.startswith(PIPELINED):
        return Method(label, label[len(PIPELINED) :], pipeline=True)
    return Method(label, label)


def codec_of(label: str) -> str | None:
    """The fixed codec spec of a method label (None for cloud-only and adaptive arms)."""
    return parse_method(label).codec


def base_label(label: str) -> str:
    """`pipelined:ksqs:...` → `ksqs:...` (the serial arm a streamed one is compared with)."""
    m = parse_method(label)
    return m.codec if m.pipeline and m.codec else label
