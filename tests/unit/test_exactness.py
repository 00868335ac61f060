"""Exactness of compress-then-verify, by exhaustive enumeration of every random branch (|V| <= 8)."""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Callable
from typing import cast

import numpy as np
import pytest

from common.codec import Codec, Draft, make_codec
from common.sampling import verify

pytestmark = pytest.mark.usefixtures("bigint_backend")  # the wire round trip under both backends

SPECS = [
    "dense:fp32",
    "dense:fp16",
    "qs:ell=7",
    "ksqs:k=2,ell=5",
    "ksqs:k=3,ell=8",
    "csqs:alpha=0.1,eta=0.05,ell=6",
    "csqs:alpha=0.1,eta=0.05,ell=6,beta1=0.25",
    "csqs:alpha=0.1,eta=0.05,ell=9,kmax=2,beta1=0.05",
]
TOL = 1e-12


class ScriptedRng:
    """Stands in for np.random.Generator: returns scripted values, fails loudly if over-consumed."""

    def __init__(self, randoms: list[float] | None = None, integers: list[int] | None = None) -> None:
        self.randoms = list(randoms or [])
        self.ints = list(integers or [])

    def random(self) -> float:
        return self.randoms.pop(0)

    def integers(self, low: int, high: int) -> int:
        value = self.ints.pop(0)
        assert low <= value < high
        return value


EPS = 1e-9  # relative offset used to probe both ends of every decision interval


def scripted(randoms: list[float] | None = None, integers: list[int] | None = None) -> np.random.Generator:
    """A ScriptedRng typed as the Generator it stands in for."""
    return cast(np.random.Generator, ScriptedRng(randoms, integers))


def _intervals(w: np.ndarray) -> list[tuple[int, float, list[float]]]:
    """(index, normalised weight, probe u's: both ends and the middle of its inverse-CDF interval)."""
    nz = np.flatnonzero(w > 0)
    cum = np.cumsum(w[nz]) / w[nz].sum()
    lo = np.concatenate(([0.0], cum[:-1]))
    out = []
    for i, a, b in zip(nz, lo, cum, strict=True):
        probes = [a + (b - a) * EPS, (a + b) / 2, b - (b - a) * EPS]
        out.append((int(i), float(b - a), [u for u in probes if u < 1.0]))
    return out


def draft_outcomes(codec: Codec, q: np.ndarray) -> list[tuple[float, Draft]]:
    """Every (probability, draft) compress(q) can return; weights come from the RNG script."""
    probe = copy.deepcopy(codec).compress(q, np.random.default_rng(0))
    out: list[tuple[float, Draft]] = []
    if probe.is_lattice:  # token = f(u), u uniform on {0..ℓ-1}: enumerate u
        for u in range(probe.ell):
            out.append((1.0 / probe.ell, copy.deepcopy(codec).compress(q, scripted(integers=[u]))))
    else:  # dense: inverse CDF of a float: one u per token interval, weight = q̂(token)
        assert probe.probs is not None
        for tok, weight, probes in _intervals(probe.probs):
            for r in probes:  # the whole interval maps to tok
                d = copy.deepcopy(codec).compress(q, scripted(randoms=[r]))
                assert d.token == tok
            out.append((weight, d))
    return out


def accept_prob(d: Draft, p: np.ndarray) -> float:
    """P(r·b < ℓ·p(x)) = min(1, p(x)/q̂(x)) for r ~ U[0, 1)."""
    x = d.token
    if d.is_lattice:
        b = d.count(x)
        return 1.0 if b == 0 else min(1.0, d.ell * float(p[x]) / b)
    return min(1.0, float(p[x]) / d.prob(x))


def _accept_probes(a: float) -> tuple[list[float], list[float]]:
    """r values that must accept (r < a) and must reject (r >= a), hugging the boundary a."""
    acc = [r for r in (0.0, a / 2, a * (1 - EPS)) if r < a]
    rej = [r for r in (a * (1 + EPS), (a + 1) / 2, 1 - EPS) if a <= r < 1.0]
    return acc, rej


def round_dist(drafts: list[Draft], target: np.ndarray, bonus: bool = True) -> dict[tuple[int, ...], float]:
    """Distribution of one round's output tokens, driving the real verify() down every branch.

    Branch weights are computed analytically (accept w.p. min(1, p/q̂), residual norm((p-q̂)+),
    bonus p_{L+1}); verify() is run with scripted uniforms at both ends of every branch's interval,
    so its decision regions must coincide with the analytic ones. With bonus=False (a continuation
    follows the block) a fully accepted block ends with no extra token: its outcome has exactly
    len(drafts) tokens, while every other outcome ends in a resampled token.
    """
    out: dict[tuple[int, ...], float] = defaultdict(float)
    vocab = target.shape[1]

    def check(path: list[list[float]], expect: tuple[int, int | None]) -> None:
        for i, probes in enumerate(path):  # vary one draw at a time over its probes
            for u in probes:
                script = [p[len(p) // 2] if j != i else u for j, p in enumerate(path)]
                assert verify(drafts, target, scripted(randoms=script), bonus=bonus) == expect

    def rec(n: int, path: list[list[float]], tokens: tuple[int, ...], weight: float) -> None:
        if n == len(drafts) and not bonus:  # all accepted, the chain continues: no bonus draw
            check(path, (n, None))
            out[tokens] += weight
            return
        if n == len(drafts):  # all accepted: bonus from p_{L+1}
            for j, pj, probes in _intervals(target[n]):
                check([*path, probes], (n, j))
                out[(*tokens, j)] += weight * pj
            return
        d, p = drafts[n], target[n]
        a = accept_prob(d, p)
        acc, rej = _accept_probes(a)
        if a > 0.0:
            rec(n + 1, [*path, acc], (*tokens, d.token), weight * a)
        if a < 1.0:
            res = np.maximum(p - d.dense(vocab), 0.0)
            res = res if res.sum() > 0 else p
            for j, rj, probes in _intervals(res):
                check([*path, rej, probes], (n, j))
                out[(*tokens, j)] += weight * (1 - a) * rj

    rec(0, [], (), 1.0)
    return out


Model = Callable[[tuple[int, ...]], np.ndarray]


def make_model(vocab: int, seed: int, peaked: float) -> Model:
    """A deterministic 'language model': context tuple -> distribution over the vocabulary."""
    cache: dict[tuple[int, ...], np.ndarray] = {}

    def model(ctx: tuple[int, ...]) -> np.ndarray:
        if ctx not in cache:
            rng = np.random.default_rng([seed, len(ctx), *ctx])
            z = rng.standard_normal(vocab) * peaked
            z[rng.integers(vocab)] = -np.inf if rng.random() < 0.3 else z[0]  # some zero-prob tokens
            e = np.exp(z - z.max())
            cache[ctx] = e / e.sum()
        return cache[ctx]

    return model


def speculate_dist(
    spec: str, p_model: Model, q_model: Model, vocab: int, draft_len: int, ctx: tuple[int, ...] = ()
) -> dict[tuple[int, ...], float]:
    """Distribution of one speculative round from ctx: draft L tokens (token-dependent q), verify."""
    edge, cloud = make_codec(spec, vocab), make_codec(spec, vocab)
    out: dict[tuple[int, ...], float] = defaultdict(float)

    def rec(codec: Codec, drafts: list[Draft], weight: float) -> None:
        cur = (*ctx, *(d.token for d in drafts))
        if len(drafts) == draft_len:
            wire = cloud.decode(edge.encode(drafts))  # verify what the cloud actually sees
            rows = [p_model((*ctx, *(d.token for d in drafts[:n]))) for n in range(draft_len + 1)]
            for seq, w in round_dist(wire, np.stack(rows)).items():
                out[seq] += weight * w
            return
        q = q_model(cur)
        after = copy.deepcopy(codec)
        after.compress(q, np.random.default_rng(1))  # state after this token (token-independent)
        for w, d in draft_outcomes(codec, q):
            rec(after, [*drafts, d], weight * w)

    rec(edge, [], 1.0)
    return out


def first_token(dist: dict[tuple[int, ...], float], vocab: int) -> np.ndarray:
    marg = np.zeros(vocab)
    for seq, w in dist.items():
        marg[seq[0]] += w
    return marg


@pytest.mark.parametrize("spec", SPECS)
def test_single_position_is_exact(spec: str) -> None:
    for seed in range(3):
        vocab = 5 + seed
        p_model, q_model = make_model(vocab, seed, 1.5), make_model(vocab, 100 + seed, 2.5)
        dist = speculate_dist(spec, p_model, q_model, vocab, draft_len=1)
        assert sum(dist.values()) == pytest.approx(1.0, abs=TOL)
        np.testing.assert_allclose(first_token(dist, vocab), p_model(()), rtol=0, atol=TOL)


@pytest.mark.parametrize("spec", SPECS)
def test_two_drafts_first_token_and_joint_are_exact(spec: str) -> None:
    vocab = 4
    p_model, q_model = make_model(vocab, 7, 1.2), make_model(vocab, 8, 2.0)
    dist = speculate_dist(spec, p_model, q_model, vocab, draft_len=2)
    np.testing.assert_allclose(first_token(dist, vocab), p_model(()), rtol=0, atol=TOL)
    # Joint of the first two output tokens: a round that ends after one token continues with a
    # fresh round from that context, whose first token must follow p(· | x).
    joint = np.zeros((vocab, vocab))
    for seq, w in dist.items():
        if len(seq) >= 2:
            joint[seq[0], seq[1]] += w
        else:
            nxt = first_token(speculate_dist(spec, p_model, q_model, vocab, 2, seq), vocab)
            joint[seq[0]] += w * nxt
    want = np.array([p_model(())[x] * p_model((x,)) for x in range(vocab)])
    np.testing.assert_allclose(joint, want, rtol=0, atol=TOL)


def test_later_rounds_with_evolved_csqs_state_are_exact() -> None:
    spec = "csqs:alpha=0.05,eta=0.3,ell=5,beta1=0.3"
    vocab = 6
    p_model, q_model = make_model(vocab, 11, 1.0), make_model(vocab, 12, 3.0)
    codec = make_codec(spec, vocab)
    for t in range(5):  # drive β through several values, checking exactness at each
        q, p = q_model((t,)), p_model((t,))
        dist: dict[int, float] = defaultdict(float)
        for w, d in draft_outcomes(codec, q):
            for seq, v in round_dist([d], np.stack([p, p])).items():
                dist[seq[0]] += w * v
        np.testing.assert_allclose([dist[x] for x in range(vocab)], p, rtol=0, atol=TOL)
        codec.compress(q, np.random.default_rng(t))


@pytest.mark.parametrize("spec", ["qs:ell=4", "ksqs:k=3,ell=6", "csqs:alpha=0.1,eta=0.05,ell=6,beta1=0.25"])
def test_sample_then_quantize_is_not_exact(spec: str) -> None:
    """Negative control: x̃ drawn from the dense q while q̂ is sent -> the output is biased."""
    vocab = 5
    p_model, q_model = make_model(vocab, 3, 1.0), make_model(vocab, 4, 2.0)
    p, q = p_model(()), q_model(())
    base = make_codec(spec, vocab).compress(q, np.random.default_rng(0))
    marg = np.zeros(vocab)
    for x in range(vocab):  # token from q, not from q̂
        d = dataclasses.replace(base, token=x)
        for seq, w in round_dist([d], np.stack([p, p])).items():
            marg[seq[0]] += q[x] * w
    assert np.abs(marg - p).max() > 1e-3


def test_worked_example_method_md_section_2() -> None:
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.45, 0.35, 0.2])
    codec = make_codec("qs:ell=4", 3)
    draft = codec.compress(q, np.random.default_rng(0))
    assert draft.counts is not None
    assert draft.counts.tolist() == [2, 1, 1]  # q̂ = (0.5, 0.25, 0.25)
    target = np.stack([p, p])
    qts = np.zeros(3)  # quantize-then-sample
    resampled = 0.0
    for w, d in draft_outcomes(codec, q):
        for seq, v in round_dist([d], target).items():
            qts[seq[0]] += w * v
        resampled += w * (1 - accept_prob(d, p))
    np.testing.assert_allclose(qts, p, rtol=0, atol=TOL)
    assert resampled == pytest.approx(0.05, abs=TOL)
    stq = np.zeros(3)  # sample-then-quantize
    for x in range(3):
        for seq, v in round_dist([dataclasses.replace(draft, token=x)], target).items():
            stq[seq[0]] += q[x] * v
    np.testing.assert_allclose(stq, [0.45, 0.39, 0.16], rtol=0, atol=TOL)


@pytest.mark.parametrize("spec", SPECS)
def test_greedy_reproduces_argmax(spec: str) -> None:
    """One-hot p and q̂ (T = 0): the output is exactly the target's argmax, token for token."""
    vocab = 8
    rng = np.random.default_rng(5)
    for _ in range(40):
        draft_len = int(rng.integers(0, 4))
        q_arg = rng.integers(0, vocab, draft_len)
        p_arg = np.where(rng.random(draft_len + 1) < 0.7, np.append(q_arg, 0), rng.integers(0, vocab))
        codec = make_codec(spec, vocab)
        drafts = [codec.compress(np.eye(vocab)[a], rng) for a in q_arg]
        assert [d.token for d in drafts] == q_arg.tolist()
        target = np.eye(vocab)[p_arg]  # [L+1, V]
        accepted, nxt = verify(drafts, target, rng)
        mism = np.flatnonzero(q_arg != p_arg[:draft_len])
        want = int(mism[0]) if mism.size else draft_len
        assert (accepted, nxt) == (want, int(p_arg[want]))


# ── streamed drafts: two chained blocks (continuation after full acceptance, void after rejection) ──


def chain_dist(
    spec: str,
    p_model: Model,
    q_model: Model,
    vocab: int,
    lens: tuple[int, int],
    ctx: tuple[int, ...] = (),
) -> dict[tuple[int, ...], float]:
    """Output distribution of two chained blocks A (`more`) and B, both drafted before A's verdict.

    The cloud verifies A without a bonus token (bonus=False); if every draft of A is accepted it
    verifies B as A's continuation (bonus at B's end), otherwise A's verdict carries the resampled
    token and B is void (dropped): the output then ends with that token.
    """
    l1, l2 = lens
    edge, cloud = make_codec(spec, vocab), make_codec(spec, vocab)
    out: dict[tuple[int, ...], float] = defaultdict(float)

    def rows(drafts: list[Draft], lo: int, hi: int) -> np.ndarray:
        return np.stack([p_model((*ctx, *(d.token for d in drafts[:n]))) for n in range(lo, hi + 1)])

    def verify_chain(drafts: list[Draft], weight: float) -> None:
        wire = cloud.decode(edge.encode(drafts[:l1])) + cloud.decode(edge.encode(drafts[l1:]))
        for seq_a, wa in round_dist(wire[:l1], rows(drafts, 0, l1), bonus=False).items():
            if len(seq_a) < l1 or seq_a != tuple(d.token for d in drafts[:l1]):
                out[seq_a] += weight * wa  # A ended the chain (resampled token): B is void
                continue
            for seq_b, wb in round_dist(wire[l1:], rows(drafts, l1, l1 + l2)).items():
                out[(*seq_a, *seq_b)] += weight * wa * wb

    def rec(codec: Codec, drafts: list[Draft], weight: float) -> None:
        if len(drafts) == l1 + l2:
            verify_chain(drafts, weight)
            return
        q = q_model((*ctx, *(d.token for d in drafts)))
        after = copy.deepcopy(codec)
        after.compress(q, np.random.default_rng(1))  # state after this token (token-independent)
        for w, d in draft_outcomes(codec, q):
            rec(after, [*drafts, d], weight * w)

    rec(edge, [], 1.0)
    return out


def joint_of_first(
    n: int,
    dist: dict[tuple[int, ...], float],
    cont: Callable[[tuple[int, ...]], dict[tuple[int, ...], float]],
    prefix: tuple[int, ...] = (),
) -> dict[tuple[int, ...], float]:
    """P(first n output tokens); an outcome shorter than n continues with a fresh round from there.

    `dist` is the distribution of what follows `prefix`; cont(context) gives a fresh round's.
    """
    out: dict[tuple[int, ...], float] = defaultdict(float)
    for seq, w in dist.items():
        if len(seq) >= n:
            out[seq[:n]] += w
            continue
        here = (*prefix, *seq)
        for rest, v in joint_of_first(n - len(seq), cont(here), cont, here).items():
            out[(*seq, *rest)] += w * v
    return out


def target_joint(p_model: Model, vocab: int, n: int) -> dict[tuple[int, ...], float]:
    """P(x_1..x_n) under the target alone."""
    out: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(n):
        out = {(*s, x): w * float(p_model(s)[x]) for s, w in out.items() for x in range(vocab)}
    return out


def _assert_same(got: dict[tuple[int, ...], float], want: dict[tuple[int, ...], float]) -> None:
    keys = set(got) | set(want)
    err = max(abs(got.get(k, 0.0) - want.get(k, 0.0)) for k in keys)
    assert err <= TOL, f"max abs error {err:.3e}"


@pytest.mark.parametrize(
    "spec", ["dense:fp32", "qs:ell=5", "ksqs:k=2,ell=4", "csqs:alpha=0.1,eta=0.05,ell=5"]
)
@pytest.mark.parametrize("lens", [(1, 1), (1, 2), (2, 1)])
def test_two_chained_blocks_are_exact(spec: str, lens: tuple[int, int]) -> None:
    """Joint of the first three output tokens equals the target's, whether B continued A or went void."""
    vocab = 3
    p_model, q_model = make_model(vocab, 21, 1.3), make_model(vocab, 22, 2.2)
    dist = chain_dist(spec, p_model, q_model, vocab, lens)
    assert sum(dist.values()) == pytest.approx(1.0, abs=TOL)
    lengths = {len(s) for s in dist}
    assert sum(lens) + 1 in lengths  # B continued A and ended in its bonus token
    assert any(n <= lens[0] for n in lengths)  # A was rejected: B void
    cont = lambda seq: speculate_dist(spec, p_model, q_model, vocab, 1, seq)  # noqa: E731
    _assert_same(joint_of_first(3, dist, cont), target_joint(p_model, vocab, 3))


def test_continuation_samples_no_bonus_token() -> None:
    """A fully accepted block with bonus=False returns (L, None): the next block continues it."""
    vocab = 4
    p = np.eye(vocab)[[1, 2]]  # greedy target [L+1=2, V]
    codec = make_codec("ksqs:k=2,ell=4", vocab)
    d = codec.compress(np.eye(vocab)[1], np.random.default_rng(0))
    assert verify([d], p, np.random.default_rng(0), bonus=False) == (1, None)
    assert verify([d], p, np.random.default_rng(0), bonus=True) == (1, 2)


def test_deciding_to_send_after_seeing_the_draft_is_caught() -> None:
    """Negative control: block B (one draft at position 1) is sent only when the draft drawn there
    is token 0; otherwise A ends without `more` and the cloud samples the bonus at position 1.
    The decision depends on the drawn value, so the joint of the first two tokens is biased."""
    vocab, spec = 3, "qs:ell=4"
    p_model, q_model = make_model(vocab, 31, 1.0), make_model(vocab, 32, 1.5)
    codec = make_codec(spec, vocab)
    out: dict[tuple[int, ...], float] = defaultdict(float)
    for wa, a in draft_outcomes(codec, q_model(())):
        for wb, b in draft_outcomes(codec, q_model((a.token,))):
            if b.token == 0:  # looked at the value, then chained it
                for seq_a, va in round_dist(
                    [a], np.stack([p_model(()), p_model((a.token,))]), bonus=False
                ).items():
                    if len(seq_a) == 1 and seq_a[0] == a.token:
                        rows = np.stack([p_model((a.token,)), p_model((a.token, b.token))])
                        for seq_b, vb in round_dist([b], rows).items():
                            out[(*seq_a, *seq_b)[:2]] += wa * wb * va * vb
                    else:
                        for x, v in enumerate(p_model(seq_a)):
                            out[(*seq_a, x)[:2]] += wa * wb * va * v
            else:  # dropped it: A alone, bonus at position 1
                for seq_a, va in round_dist([a], np.stack([p_model(()), p_model((a.token,))])).items():
                    if len(seq_a) >= 2:
                        out[seq_a[:2]] += wa * wb * va
                    else:
                        for x, v in enumerate(p_model(seq_a)):
                            out[(*seq_a, x)] += wa * wb * va * v
    want = target_joint(p_model, vocab, 2)
    assert sum(out.values()) == pytest.approx(1.0, abs=1e-9)
    assert max(abs(out.get(k, 0.0) - w) for k, w in want.items()) > 1e-3
