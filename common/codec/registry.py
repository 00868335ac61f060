"""make_codec: spec string + vocabulary size -> a fresh codec object (one per session)."""

from __future__ import annotations

from common.codec.base import Codec
from common.codec.dense import DenseCodec
from common.codec.enumerative import ranker
from common.codec.spec import parse_codec_spec
from common.codec.sqs import CSQSCodec, KSQSCodec, QSCodec

SUPPORTED_SPECS = (
    "dense:fp32",
    "dense:fp16",
    "qs:ell=240",
    "ksqs:k=16,ell=100",
    "csqs:alpha=0.05,eta=0.02,ell=240",
)


def make_codec(spec: str, vocab_size: int, bigint: str | None = None) -> Codec:
    """A new codec for spec; C-SQS keeps its threshold in the object, so make one per session.

    bigint names the big-int backend of the enumerative codes ("gmpy2" | "python"; None = the
    import-time default, see common.codec.enumerative). The bytes do not depend on it.
    """
    parsed = parse_codec_spec(spec)
    codec: Codec
    if parsed.kind.startswith("dense:"):
        codec = DenseCodec(parsed, vocab_size)
    elif parsed.kind == "qs":
        codec = QSCodec(parsed, vocab_size)
    elif parsed.kind == "ksqs":
        codec = KSQSCodec(parsed, vocab_size)
    else:
        codec = CSQSCodec(parsed, vocab_size)
    if bigint is not None:
        codec.ranks = ranker(bigint)
    return codec
