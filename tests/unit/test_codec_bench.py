"""bench/codec_bench.py smoke: every backend gets a row per cell, same bits, side by side in markdown."""

from __future__ import annotations

import numpy as np
import pytest

from bench import codec_bench
from common.codec.enumerative import BIGINT_BACKENDS


@pytest.mark.parametrize("spec", ["ksqs:k=4,ell=8", "csqs:alpha=0.1,eta=0.05,ell=16", "qs:ell=5"])
def test_run_cell_rows_per_backend(spec: str) -> None:
    pool = codec_bench.make_pool(300, 4, np.random.default_rng(0))
    rows = codec_bench.run_cell(spec, 300, pool, blocks=2, repeats=1, backends=BIGINT_BACKENDS)
    assert [r.backend for r in rows] == list(BIGINT_BACKENDS)
    assert len({(r.bits_measured, r.bits_wire, r.mean_k, r.compress_us) for r in rows}) == 1
    table = codec_bench.markdown(rows)
    assert table.count(f"`{spec}`") == 1  # one line per cell, backends side by side
    for name in BIGINT_BACKENDS:
        assert f"total µs/token {name}" in table
