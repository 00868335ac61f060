"""Exactness of adaptive block shaping, by exhaustive enumeration (|V| <= 4): per-block codec chosen
from the prefix, block length chosen after each draft from the drafts so far (the exactness rule),
chained blocks switching codec; and a negative control that decides after seeing the next draft."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pytest

from common.codec import Codec, Draft, make_codec
from tests.unit.test_exactness import (
    _assert_same,
    draft_outcomes,
    joint_of_first,
    make_model,
    round_dist,
    target_joint,
)

Dist = dict[tuple[int, ...], float]
SPECS = (
    "ksqs:k=1,ell=1",
    "ksqs:k=2,ell=3",
    "qs:ell=4",
    "csqs:alpha=0.2,eta=0.3,ell=5,beta1=0.3",
    "dense:fp16",
)
Stop = Callable[[list[Draft]], bool]


def codec_for(ctx: tuple[int, ...]) -> str:
    """A plan made from the prefix only (length and last token), like the controller's."""
    return SPECS[(len(ctx) + (ctx[-1] if ctx else 0)) % len(SPECS)]


def stop_on_doubt(drafts: list[Draft]) -> bool:
    """Stop after a draft whose q̂ gave it less than 0.6, or after 3 drafts (decides the NEXT position)."""
    return len(drafts) >= 3 or drafts[-1].prob(drafts[-1].token) < 0.6


def adaptive_round(
    p_model: Callable[[tuple[int, ...]], np.ndarray],
    q_model: Callable[[tuple[int, ...]], np.ndarray],
    vocab: int,
    ctx: tuple[int, ...],
    stop: Stop,
    peek: bool = False,
    plan: Callable[[tuple[int, ...]], str] = codec_for,
) -> Dist:
    """One serial round from ctx: codec from the prefix, drafts until stop(drafts), verify (+ bonus).

    peek=True is the forbidden variant: a drawn draft is kept only if stop() on the block with it
    says so, i.e. whether a position is sent depends on the token drawn there.
    """
    spec = plan(ctx)
    edge, cloud = make_codec(spec, vocab), make_codec(spec, vocab)
    out: Dist = defaultdict(float)

    def finish(drafts: list[Draft], weight: float) -> None:
        wire = cloud.decode(edge.encode(drafts))
        rows = [p_model((*ctx, *(d.token for d in drafts[:n]))) for n in range(len(drafts) + 1)]
        for seq, w in round_dist(wire, np.stack(rows)).items():
            out[seq] += weight * w

    def rec(codec: Codec, drafts: list[Draft], weight: float) -> None:
        q = q_model((*ctx, *(d.token for d in drafts)))
        after = copy.deepcopy(codec)
        after.compress(q, np.random.default_rng(1))  # state after this token (token-independent)
        for w, d in draft_outcomes(codec, q):
            block = [*drafts, d]
            if peek and drafts and stop(block):
                finish(drafts, weight * w)  # the drawn draft is dropped: decided after drawing it
            elif stop(block):
                finish(block, weight * w)
            else:
                rec(after, block, weight * w)

    rec(edge, [], 1.0)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_prefix_planned_codec_and_draft_dependent_length_are_exact(seed: int) -> None:
    vocab = 3
    p_model, q_model = make_model(vocab, 30 + seed, 1.3), make_model(vocab, 40 + seed, 2.2)

    def cont(ctx: tuple[int, ...]) -> Dist:
        return adaptive_round(p_model, q_model, vocab, ctx, stop_on_doubt)

    first = cont(())
    assert len({len(s) for s in first}) >= 3  # blocks of several lengths occurred
    _assert_same(joint_of_first(3, first, cont), target_joint(p_model, vocab, 3))


def test_deciding_after_the_draw_is_biased() -> None:
    """Negative control: keeping a position's draft only when its own token pleases the rule."""
    vocab = 3
    p_model, q_model = make_model(vocab, 31, 1.3), make_model(vocab, 41, 0.5)

    def peeking(drafts: list[Draft]) -> bool:
        return len(drafts) >= 3 or drafts[-1].token != 2

    def cont(
        ctx: tuple[int, ...],
    ) -> Dist:  # a codec that draws at random (a one-hot q̂ has nothing to peek at)
        return adaptive_round(p_model, q_model, vocab, ctx, peeking, peek=True, plan=lambda _: "qs:ell=4")

    got = joint_of_first(3, cont(()), cont)
    want = target_joint(p_model, vocab, 3)
    assert max(abs(got.get(k, 0.0) - want[k]) for k in want) > 1e-3


def switching_chain(
    p_model: Callable[[tuple[int, ...]], np.ndarray],
    q_model: Callable[[tuple[int, ...]], np.ndarray],
    vocab: int,
    specs: tuple[str, str],
    lens: tuple[int, int],
) -> Dist:
    """Two chained blocks with different codecs, both drafted before A's verdict (B void if A rejects)."""
    (sa, sb), (la, lb) = specs, lens
    out: Dist = defaultdict(float)
    edges = [make_codec(s, vocab) for s in specs]
    clouds = [make_codec(s, vocab) for s in specs]

    def rows(drafts: list[Draft], lo: int, hi: int) -> np.ndarray:
        return np.stack([p_model(tuple(d.token for d in drafts[:n])) for n in range(lo, hi + 1)])

    def verify(drafts: list[Draft], weight: float) -> None:
        wa = clouds[0].decode(edges[0].encode(drafts[:la]))
        wb = clouds[1].decode(edges[1].encode(drafts[la:]))
        for seq_a, pa in round_dist(wa, rows(drafts, 0, la), bonus=False).items():
            if len(seq_a) < la or seq_a != tuple(d.token for d in drafts[:la]):
                out[seq_a] += weight * pa  # A ended the chain: B (the other codec) is void
                continue
            for seq_b, pb in round_dist(wb, rows(drafts, la, la + lb)).items():
                out[(*seq_a, *seq_b)] += weight * pa * pb

    def rec(codecs: list[Codec], drafts: list[Draft], weight: float) -> None:
        if len(drafts) == la + lb:
            verify(drafts, weight)
            return
        i = 0 if len(drafts) < la else 1
        q = q_model(tuple(d.token for d in drafts))
        after = copy.deepcopy(codecs)
        after[i].compress(q, np.random.default_rng(1))
        for w, d in draft_outcomes(codecs[i], q):
            rec(after, [*drafts, d], weight * w)

    assert sa != sb
    rec(edges, [], 1.0)
    return out


@pytest.mark.parametrize(
    "specs", [("ksqs:k=1,ell=1", "dense:fp32"), ("qs:ell=4", "ksqs:k=2,ell=3"), ("dense:fp16", "qs:ell=5")]
)
def test_chained_blocks_switching_codec_are_exact(specs: tuple[str, str]) -> None:
    vocab = 3
    p_model, q_model = make_model(vocab, 51, 1.3), make_model(vocab, 52, 2.2)
    dist = switching_chain(p_model, q_model, vocab, specs, (1, 2))
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-12)

    def cont(ctx: tuple[int, ...]) -> Dist:
        return adaptive_round(p_model, q_model, vocab, ctx, stop_on_doubt)

    _assert_same(joint_of_first(3, dist, cont), target_joint(p_model, vocab, 3))
