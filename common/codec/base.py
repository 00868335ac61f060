"""Codec base class: bitstream v1 framing (version, kind, count, bit body) shared by all codecs."""

from __future__ import annotations

import operator
import struct
from collections.abc import Sequence

import numpy as np

from common.codec.bitio import BitReader, BitWriter
from common.codec.draft import Draft
from common.codec.enumerative import Ranker, ranker
from common.codec.spec import CodecSpec
from common.errors import CodecError

BITSTREAM_VERSION = 1
HEADER_BYTES = 4  # version u8, kind u8, count u16 (big-endian)
MAX_DRAFTS = 0xFFFF
MAX_VOCAB = 1 << 24  # bounds every per-draft allocation


class Codec:
    """Compress a draft distribution, sample the draft token from q̂, and (de)serialise blocks."""

    def __init__(self, spec: CodecSpec, vocab_size: int) -> None:
        try:
            vocab_size = operator.index(vocab_size)  # int-like (numpy ints too), never a float
        except TypeError:
            raise CodecError(f"vocab_size must be an int, got {vocab_size!r}") from None
        if not 1 <= vocab_size <= MAX_VOCAB:
            raise CodecError(f"vocab_size must be in [1, {MAX_VOCAB}], got {vocab_size}")
        self.params = spec
        self.spec = spec.canonical
        self.kind = spec.kind
        self.vocab_size = vocab_size
        self.token_bits = (vocab_size - 1).bit_length()  # ⌈log2 V⌉
        self.ranks: Ranker = ranker()  # big-int backend of the enumerative codes (same bits either way)

    # -- per-kind hooks ------------------------------------------------------------------------
    def compress(self, probs: np.ndarray, rng: np.random.Generator) -> Draft:
        """Compress q [V] to q̂ and draw the draft token from q̂ (never from q)."""
        raise NotImplementedError

    def formula_bits(self, k: int | None = None) -> int:
        """Per-token payload bits of method.md §4–6 (k = K_t for csqs)."""
        raise NotImplementedError

    def _write(self, w: BitWriter, d: Draft) -> None:
        raise NotImplementedError

    def _read(self, r: BitReader) -> Draft:
        raise NotImplementedError

    def _check_body_size(self, n: int, body_bytes: int) -> None:
        """Reject a body whose size cannot hold n drafts, before any decoding work."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def _probs(self, probs: np.ndarray) -> np.ndarray:
        """q as a [V] float64 array. Values are validated where each codec reads them (no extra pass)."""
        q = np.asarray(probs, dtype=np.float64)
        if q.shape != (self.vocab_size,):
            raise CodecError(f"probs must have shape ({self.vocab_size},), got {q.shape}")
        return q

    def _check_token(self, token: int) -> int:
        if not 0 <= int(token) < self.vocab_size:
            raise CodecError(f"token {token} outside the vocabulary [0, {self.vocab_size})")
        return int(token)

    def encode(self, drafts: Sequence[Draft]) -> bytes:
        """Serialise a block of drafts (bitstream v1)."""
        if len(drafts) > MAX_DRAFTS:
            raise CodecError(f"at most {MAX_DRAFTS} drafts per block, got {len(drafts)}")
        w = BitWriter()
        for d in drafts:
            self._write(w, d)
        head = struct.pack(">BBH", BITSTREAM_VERSION, self.params.kind_id, len(drafts))
        return head + w.getvalue()

    def decode(self, payload: bytes, max_drafts: int | None = None) -> list[Draft]:
        """Bit-exact inverse of encode; any malformed payload raises CodecError."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
        data = bytes(payload)
        if len(data) < HEADER_BYTES:
            raise CodecError("payload shorter than the 4-byte header")
        version, kind_id, n = struct.unpack(">BBH", data[:HEADER_BYTES])
        if version != BITSTREAM_VERSION:
            raise CodecError(
                f"unsupported bitstream version {version} (this decoder reads {BITSTREAM_VERSION})"
            )
        if kind_id != self.params.kind_id:
            raise CodecError(f"payload codec kind {kind_id} != {self.params.kind_id} ({self.spec})")
        if max_drafts is not None and n > max_drafts:
            raise CodecError(f"payload has {n} drafts, more than the limit {max_drafts}")
        self._check_body_size(n, len(data) - HEADER_BYTES)
        r = BitReader(data[HEADER_BYTES:])
        drafts = [self._read(r) for _ in range(n)]
        r.finish()
        return drafts

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, vocab_size={self.vocab_size})"


def exact_body_size(n: int, bits_per_draft: int, body_bytes: int) -> None:
    """Fixed-width kinds: the body must be exactly ⌈n·bits/8⌉ bytes."""
    want = (n * bits_per_draft + 7) // 8
    if body_bytes < want:
        raise CodecError(f"payload truncated: body {body_bytes} bytes, {n} drafts need {want}")
    if body_bytes > want:
        raise CodecError(f"payload has {body_bytes - want} trailing byte(s)")
