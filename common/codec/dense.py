"""Dense float codecs (dense:fp32, dense:fp16): q rounded to the wire dtype, renormalised in float64."""

from __future__ import annotations

import numpy as np

from common.codec.base import Codec, exact_body_size
from common.codec.bitio import BitReader, BitWriter
from common.codec.draft import Draft
from common.codec.lattice import sample_probs
from common.codec.spec import CodecSpec
from common.errors import CodecError


class DenseCodec(Codec):
    """Sends the token and all V floats; q̂ = v / Σv in float64 on both sides (exactly equal)."""

    def __init__(self, spec: CodecSpec, vocab_size: int) -> None:
        super().__init__(spec, vocab_size)
        self.dtype = np.dtype(np.float16 if spec.kind == "dense:fp16" else np.float32)
        self.wire_dtype = self.dtype.newbyteorder(">")
        self.float_bits = 8 * self.dtype.itemsize

    def formula_bits(self, k: int | None = None) -> int:
        """Token id + V floats."""
        return self.token_bits + self.float_bits * self.vocab_size

    def _normalise(self, wire: np.ndarray) -> np.ndarray:
        """[V] wire floats -> [V] float64 q̂; the one normalisation both sides use."""
        v = wire.astype(np.float64)  # [V]
        total = float(v.sum())
        if not np.isfinite(total) or total <= 0.0 or v.min() < 0.0:
            raise CodecError("dense q̂ must be finite, non-negative, with positive mass")
        return v / total

    def compress(self, probs: np.ndarray, rng: np.random.Generator) -> Draft:
        """Round q to the wire dtype, renormalise in float64, draw the token from that q̂."""
        wire = self._probs(probs).astype(self.dtype)  # [V] what crosses the link
        qhat = self._normalise(wire)  # [V] float64, identical to the cloud's reconstruction
        token = sample_probs(qhat, rng)
        return Draft(token=token, support=None, counts=None, ell=0, probs=qhat, dropped_mass=0.0, wire=wire)

    def _write(self, w: BitWriter, d: Draft) -> None:
        if d.wire is None or d.wire.shape != (self.vocab_size,) or d.wire.dtype != self.dtype:
            raise CodecError(f"{self.spec} draft must carry its [{self.vocab_size}] {self.dtype} wire vector")
        token = self._check_token(d.token)
        if not float(d.wire[token]) > 0.0:
            raise CodecError("draft token has zero probability under q̂")
        w.write(token, self.token_bits)
        raw = d.wire.astype(self.wire_dtype).tobytes()
        w.write(int.from_bytes(raw, "big"), self.float_bits * self.vocab_size)

    def _read(self, r: BitReader) -> Draft:
        token = r.read(self.token_bits)
        if token >= self.vocab_size:
            raise CodecError(f"token {token} outside the vocabulary")
        nbytes = self.dtype.itemsize * self.vocab_size
        raw = r.read(8 * nbytes).to_bytes(nbytes, "big")
        wire = np.frombuffer(raw, dtype=self.wire_dtype).astype(self.dtype)  # [V] native order
        if not np.isfinite(wire).all():
            raise CodecError("dense q̂ has non-finite values")
        qhat = self._normalise(wire)
        if not qhat[token] > 0.0:
            raise CodecError("draft token has zero probability under q̂")
        return Draft(token=token, support=None, counts=None, ell=0, probs=qhat, wire=wire)

    def _check_body_size(self, n: int, body_bytes: int) -> None:
        exact_body_size(n, self.formula_bits(), body_bytes)
