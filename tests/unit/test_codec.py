"""Codec specs, bitstream v1 round trips, and strict rejection of malformed payloads."""

from __future__ import annotations

import contextlib
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.codec import Codec, CSQSCodec, Draft, bits_for, make_codec, parse_codec_spec
from common.codec.bitio import BitWriter
from common.codec.enumerative import composition_unrank
from common.errors import CodecError

pytestmark = pytest.mark.usefixtures("bigint_backend")  # every test under both big-int backends


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("dense:fp32", "dense:fp32"),
        (" DENSE:FP16 ", "dense:fp16"),
        ("qs:ell=240", "qs:ell=240"),
        ("ksqs:ell=100,k=16", "ksqs:k=16,ell=100"),
        ("csqs:alpha=0.05,eta=0.02,ell=240", "csqs:alpha=0.05,eta=0.02,ell=240"),
        (
            "csqs:ell=240, kmax=64,eta=.02,alpha=5e-2,beta1=0.01",
            "csqs:alpha=0.05,eta=0.02,ell=240,kmax=64,beta1=0.01",
        ),
    ],
)
def test_spec_canonical_form(spec: str, canonical: str) -> None:
    parsed = parse_codec_spec(spec)
    assert parsed.canonical == canonical
    assert parse_codec_spec(canonical) == parsed
    assert make_codec(spec, 1000).spec == canonical


BAD_SPECS = [
    "",
    " dense ",
    " dense:fp8 ",
    " zip:ell=3 ",
    " qs ",
    " qs:ell=0 ",
    " qs:ell=abc ",
    " qs:ell=3,ell=4 ",
    " qs:ell=3,k=2 ",
    " ksqs:k=16 ",
    " ksqs:k=0,ell=10 ",
    " csqs:alpha=0.05,ell=240 ",
    " csqs:alpha=0,eta=0.1,ell=5 ",
    " csqs:alpha=0.1,eta=nan,ell=5 ",
    " csqs:alpha=0.1,eta=0.1,ell=5,kmax=0 ",
    " qs:ell=70000 ",
    "qs:ell=1025",
    "ksqs:k=1025,ell=5",
    "csqs:alpha=0.1,eta=0.1,ell=5,kmax=2000",
    " qs:ell ",
    " qs:=3 ",
    " csqs:alpha=2,eta=0.1,ell=5",
]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_specs_raise_codec_error(spec: str) -> None:
    with pytest.raises(CodecError):
        make_codec(spec, 100)


def test_vocab_size_checks() -> None:
    for bad in (0, -3, 2.5, 1 << 30):
        with pytest.raises(CodecError):
            make_codec("qs:ell=4", bad)  # type: ignore[arg-type]
    assert make_codec("qs:ell=4", np.int64(7)).vocab_size == 7  # type: ignore[arg-type]


def _same(a: Draft, b: Draft, vocab: int) -> None:
    assert a.token == b.token
    assert a.ell == b.ell
    np.testing.assert_array_equal(a.dense(vocab), b.dense(vocab))  # bit-exact q̂
    for x, y in ((a.support, b.support), (a.counts, b.counts), (a.wire, b.wire)):
        assert (x is None) == (y is None)
        if x is not None and y is not None:
            np.testing.assert_array_equal(x, y)


@st.composite
def codec_cases(draw: st.DrawFn) -> tuple[str, int, int, int]:
    vocab = draw(st.integers(2, 400))
    ell = draw(st.integers(1, 300))
    k = draw(st.integers(1, 70))
    kind = draw(st.sampled_from(["dense:fp32", "dense:fp16", "qs", "ksqs", "csqs", "csqs-kmax"]))
    spec = {
        "qs": f"qs:ell={ell}",
        "ksqs": f"ksqs:k={k},ell={ell}",
        "csqs": f"csqs:alpha=0.1,eta=0.05,ell={ell}",
        "csqs-kmax": f"csqs:alpha=0.02,eta=0.2,ell={ell},kmax={k}",
    }.get(kind, kind)
    return spec, vocab, draw(st.integers(0, 6)), draw(st.integers(0, 2**32 - 1))


def _block(spec: str, vocab: int, n: int, seed: int) -> tuple[Codec, list[Draft], bytes]:
    rng = np.random.default_rng(seed)
    codec = make_codec(spec, vocab)
    drafts = []
    for _ in range(n):
        z = rng.standard_normal(vocab) * rng.uniform(0.1, 8)
        q = np.exp(z - z.max())
        drafts.append(codec.compress(q / q.sum(), rng))
    return codec, drafts, codec.encode(drafts)


ROUNDTRIP = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUNDTRIP
@given(case=codec_cases())
def test_round_trip_is_bit_exact(case: tuple[str, int, int, int]) -> None:
    spec, vocab, n, seed = case
    _, drafts, payload = _block(spec, vocab, n, seed)
    cloud = make_codec(spec, vocab)
    back = cloud.decode(payload, max_drafts=n)
    assert len(back) == n
    for a, b in zip(drafts, back, strict=True):
        _same(a, b, vocab)
    assert cloud.encode(back) == payload  # decode∘encode is the identity on the wire too


def _decode_or_codec_error(codec: Codec, payload: bytes) -> None:
    with contextlib.suppress(CodecError):  # any other exception type fails the test
        codec.decode(payload)


@ROUNDTRIP
@given(case=codec_cases(), data=st.data())
def test_corrupt_payloads_raise_codec_error(case: tuple[str, int, int, int], data: st.DataObject) -> None:
    spec, vocab, n, seed = case
    _, _, payload = _block(spec, vocab, max(n, 1), seed)
    cloud = make_codec(spec, vocab)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(CodecError):
        cloud.decode(payload[:cut])  # truncated
    extra = data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(CodecError):
        cloud.decode(payload + extra)  # extended
    flipped = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, 8 * len(payload) - 1))
        flipped[pos // 8] ^= 0x80 >> (pos % 8)
    _decode_or_codec_error(cloud, bytes(flipped))  # may decode to another valid block, or raise
    _decode_or_codec_error(cloud, data.draw(st.binary(max_size=64)))


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=200), kind=st.integers(1, 5), n=st.integers(0, 0xFFFF))
def test_random_bodies_never_raise_other_errors(body: bytes, kind: int, n: int) -> None:
    specs = {
        1: "dense:fp32",
        2: "dense:fp16",
        3: "qs:ell=20",
        4: "ksqs:k=4,ell=9",
        5: "csqs:alpha=0.1,eta=0.1,ell=9",
    }
    _decode_or_codec_error(make_codec(specs[kind], 300), struct.pack(">BBH", 1, kind, n) + body)


def test_header_checks() -> None:
    codec, _drafts, payload = _block("ksqs:k=4,ell=10", 100, 3, 0)
    assert payload[:4] == bytes([1, 4, 0, 3])
    cases = {
        "version": b"\x02" + payload[1:],
        "kind": payload[:1] + b"\x03" + payload[2:],
        "count": payload[:2] + b"\x00\x04" + payload[4:],
        "short": payload[:3],
    }
    for name, bad in cases.items():
        with pytest.raises(CodecError):
            codec.decode(bad)
        assert name
    with pytest.raises(CodecError, match="limit"):
        codec.decode(payload, max_drafts=2)
    assert len(codec.decode(payload, max_drafts=3)) == 3
    with pytest.raises(CodecError):
        codec.decode("not bytes")  # type: ignore[arg-type]


def test_nonzero_padding_is_rejected() -> None:
    codec, _, payload = _block("ksqs:k=3,ell=5", 50, 1, 1)
    bits = 8 * (len(payload) - 4)
    assert bits > codec.formula_bits()  # there is padding to corrupt
    with pytest.raises(CodecError, match="padding"):
        codec.decode(payload[:-1] + bytes([payload[-1] | 1]))


def test_rank_and_index_bounds_are_checked() -> None:
    """Hand-built bodies whose fields exceed their bounds (all-ones fields) are rejected."""
    vocab = 10
    for spec in ("ksqs:k=3,ell=5", "qs:ell=3"):
        codec = make_codec(spec, vocab)
        bits = codec.formula_bits()
        body = ((1 << bits) - 1) << (-bits % 8)
        with pytest.raises(CodecError, match=r"range|count 0|vocabulary"):
            codec.decode(
                struct.pack(">BBH", 1, codec.params.kind_id, 1) + body.to_bytes((bits + 7) // 8, "big")
            )


def test_token_with_zero_count_is_rejected() -> None:
    codec = make_codec("ksqs:k=2,ell=1", 4)
    d = Draft(token=1, support=np.array([1, 2]), counts=np.array([1, 0]), ell=1)
    payload = codec.encode([d])
    assert codec.decode(payload)[0].token == 1
    # The token index is the last bit: flip it to point at the zero-count entry.
    bad = bytearray(payload)
    last = 4 * 8 + codec.formula_bits() - 1
    bad[last // 8] ^= 0x80 >> (last % 8)
    with pytest.raises(CodecError, match="count 0"):
        codec.decode(bytes(bad))
    with pytest.raises(CodecError):
        codec.encode([Draft(token=2, support=d.support, counts=d.counts, ell=1)])


def test_absurd_csqs_k_is_rejected_without_work() -> None:
    codec = make_codec("csqs:alpha=0.1,eta=0.1,ell=9,kmax=8", 1000)
    # Elias-gamma of K = 9 > kmax: 000 1001, then nothing.
    with pytest.raises(CodecError):
        codec.decode(struct.pack(">BBH", 1, 5, 1) + bytes([0b00010010, 0]))
    # 40 leading zero bits claim K >= 2**40: rejected from the first window.
    with pytest.raises(CodecError):
        make_codec("csqs:alpha=0.1,eta=0.1,ell=9", 151_936).decode(struct.pack(">BBH", 1, 5, 1) + bytes(6))


def test_dense_payload_rejects_bad_floats() -> None:
    codec = make_codec("dense:fp16", 4)
    d = codec.compress(np.array([0.1, 0.2, 0.3, 0.4]), np.random.default_rng(0))
    payload = codec.encode([d])
    for bad_value in (np.nan, np.inf, -1.0):
        wire = d.wire.copy() if d.wire is not None else None
        assert wire is not None
        wire[3] = bad_value
        body = (d.token << 64 | int.from_bytes(wire.astype(">f2").tobytes(), "big")) << 6
        with pytest.raises(CodecError):
            codec.decode(payload[:4] + body.to_bytes(9, "big"))


def test_encode_rejects_inconsistent_drafts() -> None:
    codec = make_codec("ksqs:k=2,ell=4", 5)
    good = Draft(token=3, support=np.array([1, 3]), counts=np.array([1, 3]), ell=4)
    codec.encode([good])
    bad = [
        Draft(token=3, support=np.array([3, 1]), counts=np.array([3, 1]), ell=4),  # not ascending
        Draft(token=3, support=np.array([1, 3]), counts=np.array([1, 2]), ell=4),  # Σ != ℓ
        Draft(token=3, support=np.array([1, 3, 4]), counts=np.array([1, 2, 1]), ell=4),  # K != k
        Draft(token=3, support=np.array([1, 3]), counts=np.array([1, 3]), ell=5),  # wrong ℓ
        Draft(token=3, support=None, counts=np.array([0, 1, 0, 3, 0]), ell=4),  # qs-style
    ]
    for d in bad:
        with pytest.raises(CodecError):
            codec.encode([d])
    with pytest.raises(CodecError):
        make_codec("dense:fp16", 5).encode([good])


def test_compress_rejects_bad_probs() -> None:
    codec = make_codec("ksqs:k=2,ell=4", 3)
    rng = np.random.default_rng(0)
    for bad in (np.array([0.5, 0.5]), np.array([np.nan, 0.5, 0.5]), np.zeros(3), np.array([np.inf, 0, 0])):
        with pytest.raises(CodecError):
            codec.compress(bad, rng)


def test_decode_work_is_bounded_for_the_worst_allowed_spec() -> None:
    """Largest K and ℓ a spec may ask for, ranks deep inside their ranges: bounded decode time."""
    vocab = 151_936
    codec = make_codec("csqs:alpha=0.1,eta=0.1,ell=1024,kmax=1024", vocab)
    assert isinstance(codec, CSQSCodec)
    k = codec.k_cap
    sb, sbits, cb, cbits = codec.bounds(k)
    golden = 0x9E3779B97F4A7C15  # ranks at 0.618 of their range: generic subsets, not the extremes
    srank, crank = (sb * golden) >> 64, (cb * golden) >> 64
    counts = composition_unrank(crank, codec.ell, k)
    w = BitWriter()
    w.write_gamma(k)
    w.write(srank, sbits)
    w.write(crank, cbits)
    w.write(int(np.flatnonzero(counts)[0]), bits_for(k))
    payload = struct.pack(">BBH", 1, 5, 1) + w.getvalue()
    t0 = time.perf_counter()
    (d,) = codec.decode(payload)
    assert time.perf_counter() - t0 < 5.0
    assert d.support is not None
    assert d.support.shape == (k,)


def test_csqs_default_cap() -> None:
    codec = make_codec("csqs:alpha=0.1,eta=0.1,ell=16", 2000)
    assert isinstance(codec, CSQSCodec)
    assert codec.k_cap == 256
    codec.beta = -1.0  # would retain all 2000 ids without a cap
    d = codec.compress(np.full(2000, 1 / 2000), np.random.default_rng(0))
    assert d.support is not None
    assert d.support.tolist() == list(range(256))  # ties broken by id
    assert d.dropped_mass == pytest.approx(1 - 256 / 2000)
