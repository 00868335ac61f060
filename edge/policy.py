"""How each draft block is shaped (length, codec), decided before any of its drafts is sampled.

The session asks its policy for a plan before drafting every block, and reports what it observed
(draft time, bytes, verdicts) afterwards. Exactness rule (docs/ARCHITECTURE.md): a plan may depend
on the prefix, the drafter's distributions so far, timing and link state, never on a draft token
that has not been committed yet: plans are made before the block's drafts are drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from common.codec import Codec
from common.protocol import Verdict
from common.rounds import InFlight, SpecState


@dataclass(frozen=True)
class BlockPlan:
    """The shape of the next block."""

    want: int  # drafts wanted (SpecState.plan cuts it to the budget)
    codec: Codec  # compresses this block; its spec goes on the wire when it changes
    # Asked on the drafter thread after each draft of the block; True ends the block there. It
    # decides whether the NEXT position is drafted, so it may look at the drafts so far, never
    # at a draft it has not seen (the exactness rule).
    stop: Callable[[], bool] | None = None


class DraftPolicy(Protocol):
    """Chooses each block's shape; one object per generation (it may keep per-request estimates)."""

    @property
    def depth(self) -> int:
        """Streamed rounds: blocks of one chain in flight at most."""
        ...

    def plan_block(self, state: SpecState) -> BlockPlan:
        """Called before the block's first draft is sampled."""
        ...

    def observe_sent(self, block: InFlight, draft_seconds: float, wire_bytes: int) -> None:
        """A block was drafted in `draft_seconds` and written as `wire_bytes` bytes."""
        ...

    def observe_verdict(self, block: InFlight, verdict: Verdict, waited_seconds: float) -> None:
        """The verdict of `block` arrived `waited_seconds` after the block was written."""
        ...


class StaticPolicy:
    """The request's fixed draft length and codec (draft_len and codec given explicitly)."""

    def __init__(
        self, draft_len: int, codec: Codec, depth: int, after_verdict: Callable[[], None] | None = None
    ) -> None:
        self.draft_len = draft_len
        self.codec = codec
        self._depth = depth
        self._after_verdict = after_verdict  # e.g. keep the C-SQS threshold for the client's next request

    @property
    def depth(self) -> int:
        return self._depth

    def plan_block(self, state: SpecState) -> BlockPlan:
        return BlockPlan(self.draft_len, self.codec)

    def observe_sent(self, block: InFlight, draft_seconds: float, wire_bytes: int) -> None:
        return None

    def observe_verdict(self, block: InFlight, verdict: Verdict, waited_seconds: float) -> None:
        if self._after_verdict is not None:
            self._after_verdict()
