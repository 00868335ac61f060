"""Draft codecs: sparsify, lattice-quantize, sample from q̂, and the v1 bitstream (method.md §3–6)."""

from common.codec.base import BITSTREAM_VERSION, Codec
from common.codec.dense import DenseCodec
from common.codec.draft import Draft
from common.codec.enumerative import bits_for
from common.codec.lattice import (
    lattice_quantize,
    lattice_quantize_sparse,
    sample_counts,
    sample_probs,
    top_k_support,
)
from common.codec.registry import SUPPORTED_SPECS, make_codec
from common.codec.spec import DEFAULT_CSQS_KMAX, KIND_IDS, MAX_ELL, MAX_K, CodecSpec, parse_codec_spec
from common.codec.sqs import CSQSCodec, CSQSState, KSQSCodec, QSCodec, SparseCodec

__all__ = [
    "BITSTREAM_VERSION",
    "DEFAULT_CSQS_KMAX",
    "KIND_IDS",
    "MAX_ELL",
    "MAX_K",
    "SUPPORTED_SPECS",
    "CSQSCodec",
    "CSQSState",
    "Codec",
    "CodecSpec",
    "DenseCodec",
    "Draft",
    "KSQSCodec",
    "QSCodec",
    "SparseCodec",
    "bits_for",
    "lattice_quantize",
    "lattice_quantize_sparse",
    "make_codec",
    "parse_codec_spec",
    "sample_counts",
    "sample_probs",
    "top_k_support",
]
