"""The adaptive controller's model (method.md §7–8): codec distortion, expected tokens/s, the choice.

Rejection per position under codec c is modelled by the §7 bound with the drafter-side terms
computed exactly: r_c = m + δ_c, δ_c = d_TV(q, q̂_c) (sparsification + lattice, both observable at
the edge from q), m = the model mismatch, estimated from verdicts as r_used − δ_used. Throughput
is E[N]/T_round for serial rounds and tokens per chain / time per chain for streamed rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOP = 64  # probabilities kept per drafted position: enough for every candidate K and C-SQS kmax
A_MAX = 0.995  # acceptance is never predicted certain (a chain would never end)


# ── drafter-side distortion δ_c = d_TV(q, q̂_c) from the sorted top probabilities ─────────────────
def top_probs(q: np.ndarray, support: np.ndarray) -> np.ndarray:
    """[TOP] float64: q's largest probabilities, descending, zero-padded (support = their ids)."""
    out = np.zeros(TOP, dtype=np.float64)
    vals = np.sort(q[support])[::-1][:TOP]
    out[: vals.shape[0]] = vals
    return out


def sparse_distortion(top: np.ndarray, k: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """d_TV(q, q̂) for top-K sparsification + Reznik lattice at resolution ℓ, exactly.

    top: [n, TOP] descending probabilities of n positions; k: [n, C] or [C] support sizes
    (1..TOP); ell: [C] resolutions. Returns [n, C]. q̂ = b/ℓ on the K largest entries, with b the
    lattice point of q renormalised on them; δ = ½((1 − q(S)) + Σ_S |q_i − b_i/ℓ|).
    """
    n = top.shape[0]
    kk = np.broadcast_to(np.asarray(k, dtype=np.int64), (n, len(ell)))  # [n, C]
    ells = np.asarray(ell, dtype=np.float64)[None, :, None]  # [1, C, 1]
    idx = np.arange(TOP)[None, None, :]  # [1, 1, TOP]
    mask = idx < kk[:, :, None]  # [n, C, TOP] entries in S
    t = np.where(mask, top[:, None, :], 0.0)  # [n, C, TOP]
    mass = t.sum(axis=2)  # [n, C] q(S)
    x = ells * t / np.maximum(mass, 1e-300)[:, :, None]  # [n, C, TOP] ℓ·q̃
    b = np.where(mask, np.floor(x + 0.5), 0.0)
    delta = (ells[:, :, 0] - b.sum(axis=2)).astype(np.int64)  # [n, C] Reznik's Δ
    zeta = b - x
    up = np.where(mask, zeta, np.inf)  # Δ > 0: +1 on the Δ smallest ζ
    down = np.where(mask, -zeta, np.inf)  # Δ < 0: −1 on the |Δ| largest ζ
    rank_up = np.argsort(np.argsort(up, axis=2, kind="stable"), axis=2)
    rank_down = np.argsort(np.argsort(down, axis=2, kind="stable"), axis=2)
    d = delta[:, :, None]
    b = b + (rank_up < d) - (rank_down < -d)
    lattice = np.abs(t - b / ells).sum(axis=2)  # [n, C] Σ_S |q_i − b_i/ℓ|
    return np.asarray(np.clip(0.5 * ((1.0 - mass) + lattice), 0.0, 1.0))


def csqs_operating_point(top: np.ndarray, alpha: float, kmax: int) -> tuple[float, np.ndarray]:
    """(β*, [n] support sizes) C-SQS settles at: the threshold whose mean dropped mass is α (§6).

    C-SQS drives the long-run dropped mass to α, so over recent positions its supports are those of
    one threshold β* with mean 1 − q(S) = α. Each position keeps its argmax; lowering β past a value
    adds it, so the mean kept mass is a step function of β: one sort of the other values finds β*.
    """
    n, cap = top.shape[0], min(kmax, TOP)
    rest = top[:, 1:cap].reshape(-1)  # [n·(cap−1)] candidates beyond each argmax
    order = np.argsort(-rest, kind="stable")
    kept = top[:, 0].sum() + np.cumsum(rest[order])  # kept mass when the first j+1 values are in
    ok = np.flatnonzero(1.0 - kept / n <= alpha)
    if ok.shape[0] == 0:  # even keeping everything drops more than α: β falls below every value
        beta = 0.0
    else:
        beta = float(rest[order[ok[0]]])
        if beta <= 0.0:
            beta = 0.0
    sizes = np.clip(1 + (top[:, 1:cap] >= beta).sum(axis=1), 1, cap) if beta > 0 else np.full(n, cap)
    return beta, np.asarray(sizes, dtype=np.int64)


# ── throughput ─────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Timing:
    """Live estimates of one round's costs (seconds; bits per second as its inverse)."""

    rtt: float  # link latency both ways (and everything else constant per block)
    sec_per_bit: float  # 1 / uplink rate
    overhead_bits: float  # per block: protobuf fields, gRPC/HTTP2 framing, codec header
    draft0: float  # drafting a block: draft0 + n·draft1 (model forwards)
    draft1: float
    verify0: float  # verifying a block: verify0 + n·verify1 (target forward, queue)
    verify1: float


@dataclass(frozen=True)
class Candidate:
    """One codec as the model sees it: bits per draft, codec CPU per draft, mean distortion."""

    bits: float  # payload bits per draft (formula; C-SQS: at its operating point)
    cpu: float  # seconds per draft: compress + encode at the edge (decode at the cloud, same again)
    distortion: float  # mean δ_c over recent positions


def acceptance(mismatch: np.ndarray, distortion: np.ndarray) -> np.ndarray:
    """[C, P] per-position acceptance a = 1 − (m_j + δ_c), clipped to [0, A_MAX].

    mismatch: [P] by position in the block; distortion: [C].
    """
    return np.asarray(np.clip(1.0 - (mismatch[None, :] + distortion[:, None]), 0.0, A_MAX))


def expected_tokens(acc: np.ndarray) -> np.ndarray:
    """[C, P] E[N] of a serial round of L = 1..P drafts: 1 + Σ_{k<=L} Π_{j<=k} a_j (bonus included)."""
    return 1.0 + np.cumsum(np.cumprod(acc, axis=1), axis=1)


def block_costs(t: Timing, cands: Sequence[Candidate], lens: np.ndarray) -> tuple[np.ndarray, ...]:
    """([C, P] drafting, uplink, verify seconds) of a block of L = lens drafts per candidate."""
    bits = np.array([c.bits for c in cands])[:, None]  # [C, 1]
    cpu = np.array([c.cpu for c in cands])[:, None]
    n = lens[None, :].astype(np.float64)  # [1, P]
    draft = t.draft0 + n * (t.draft1 + cpu)
    uplink = t.sec_per_bit * (t.overhead_bits + n * bits)
    verify = t.verify0 + n * (t.verify1 + cpu)
    return draft, uplink, verify


def serial_rate(t: Timing, cands: Sequence[Candidate], mismatch: np.ndarray) -> np.ndarray:
    """[C, P] tokens/s of serial rounds: E[N](L) / (draft + uplink + RTT + verify), L = 1..P."""
    lens = np.arange(1, mismatch.shape[0] + 1)
    acc = acceptance(mismatch, np.array([c.distortion for c in cands]))
    draft, uplink, verify = block_costs(t, cands, lens)
    return np.asarray(expected_tokens(acc) / (draft + uplink + t.rtt + verify))


def streamed_rate(
    t: Timing, cands: Sequence[Candidate], mismatch: np.ndarray, max_depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """([C, P] tokens/s, [C, P] depth) of streamed rounds with blocks of L = 1..P drafts.

    A chain runs until its first rejection: 1/(1 − ā) tokens (ā the mean acceptance over the
    chain's positions). Its first block takes the whole latency Λ = draft + uplink + RTT + verify;
    each further block one bottleneck interval max(draft, uplink, verify), or Λ/D when the D blocks
    in flight cannot cover Λ. Blocks past the rejection are void: those still queued on the uplink
    delay the next chain. D is the least depth covering Λ (more only queues on the link).
    """
    lens = np.arange(1, mismatch.shape[0] + 1)
    a = acceptance(np.array([float(np.mean(mismatch))]), np.array([c.distortion for c in cands]))  # [C, 1]
    draft, uplink, verify = block_costs(t, cands, lens)
    latency = draft + uplink + t.rtt + verify
    step = np.maximum(np.maximum(draft, uplink), verify)
    depth = np.clip(np.ceil(latency / step), 1, max_depth)
    step = np.maximum(step, latency / depth)
    full = a ** lens[None, :]  # P(block fully accepted)
    void_queue = np.maximum(0.0, (depth - 1) * uplink - t.rtt - verify - draft)
    chain_time = latency + full / (1.0 - full) * step + void_queue
    return np.asarray((1.0 / (1.0 - a)) / chain_time), depth.astype(np.int64)


@dataclass(frozen=True)
class Choice:
    """The controller's decision for one block."""

    index: int  # candidate index
    draft_len: int
    rate: float  # predicted tokens/s
    depth: int  # streamed: blocks in flight (1 for serial)


def choose(
    rates: np.ndarray,
    depths: np.ndarray | None,
    current: int | None,
    lens: Sequence[int] | None = None,
    hysteresis: float = 0.02,
) -> Choice:
    """argmax over (candidate, L) of rates [C, P]; keep `current` unless another is `hysteresis` better.

    lens: the allowed draft lengths (1-based; default all). Sticking to the current codec unless a
    clear gain appears keeps estimate noise from flapping the codec every block.
    """
    allowed = np.full(rates.shape, -np.inf)
    cols = np.arange(rates.shape[1]) if lens is None else np.asarray(lens, dtype=np.int64) - 1
    allowed[:, cols] = rates[:, cols]
    allowed = np.where(np.isfinite(allowed), allowed, -np.inf)
    best = np.unravel_index(int(np.argmax(allowed)), allowed.shape)
    c, j = int(best[0]), int(best[1])
    if current is not None and c != current:
        j_cur = int(np.argmax(allowed[current]))
        if allowed[current, j_cur] * (1.0 + hysteresis) >= allowed[c, j]:
            c, j = current, j_cur
    depth = 1 if depths is None else int(depths[c, j])
    return Choice(c, j + 1, float(allowed[c, j]), depth)
