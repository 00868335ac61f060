"""The round core (common.rounds): plan and seal blocks, apply verdicts, chains, voids, resume, stats."""

from __future__ import annotations

import numpy as np
import pytest

from common.codec import Draft
from common.protocol import Verdict
from common.rounds import ProtocolViolationError, SpecState, SpecStats, synced_prefix, truncate_output
from common.types import FinishReason, SamplingParams

PROMPT = [5, 6, 7]


def state(max_new: int = 20, stops: tuple[int, ...] = ()) -> SpecState:
    return SpecState(
        PROMPT, SamplingParams(temperature=1.0, seed=1, max_new_tokens=max_new, stop_token_ids=stops)
    )


def drafts(*tokens: int) -> list[Draft]:
    return [Draft(t, np.array([t]), np.array([4]), 4) for t in tokens]


def verdict(rnd: int, accepted: int, nxt: int | None, **kw: object) -> Verdict:
    return Verdict(round=rnd, accepted=accepted, next_token=nxt, **kw)  # type: ignore[arg-type]


def test_unseeded_params_are_refused() -> None:
    with pytest.raises(ValueError, match="seeded"):
        SpecState(PROMPT, SamplingParams())


@pytest.mark.parametrize(
    ("budget", "chained", "want"), [(10, False, 4), (3, False, 2), (1, False, 0), (3, True, 3)]
)
def test_plan_leaves_room_for_the_bonus_only_when_serial(budget: int, chained: bool, want: int) -> None:
    assert state(max_new=budget).plan(4, chained) == want


def test_serial_round_emits_accepted_prefix_then_next() -> None:
    s = state()
    block = s.seal(drafts(1, 2, 3), b"xyz", "ksqs:k=1,ell=4", more=False)
    assert (block.round, block.chain, block.start) == (0, 0, len(PROMPT))
    waiting = s.draftable
    assert not waiting  # serial: one block in flight
    applied = s.apply(verdict(0, 2, 9, resampled=True))
    assert applied.tokens == [1, 2, 9]
    assert applied.chain_ended
    assert not applied.finished
    assert s.output == [1, 2, 9]
    assert s.chain == 1
    assert s.draftable
    assert s.context() == [*PROMPT, 1, 2, 9]


def test_chain_continues_after_full_acceptance_and_voids_after_a_rejection() -> None:
    s = state()
    a = s.seal(drafts(1, 2), b"a", "c", more=True)
    b = s.seal(drafts(3, 4), b"b", "c", more=True)
    c = s.seal(drafts(5), b"c", "c", more=True)
    assert [x.start for x in (a, b, c)] == [3, 5, 7]
    assert s.context() == [*PROMPT, 1, 2, 3, 4, 5]
    assert s.position == 8
    assert s.drafted_ahead == 5
    got = s.apply(verdict(0, 2, None))  # A fully accepted, no bonus: B continues it
    assert got.tokens == [1, 2]
    assert not got.chain_ended
    got = s.apply(verdict(1, 0, 8, resampled=True))  # B rejected at its first draft
    assert got.tokens == [8]
    assert (got.chain_ended, got.void_blocks, got.void_drafts) == (True, 1, 1)  # C is void
    assert s.output == [1, 2, 8]
    assert not s.inflight
    assert s.chain == 1
    assert s.stats.void_blocks == 1
    assert s.stats.void_draft_tokens == 1
    assert s.stats.blocks_streamed == 3
    assert s.stats.sent_draft_tokens == 5


def test_finish_drops_everything_in_flight() -> None:
    s = state(stops=(2,))
    s.seal(drafts(1, 2), b"a", "c", more=True)
    s.seal(drafts(3), b"b", "c", more=True)
    got = s.apply(verdict(0, 2, None, finished=True, finish_reason=FinishReason.STOP))
    assert got.finished
    assert got.finish_reason is FinishReason.STOP
    assert s.finished
    assert not s.inflight
    assert not s.draftable


def test_last_budgeted_draft_cannot_declare_more() -> None:
    s = state(max_new=3)
    assert s.plan(8, chained=True) == 3
    block = s.seal(drafts(1, 2, 3), b"a", "c", more=True)
    assert not block.more
    assert not s.draftable


@pytest.mark.parametrize(
    "bad",
    [
        verdict(1, 0, 7),  # wrong round
        verdict(0, 3, 7),  # more accepted than drafted
        verdict(0, 2, None),  # no next token, not finished, block did not declare more
        verdict(0, 1, None),  # continuation needs every draft accepted
        verdict(0, 1, None, finished=True, resampled=True),  # resampled without a token
    ],
)
def test_protocol_violations(bad: Verdict) -> None:
    s = state()
    s.seal(drafts(1, 2), b"a", "c", more=False)
    with pytest.raises(ProtocolViolationError):
        s.apply(bad)


def test_verdict_without_a_block_is_a_violation() -> None:
    with pytest.raises(ProtocolViolationError, match="no block in flight"):
        state().apply(verdict(0, 0, 1))


def test_reopen_renumbers_the_open_chain_for_a_new_session() -> None:
    s = state()
    s.seal(drafts(1), b"a", "c", more=False)
    s.apply(verdict(0, 0, 4))  # output [4], chain 1
    s.seal(drafts(2, 3), b"b", "c", more=True)
    s.seal(drafts(6), b"c", "c", more=True)
    again = s.reopen()
    assert [(b.round, b.chain, b.payload) for b in again] == [(0, 0, b"b"), (1, 0, b"c")]
    assert s.next_round == 2
    assert s.chain == 0
    assert s.stats.resumes == 1
    assert s.output == [4]  # what the new session is opened with (resume tokens)
    assert s.apply(verdict(0, 2, None)).tokens == [2, 3]


def test_spec_stats_summary_follows_method_definitions() -> None:
    s = SpecStats()
    s.record_verdict(4, verdict(0, 4, 9), 0, 0)  # all accepted + bonus
    s.record_verdict(4, verdict(1, 1, 9, resampled=True), 0, 0)  # rejected at pos 1
    s.record_verdict(0, verdict(2, 0, 9), 0, 0)  # empty block (last token)
    out = s.summary()
    assert (out["rounds"], out["num_drafts"], out["num_draft_tokens"]) == (3, 2, 8)
    assert out["num_accepted_draft_tokens"] == 5
    assert out["draft_acceptance_rate"] == pytest.approx(5 / 8)
    assert out["mean_acceptance_length"] == pytest.approx(1 + 5 / 3)
    assert out["num_accepted_tokens_per_pos"] == [2, 1, 1, 1]
    assert out["resampling_rate"] == pytest.approx(1 / 6)  # 1 resample over 5 accepted + 1 rejected


def test_spec_stats_empty_has_null_ratios() -> None:
    out = SpecStats().summary()
    assert out["draft_acceptance_rate"] is None
    assert out["mean_acceptance_length"] is None
    assert out["bits_per_draft_token"] is None


@pytest.mark.parametrize(
    ("held", "ctx", "want"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4, 5], 4),  # cache is a prefix: keep all
        ([1, 2, 3, 4], [1, 2, 9], 2),  # rejection at the 3rd token
        ([1, 2, 3], [1, 2, 3], 2),  # leave one token to feed for fresh logits
        ([], [1], 0),
    ],
)
def test_synced_prefix(held: list[int], ctx: list[int], want: int) -> None:
    assert synced_prefix(held, ctx) == want


@pytest.mark.parametrize(
    ("output", "generated", "max_new", "stops", "want"),
    [
        ([1, 2, 3], 0, 10, (), (3, None)),
        ([1, 2, 3], 0, 10, (2,), (2, FinishReason.STOP)),
        ([1, 2, 3], 8, 10, (), (2, FinishReason.LENGTH)),
        ([5], 0, 1, (), (1, FinishReason.LENGTH)),
    ],
)
def test_truncate_output(
    output: list[int], generated: int, max_new: int, stops: tuple[int, ...], want: tuple[int, object]
) -> None:
    params = SamplingParams(max_new_tokens=max_new, stop_token_ids=stops)
    assert truncate_output(output, generated, params) == want
