"""Pure round-loop logic of one speculative generation: plan a round, apply a verdict, keep stats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class ProtocolViolationError(Exception):
    """The cloud answered something the protocol does not allow (wrong round, too many accepted)."""


def plan_draft_len(draft_len: int, remaining: int) -> int:
    """Drafts to send this round: L = min(draft_len, remaining − 1), never negative.

    A round yields accepted + 1 tokens, so with `remaining` tokens left at most remaining − 1
    drafts can be useful; with one token left the block is empty and the cloud samples it alone.
    """
    return max(0, min(draft_len, remaining - 1))


@dataclass(frozen=True)
class VerdictView:
    """The fields of a Verdict the edge needs (wire-independent)."""

    round: int
    accepted: int
    next_token: int | None
    finished: bool
    finish_reason: str | None  # "stop" | "length" | None
    resampled: bool
    verify_seconds: float


def check_verdict(v: VerdictView, expected_round: int, num_drafts: int) -> None:
    """Raise ProtocolViolationError when a verdict cannot belong to the block just sent."""
    if v.round != expected_round:
        raise ProtocolViolationError(f"verdict for round {v.round}, expected {expected_round}")
    if not 0 <= v.accepted <= num_drafts:
        raise ProtocolViolationError(f"accepted {v.accepted} of {num_drafts} drafts")
    if v.next_token is None and not v.finished:
        raise ProtocolViolationError("verdict without next_token must finish the generation")
    if v.resampled and v.next_token is None:
        raise ProtocolViolationError("resampled verdict without a next_token")


def round_tokens(drafts: Sequence[int], v: VerdictView) -> list[int]:
    """Output tokens of one round: the accepted drafts, then next_token when present."""
    out = list(drafts[: v.accepted])
    if v.next_token is not None:
        out.append(v.next_token)
    return out


def valid_cache_len(cached: int, context_len: int, accepted: int) -> int:
    """Drafter KV-cache length still valid after a verdict.

    The cache holds context + drafts[:-1] (the last draft is never fed); the new context is
    context + drafts[:accepted] + [next]. Their common prefix is min(cached, context + accepted).
    """
    return min(cached, context_len + accepted)


@dataclass
class SpecStats:
    """Per-request speculative-decoding counters (method.md §9 definitions)."""

    rounds: int = 0  # verification rounds (DraftBlock → Verdict), including empty blocks
    num_drafts: int = 0  # rounds that carried at least one draft
    num_draft_tokens: int = 0
    num_accepted: int = 0
    num_resampled: int = 0  # rounds that ended in a residual draw
    accepted_per_pos: list[int] = field(default_factory=list)  # [max L] accepted count by position
    uplink_bytes: int = 0  # serialized request messages (prompt, blocks, close)
    downlink_bytes: int = 0  # serialized response messages
    payload_bytes: int = 0  # codec payload bytes inside DraftBlocks
    verify_seconds: float = 0.0
    draft_seconds: float = 0.0

    def record_round(self, num_drafts: int, v: VerdictView, payload_bytes: int) -> None:
        """Account one verified round (after check_verdict)."""
        self.rounds += 1
        self.payload_bytes += payload_bytes
        self.verify_seconds += v.verify_seconds
        if num_drafts == 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted += v.accepted
        self.num_resampled += int(v.resampled)
        if len(self.accepted_per_pos) < num_drafts:
            self.accepted_per_pos.extend([0] * (num_drafts - len(self.accepted_per_pos)))
        for pos in range(v.accepted):
            self.accepted_per_pos[pos] += 1

    @property
    def verified_positions(self) -> int:
        """Draft positions the verifier actually tested: accepted ones plus each rejection."""
        return self.num_accepted + self.num_resampled

    def summary(self) -> dict[str, Any]:
        """`metrics.speculative_decoding` of a response (vLLM field names + draftlink extras)."""
        drafted, rounds = self.num_draft_tokens, self.rounds
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": drafted,
            "num_accepted_draft_tokens": self.num_accepted,
            "draft_acceptance_rate": _ratio(self.num_accepted, drafted),
            "mean_acceptance_length": (1.0 + self.num_accepted / rounds) if rounds else None,
            "num_accepted_tokens_per_pos": list(self.accepted_per_pos),
            "rounds": rounds,
            "resampling_rate": _ratio(self.num_resampled, self.verified_positions),
            "uplink_bytes": self.uplink_bytes,
            "downlink_bytes": self.downlink_bytes,
            "bits_per_draft_token": _ratio(8 * self.payload_bytes, drafted),
            "verify_seconds": round(self.verify_seconds, 6),
            "draft_seconds": round(self.draft_seconds, 6),
        }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None
