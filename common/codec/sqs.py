"""Lattice codecs: dense QS, top-K K-SQS and conformal C-SQS (method.md §3–6)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from common.codec.base import Codec, exact_body_size
from common.codec.bitio import BitReader, BitWriter
from common.codec.draft import Draft
from common.codec.enumerative import binomial, bits_for, composition_bound
from common.codec.lattice import lattice_quantize, lattice_quantize_sparse, sample_counts, top_k_support
from common.codec.spec import DEFAULT_CSQS_KMAX, CodecSpec
from common.errors import CodecError


@functools.lru_cache(maxsize=8192)
def _sparse_bounds(vocab: int, ell: int, k: int) -> tuple[int, int, int, int]:
    sb, cb = binomial(vocab, k), composition_bound(ell, k)
    return sb, bits_for(sb), cb, bits_for(cb)


def _check_counts(counts: np.ndarray | None, size: int, ell: int) -> np.ndarray:
    if counts is None or counts.shape != (size,):
        raise CodecError(f"draft counts must have shape ({size},)")
    if counts.min(initial=0) < 0 or int(counts.sum()) != ell:
        raise CodecError(f"draft counts must be >= 0 and sum to ell={ell}")
    return counts.astype(np.int64, copy=False)


class QSCodec(Codec):
    """Dense QS: lattice-quantize all V entries; send the composition rank over V and the token id."""

    def __init__(self, spec: CodecSpec, vocab_size: int) -> None:
        super().__init__(spec, vocab_size)
        self.ell = spec.ell
        self.count_bound = composition_bound(self.ell, self.vocab_size)  # C(ℓ+V−1, V−1)
        self.count_bits = bits_for(self.count_bound)

    def formula_bits(self, k: int | None = None) -> int:
        """⌈log2 C(ℓ+V−1, V−1)⌉ + ⌈log2 V⌉."""
        return self.count_bits + self.token_bits

    def compress(self, probs: np.ndarray, rng: np.random.Generator) -> Draft:
        """q̂ = lattice(q) over V; the token is drawn from the integer counts."""
        ids, nz = lattice_quantize_sparse(self._probs(probs), self.ell)  # [N] ids, [N] counts >= 1
        token = int(ids[sample_counts(nz, rng)])  # zero counts own no interval: skipping them is exact
        counts = np.zeros(self.vocab_size, dtype=np.int64)  # [V], Σ = ℓ
        counts[ids] = nz
        return Draft(token=token, support=None, counts=counts, ell=self.ell, dropped_mass=0.0)

    def _write(self, w: BitWriter, d: Draft) -> None:
        counts = _check_counts(d.counts, self.vocab_size, self.ell)
        token = self._check_token(d.token)
        if d.support is not None or d.ell != self.ell or counts[token] < 1:
            raise CodecError("qs draft must be dense counts at this ell with count[token] >= 1")
        w.write(self.ranks.composition_rank(counts, self.ell), self.count_bits)
        w.write(token, self.token_bits)

    def _read(self, r: BitReader) -> Draft:
        rank = r.read(self.count_bits)
        if rank >= self.count_bound:
            raise CodecError("counts rank out of range")
        token = r.read(self.token_bits)
        if token >= self.vocab_size:
            raise CodecError(f"token {token} outside the vocabulary")
        counts = self.ranks.composition_unrank(rank, self.ell, self.vocab_size)  # [V]
        if counts[token] < 1:
            raise CodecError("draft token has count 0")
        return Draft(token=token, support=None, counts=counts, ell=self.ell)

    def _check_body_size(self, n: int, body_bytes: int) -> None:
        exact_body_size(n, self.formula_bits(), body_bytes)


class SparseCodec(Codec):
    """Shared K-SQS/C-SQS path: support S, renormalise on S, lattice on S, token drawn from counts."""

    def __init__(self, spec: CodecSpec, vocab_size: int) -> None:
        super().__init__(spec, vocab_size)
        self.ell = spec.ell

    def bounds(self, k: int) -> tuple[int, int, int, int]:
        """(C(V,K), bits, C(ℓ+K−1,K−1), bits) for support size K, cached process-wide."""
        return _sparse_bounds(self.vocab_size, self.ell, k)

    def sparse_bits(self, k: int) -> int:
        """⌈log2 C(V,K)⌉ + ⌈log2 C(ℓ+K−1,K−1)⌉ + ⌈log2 K⌉ (method.md §5)."""
        _, sbits, _, cbits = self.bounds(k)
        return sbits + cbits + bits_for(k)

    def _support(self, q: np.ndarray) -> np.ndarray:
        """[K] int64 ascending retained ids (raises CodecError on non-finite q)."""
        raise NotImplementedError

    def compress(self, probs: np.ndarray, rng: np.random.Generator) -> Draft:
        """Sparsify to S, renormalise on S, lattice-quantize, draw the token from the counts.

        probs is a probability vector (Σ = 1, as probs_from_logits returns); it is not summed over
        V again (one O(V) pass less), so dropped_mass = 1 − q(S) relies on that normalisation.
        """
        q = self._probs(probs)
        support = self._support(q)  # [K] int64 ascending
        q_s = q[support]  # [K]
        counts = lattice_quantize(q_s, self.ell)  # [K] renormalised on S; validates q_s >= 0
        token = int(support[sample_counts(counts, rng)])
        dropped = min(1.0, max(0.0, 1.0 - float(q_s.sum())))  # L_t = 1 − q(S)
        self._observe(dropped)
        return Draft(token=token, support=support, counts=counts, ell=self.ell, dropped_mass=dropped)

    def _observe(self, dropped: float) -> None:
        """Hook for stateful sparsifiers (C-SQS threshold update)."""

    def _write_k(self, w: BitWriter, k: int) -> None:
        raise NotImplementedError

    def _read_k(self, r: BitReader) -> int:
        raise NotImplementedError

    def _write(self, w: BitWriter, d: Draft) -> None:
        support = d.support
        if support is None or support.ndim != 1 or d.ell != self.ell:
            raise CodecError(f"{self.kind} draft needs a 1-D support at ell={self.ell}")
        k = int(support.shape[0])
        self._write_k(w, k)
        counts = _check_counts(d.counts, k, self.ell)
        if k and (support[0] < 0 or support[-1] >= self.vocab_size or (np.diff(support) <= 0).any()):
            raise CodecError("support must be ascending distinct vocab ids")
        idx = int(np.searchsorted(support, d.token))
        if idx >= k or int(support[idx]) != d.token or counts[idx] < 1:
            raise CodecError("draft token must be in the support with count >= 1")
        _, sbits, _, cbits = self.bounds(k)
        w.write(self.ranks.support_rank(support, self.vocab_size), sbits)
        w.write(self.ranks.composition_rank(counts, self.ell), cbits)
        w.write(idx, bits_for(k))

    def _read(self, r: BitReader) -> Draft:
        k = self._read_k(r)
        sb, sbits, cb, cbits = self.bounds(k)
        if r.remaining < sbits + cbits:
            raise CodecError("payload truncated")
        srank = r.read(sbits)
        if srank >= sb:
            raise CodecError("support rank out of range")
        crank = r.read(cbits)
        if crank >= cb:
            raise CodecError("counts rank out of range")
        idx = r.read(bits_for(k))
        if idx >= k:
            raise CodecError("token index out of range")
        counts = self.ranks.composition_unrank(crank, self.ell, k)  # [K]
        if counts[idx] < 1:
            raise CodecError("draft token has count 0")
        support = self.ranks.support_unrank(srank, self.vocab_size, k)  # [K]
        return Draft(token=int(support[idx]), support=support, counts=counts, ell=self.ell)


class KSQSCodec(SparseCodec):
    """K-SQS: the K most probable tokens (ties by (−q, id)); K is fixed, so not on the wire."""

    def __init__(self, spec: CodecSpec, vocab_size: int) -> None:
        super().__init__(spec, vocab_size)
        self.k = min(spec.k if spec.k is not None else 1, vocab_size)  # top-K of V < K keeps all V

    def formula_bits(self, k: int | None = None) -> int:
        """⌈log2 C(V,K)⌉ + ⌈log2 C(ℓ+K−1,K−1)⌉ + ⌈log2 K⌉."""
        return self.sparse_bits(self.k if k is None else k)

    def _support(self, q: np.ndarray) -> np.ndarray:
        return top_k_support(q, self.k)

    def _write_k(self, w: BitWriter, k: int) -> None:
        if k != self.k:
            raise CodecError(f"ksqs draft support has {k} ids, codec k={self.k}")

    def _read_k(self, r: BitReader) -> int:
        return self.k

    def _check_body_size(self, n: int, body_bytes: int) -> None:
        exact_body_size(n, self.formula_bits(), body_bytes)


@dataclass(frozen=True)
class CSQSState:
    """The online part of a C-SQS codec: threshold β_t and the number of updates behind it.

    Carried between a client's requests (edge/adaptive.py) so β does not restart at β₁; valid only
    for the spec it was exported from (α, η, ℓ, kmax define what β means).
    """

    spec: str  # canonical spec of the codec it came from
    beta: float
    steps: int


class CSQSCodec(SparseCodec):
    """C-SQS: retained set {v: q(v) >= β} ∪ {argmax} (cap kmax), β updated online (method.md §6)."""

    def __init__(self, spec: CodecSpec, vocab_size: int) -> None:
        super().__init__(spec, vocab_size)
        self.alpha = float(spec.alpha if spec.alpha is not None else 0.0)
        self.eta = float(spec.eta if spec.eta is not None else 0.0)
        self.kmax = spec.kmax
        self.k_cap = min(vocab_size, spec.kmax if spec.kmax is not None else DEFAULT_CSQS_KMAX)
        self.beta1 = spec.beta1 if spec.beta1 is not None else 1.0 / (2.0 * spec.ell)
        self.beta = self.beta1  # the online threshold β_t (per session: one codec per session)
        self.steps = 0

    def formula_bits(self, k: int | None = None) -> int:
        """Elias-gamma(K_t) + the K-SQS bits at K = K_t (k defaults to kmax)."""
        k = self.k_cap if k is None else k
        return 2 * k.bit_length() - 1 + self.sparse_bits(k)

    def _support(self, q: np.ndarray) -> np.ndarray:
        thr = self.beta
        if self.k_cap < self.vocab_size:
            # {q >= β} capped to the top kmax == top-kmax ∩ {q >= β}: no pass over all of V.
            top = top_k_support(q, self.k_cap)  # [kmax] ascending
            support: np.ndarray = top[q[top] >= thr]
            if support.shape[0] == 0:  # always keep the argmax (lowest id on ties: top is ascending)
                best = int(np.argmax(q[top]))
                support = top[best : best + 1]
            return support
        if not np.isfinite(q.sum()):  # this path is O(V) anyway
            raise CodecError("probs must be finite")
        if thr <= 0.0:
            return np.arange(self.vocab_size, dtype=np.int64)
        kept: np.ndarray = np.flatnonzero(q >= thr)  # [K] ascending
        if kept.shape[0] == 0:
            kept = np.array([int(np.argmax(q))], dtype=np.int64)
        return kept.astype(np.int64, copy=False)

    def _observe(self, dropped: float) -> None:
        """β ← min(β + η(α − L_t), 1); never clipped from below (that is what bounds the loss)."""
        self.beta = min(self.beta + self.eta * (self.alpha - dropped), 1.0)
        self.steps += 1

    def export_state(self) -> CSQSState:
        """A snapshot of β_t (and its step count) for `import_state` on a later codec of this spec."""
        return CSQSState(self.spec, self.beta, self.steps)

    def import_state(self, state: CSQSState) -> None:
        """Continue from an exported β (CodecError for another spec or a β the update cannot reach).

        Any β is exact (it only shapes q̂ before the draw); the checks keep a corrupt store from
        producing a NaN threshold. β <= 1 always holds after an update; below, it is unbounded.
        """
        if state.spec != self.spec:
            raise CodecError(f"C-SQS state of {state.spec!r} does not fit {self.spec!r}")
        if not (math.isfinite(state.beta) and state.beta <= 1.0) or state.steps < 0:
            raise CodecError(f"invalid C-SQS state beta={state.beta!r} steps={state.steps!r}")
        self.beta = float(state.beta)
        self.steps = int(state.steps)

    def _write_k(self, w: BitWriter, k: int) -> None:
        if not 1 <= k <= self.k_cap:
            raise CodecError(f"csqs support size {k} outside [1, {self.k_cap}]")
        w.write_gamma(k)

    def _read_k(self, r: BitReader) -> int:
        k = r.read_gamma(self.k_cap)
        # Cheap size check before exact big-int bounds: log2 C(V, K) via lgamma.
        v = self.vocab_size
        est = (math.lgamma(v + 1) - math.lgamma(k + 1) - math.lgamma(v - k + 1)) / math.log(2)
        if r.remaining < est - 2:
            raise CodecError("payload truncated")
        return k

    def _check_body_size(self, n: int, body_bytes: int) -> None:
        if 8 * body_bytes < n * (1 + bits_for(self.vocab_size)):  # smallest draft: K = 1
            raise CodecError(f"payload truncated: {body_bytes} body bytes cannot hold {n} drafts")
