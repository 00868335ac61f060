"""Big-int backends agree bit for bit: cross-backend ranks and payloads, gmpy2 fallback paths, selection."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.codec import Codec, Draft, make_codec
from common.codec import enumerative as en
from common.errors import CodecError

gmp = pytest.importorskip("common.codec.combinadic_gmp", reason="gmpy2 is not importable")
PY, GMP = en.ranker("python"), en.ranker("gmpy2")
BACKENDS = (GMP, PY)
REPO = Path(__file__).resolve().parents[2]
SLOW_OK = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def supports(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """An ascending K-subset of [0, n): random, clustered at low ids, or a run of consecutive ids."""
    n = draw(st.sampled_from([draw(st.integers(1, 600)), draw(st.integers(1, 5000)), 151_936]))
    k = draw(st.integers(1, min(n, 300)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from(["random", "low", "run"]))
    if shape == "random":
        s = rng.choice(n, size=k, replace=False)
    elif shape == "low":  # frequent tokens have low ids in real vocabularies
        s = rng.choice(min(n, 2 * k + 8), size=k, replace=False)
    else:
        start = int(rng.integers(0, n - k + 1))
        s = np.arange(start, start + k)
    return np.sort(s).astype(np.int64), n


@SLOW_OK
@given(case=supports(), frac=st.integers(0, 2**64 - 1))
def test_support_ranks_agree(case: tuple[np.ndarray, int], frac: int) -> None:
    support, n = case
    k = int(support.shape[0])
    rank = PY.support_rank(support, n)
    assert GMP.support_rank(support, n) == rank
    for dec in BACKENDS:  # encode with one backend, decode with either
        np.testing.assert_array_equal(dec.support_unrank(rank, n, k), support)
    other = (math.comb(n, k) * frac) >> 64  # any rank in range, not only ones we encoded
    np.testing.assert_array_equal(GMP.support_unrank(other, n, k), PY.support_unrank(other, n, k))


@SLOW_OK
@given(ell=st.integers(1, 1024), k=st.integers(1, 1024), seed=st.integers(0, 2**32 - 1))
def test_composition_ranks_agree(ell: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    width = int(rng.integers(1, k + 1))  # mass on the first `width` parts: long runs of zero counts
    counts = np.bincount(rng.integers(0, width, ell), minlength=k).astype(np.int64)
    rank = PY.composition_rank(counts, ell)
    assert GMP.composition_rank(counts, ell) == rank
    for dec in BACKENDS:
        np.testing.assert_array_equal(dec.composition_unrank(rank, ell, k), counts)


def _same(a: Draft, b: Draft, vocab: int) -> None:
    assert a.token == b.token
    np.testing.assert_array_equal(a.dense(vocab), b.dense(vocab))
    for x, y in ((a.support, b.support), (a.counts, b.counts)):
        assert (x is None) == (y is None)
        if x is not None and y is not None:
            np.testing.assert_array_equal(x, y)


def _cross_check(spec: str, vocab: int, probs: list[np.ndarray], seed: int) -> None:
    """compress() with one codec; encode and decode with each backend: same bytes, same drafts."""
    edge = make_codec(spec, vocab)
    rng = np.random.default_rng(seed)
    drafts = [edge.compress(q, rng) for q in probs]
    codecs: list[Codec] = [make_codec(spec, vocab, bigint=b.name) for b in BACKENDS]
    payloads = [c.encode(drafts) for c in codecs]
    assert payloads[0] == payloads[1]
    for c in codecs:
        back = c.decode(payloads[0], max_drafts=len(drafts))
        for a, b in zip(drafts, back, strict=True):
            _same(a, b, vocab)


@SLOW_OK
@given(
    kind=st.sampled_from(["dense:fp16", "qs", "ksqs", "csqs", "csqs-kmax"]),
    vocab=st.integers(2, 3000),
    ell=st.integers(1, 1024),
    k=st.integers(1, 128),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_payloads_agree_for_every_codec_kind(
    kind: str, vocab: int, ell: int, k: int, n: int, seed: int
) -> None:
    spec = {
        "qs": f"qs:ell={min(ell, 300)}",
        "ksqs": f"ksqs:k={k},ell={ell}",
        "csqs": f"csqs:alpha=0.1,eta=0.05,ell={ell}",
        "csqs-kmax": f"csqs:alpha=0.02,eta=0.2,ell={ell},kmax={k}",
    }.get(kind, kind)
    rng = np.random.default_rng(seed)
    probs = []
    for _ in range(n):
        z = rng.standard_normal(vocab) * rng.uniform(0.1, 8)
        q = np.exp(z - z.max())
        probs.append(q / q.sum())
    _cross_check(spec, vocab, probs, seed)


@pytest.mark.parametrize(
    "spec",
    ["ksqs:k=64,ell=240", "csqs:alpha=0.2,eta=0.02,ell=240,kmax=64", "csqs:alpha=0.2,eta=0.02,ell=720"],
)
def test_payloads_agree_at_qwen_vocab(spec: str) -> None:
    vocab = 151_936
    rng = np.random.default_rng(11)
    probs = []
    for i in range(4):  # Zipf-like with permuted ids, then a flat one (large C-SQS K_t)
        w = np.arange(1, vocab + 1, dtype=np.float64) ** -(1.1 if i < 3 else 0.6)
        w = w[rng.permutation(vocab)]
        probs.append(w / w.sum())
    _cross_check(spec, vocab, probs, 5)


@pytest.mark.parametrize("scale", [0.9, 0.999_999, 1.000_001, 1.1])
def test_gmp_unrank_is_exact_with_bad_estimates(scale: float) -> None:
    """Estimates pushed off by a relative error: digits must still be exact (via the checked retry)."""
    rng = np.random.default_rng(7)
    cases = [(151_936, 64), (151_936, 170), (3000, 400), (303, 63), (10**6, 5)]
    inv, root_fact, corr, half = gmp._consts(2000)
    fails = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gmp, "_const_lists", (inv, [x * scale for x in root_fact], corr, half))
        real_newton = gmp.newton_estimate
        mp.setattr(gmp, "newton_estimate", lambda x0, lr, m, hi: real_newton(x0 * scale, lr, m, hi))
        for n, k in cases:
            for _ in range(2):
                rank = int(rng.integers(0, 2**62)) * math.comb(n, k) >> 62
                rows = gmp.rows_for(n, k)
                got = gmp._greedy(rank, n, k, False, rows)
                fails += got is None
                want = PY.subset_unrank(rank, n, k)
                assert got is None or got == want  # unchecked never returns a wrong subset
                assert gmp._greedy(rank, n, k, True, rows) == want
                assert gmp.subset_unrank(rank, n, k) == want
    if scale < 1.0:
        assert fails > 0  # low estimates do reach the checked retry


def test_gmp_without_pascal_table_matches() -> None:
    """Compositions through the float estimates only (tables capped to nothing)."""
    rng = np.random.default_rng(3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gmp, "TABLE_CAP", 0)
        mp.setattr(gmp, "_tables", {})
        for ell, k in ((240, 64), (100, 256), (1024, 1024), (7, 3), (240, 200)):
            counts = np.bincount(rng.integers(0, max(1, k // 3), ell), minlength=k).astype(np.int64)
            rank = PY.composition_rank(counts, ell)
            np.testing.assert_array_equal(GMP.composition_unrank(rank, ell, k), counts)
        assert gmp._tables == {}  # nothing was built


def test_pascal_tables_by_width_and_cap() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gmp, "_tables", {})  # fresh tables, whatever ran before
        rows = gmp.pascal_rows(300, 40)
        assert len(rows) == 41
        assert len(rows[0]) == 512
        for c, m in ((0, 0), (5, 7), (299, 40), (120, 1), (77, 33), (511, 40)):
            assert rows[m][c] == math.comb(c, m)
        assert gmp.pascal_rows(100, 20) is rows  # already covered
        tall = gmp.pascal_rows(300, 10_000)  # as tall as TABLE_CAP allows at this width
        assert len(tall) == gmp.TABLE_CAP // 512
        assert tall[-1][511] == math.comb(511, len(tall) - 1)
        wide = gmp.pascal_rows(1500, 10)  # a wider table of its own: the 512 one keeps its rows
        assert len(wide[0]) == 2048
        assert len(wide) == 11
        assert wide[10][1999] == math.comb(1999, 10)
        assert gmp._tables[512] is tall
        assert gmp.rows_for(151_936, 64) is tall  # supports use the narrowest table
        mp.setattr(gmp, "_tables", {})
        assert len(gmp.rows_for(151_936, 64)) == 1  # none yet: estimates only


def test_backend_selection() -> None:
    assert en._select("").name == en.BIGINT_BACKENDS[0] == "gmpy2"
    assert en._select("auto").name == "gmpy2"
    assert en._select(" Python ").name == "python"
    with pytest.raises(ImportError):
        en._select("gmp")
    with pytest.raises(CodecError):
        make_codec("ksqs:k=4,ell=8", 100, bigint="fortran")
    assert make_codec("ksqs:k=4,ell=8", 100, bigint="python").ranks is PY


@pytest.mark.parametrize(
    ("env", "prelude", "want"),
    [
        ("python", "", "('gmpy2', 'python') python"),
        ("", "", "('gmpy2', 'python') gmpy2"),
        ("", "sys.modules['gmpy2'] = None", "('python',) python"),  # gmpy2 not importable
    ],
)
def test_env_var_and_missing_gmpy2(env: str, prelude: str, want: str) -> None:
    show = "from common.codec import enumerative as e; print(e.BIGINT_BACKENDS, e.DEFAULT.name)"
    code = f"import sys; {prelude}\n{show}"
    environ = {**os.environ, en.BIGINT_ENV: env}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == want


def test_forcing_missing_gmpy2_fails_loudly() -> None:
    code = "import sys; sys.modules['gmpy2'] = None\nimport common.codec"
    environ = {**os.environ, en.BIGINT_ENV: "gmpy2"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True)
    assert out.returncode != 0
    assert "gmpy2 cannot be imported" in out.stderr
