"""make_codec: spec string + vocabulary size -> a fresh codec object (one per session)."""

from __future__ import annotations

from common.codec.base import Codec
from common.codec.dense import DenseCodec
from common.codec.spec import parse_codec_spec
from common.codec.sqs import CSQSCodec, KSQSCodec, QSCodec

SUPPORTED_SPECS = (
    "dense:fp32",
    "dense:fp16",
    "qs:ell=240",
    "ksqs:k=16,ell=100",
    "csqs:alpha=0.05,eta=0.02,ell=240",
)


def make_codec(spec: str, vocab_size: int) -> Codec:
    """A new codec for spec; C-SQS keeps its threshold in the object, so make one per session."""
    parsed = parse_codec_spec(spec)
    if parsed.kind.startswith("dense:"):
        return DenseCodec(parsed, vocab_size)
    if parsed.kind == "qs":
        return QSCodec(parsed, vocab_size)
    if parsed.kind == "ksqs":
        return KSQSCodec(parsed, vocab_size)
    return CSQSCodec(parsed, vocab_size)
