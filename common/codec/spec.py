"""Codec spec strings (`ksqs:k=16,ell=100`, ...) parsed into a frozen CodecSpec."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.errors import CodecError

# Caps that bound the decoder's work on any payload (enumerative ranks cost ~O(n²) big-int work in
# the number of ranked elements). Worst decode at V = 151,936, K = ℓ = 1024 on the shared 2-core
# VM: ~0.15 s with gmpy2, ~1 s with the pure-Python fallback.
MAX_ELL = 1024  # lattice resolution ℓ
MAX_K = 1024  # K-SQS k and C-SQS kmax
DEFAULT_CSQS_KMAX = 256  # C-SQS cap when the spec gives none (past it, dense QS costs fewer bits)

# kind -> (required keys, optional keys)
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "qs": (("ell",), ()),
    "ksqs": (("k", "ell"), ()),
    "csqs": (("alpha", "eta", "ell"), ("kmax", "beta1")),
}
KIND_IDS: dict[str, int] = {"dense:fp32": 1, "dense:fp16": 2, "qs": 3, "ksqs": 4, "csqs": 5}


@dataclass(frozen=True)
class CodecSpec:
    """A parsed codec spec; `canonical` is the normal form (fixed key order, shortest floats)."""

    kind: str  # "dense:fp32" | "dense:fp16" | "qs" | "ksqs" | "csqs"
    ell: int = 0
    k: int | None = None
    alpha: float | None = None
    eta: float | None = None
    kmax: int | None = None
    beta1: float | None = None  # None → 1/(2ℓ)

    @property
    def kind_id(self) -> int:
        """The codec kind byte of bitstream v1."""
        return KIND_IDS[self.kind]

    @property
    def canonical(self) -> str:
        """Normal-form spec string (parse_codec_spec(s.canonical) == s)."""
        if self.kind.startswith("dense:"):
            return self.kind
        if self.kind == "qs":
            return f"qs:ell={self.ell}"
        if self.kind == "ksqs":
            return f"ksqs:k={self.k},ell={self.ell}"
        parts = [f"alpha={self.alpha!r}", f"eta={self.eta!r}", f"ell={self.ell}"]
        if self.kmax is not None:
            parts.append(f"kmax={self.kmax}")
        if self.beta1 is not None:
            parts.append(f"beta1={self.beta1!r}")
        return "csqs:" + ",".join(parts)

    def __str__(self) -> str:
        return self.canonical


def _int(key: str, raw: str, lo: int, hi: int) -> int:
    try:
        v = int(raw, 10)
    except ValueError:
        raise CodecError(f"codec spec: {key} must be an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise CodecError(f"codec spec: {key} must be in [{lo}, {hi}], got {v}")
    return v


def _float(key: str, raw: str, lo: float, hi: float, lo_open: bool) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise CodecError(f"codec spec: {key} must be a number, got {raw!r}") from None
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        raise CodecError(f"codec spec: {key} must be in {'(' if lo_open else '['}{lo}, {hi}], got {raw!r}")
    return v


def _params(kind: str, body: str) -> dict[str, str]:
    required, optional = _KEYS[kind]
    out: dict[str, str] = {}
    for item in body.split(",") if body else []:
        key, eq, val = item.partition("=")
        key, val = key.strip(), val.strip()
        if not eq or not key or not val:
            raise CodecError(f"codec spec: bad parameter {item!r} (want key=value)")
        if key not in required and key not in optional:
            raise CodecError(f"codec spec: unknown parameter {key!r} for {kind}")
        if key in out:
            raise CodecError(f"codec spec: duplicate parameter {key!r}")
        out[key] = val
    missing = [k for k in required if k not in out]
    if missing:
        raise CodecError(f"codec spec: {kind} needs {', '.join(missing)}")
    return out


def parse_codec_spec(spec: str) -> CodecSpec:
    """Parse `dense:fp32|dense:fp16|qs:ell=N|ksqs:k=K,ell=N|csqs:alpha=A,eta=E,ell=N[,kmax=M][,beta1=B]`."""
    if not isinstance(spec, str):
        raise CodecError(f"codec spec must be a string, got {type(spec).__name__}")
    text = spec.strip().lower()
    if text in ("dense:fp32", "dense:fp16"):
        return CodecSpec(kind=text)
    kind, _, body = text.partition(":")
    if kind not in _KEYS:
        known = "dense:fp32, dense:fp16, qs, ksqs, csqs"
        raise CodecError(f"unknown codec spec {spec!r} (known: {known})")
    kv = _params(kind, body)
    ell = _int("ell", kv["ell"], 1, MAX_ELL)
    if kind == "qs":
        return CodecSpec(kind=kind, ell=ell)
    if kind == "ksqs":
        return CodecSpec(kind=kind, ell=ell, k=_int("k", kv["k"], 1, MAX_K))
    return CodecSpec(
        kind=kind,
        ell=ell,
        alpha=_float("alpha", kv["alpha"], 0.0, 1.0, lo_open=True),
        eta=_float("eta", kv["eta"], 0.0, 1e6, lo_open=True),
        kmax=_int("kmax", kv["kmax"], 1, MAX_K) if "kmax" in kv else None,
        beta1=_float("beta1", kv["beta1"], 0.0, 1.0, lo_open=False) if "beta1" in kv else None,
    )
