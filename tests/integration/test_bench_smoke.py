"""Tiny-profile smoke run of draftlink-bench: outputs exist and agree with each other."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KSQS = "ksqs:k=16,ell=100"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    doc = out / "BENCH.md"
    argv = [
        "--profile",
        "tiny",
        "--methods",
        f"cloud-only;{KSQS}",
        "--rates",
        "1e6",
        "--delays",
        "5",
        "--temperatures",
        "1.0",
        "--prompts",
        "2",
        "--max-tokens",
        "12",
        "--out",
        str(out),
        "--doc",
        str(doc),
        "--quiet",
    ]
    assert main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_outputs_written(results: tuple[Path, dict[str, Any]]) -> None:
    out, data = results
    # unshaped reference (2) + greedy exactness pass (2 methods) + grid (2 methods × 1 rate × 1 T)
    assert [r["pass"] for r in data["cells"]] == ["unshaped"] * 2 + ["greedy"] * 2 + ["grid"] * 2
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert (out / "tokens_per_s_T1.0.png").stat().st_size > 0
    assert (out / "resampling_vs_bits.png").stat().st_size > 0
    # the in-process references load the models as the services report they did
    served = data["meta"]["served"]
    assert served["drafter"]["model"] == "builtin:tiny-draft"
    assert served["cloud"]["model_options"]["fast_linear"] == "false"
    text = (out / "BENCH.md").read_text()
    assert "draftlink-bench --profile tiny" in text
    assert KSQS in text


def test_cells_internally_consistent(results: tuple[Path, dict[str, Any]]) -> None:
    _, data = results
    for row in data["cells"]:
        assert row["errors"] == 0, row.get("error_sample")
        assert row["completion_tokens"] > 0
        assert row["tokens_per_s"] > 0
        assert math.isclose(row["latency_per_token_s"] * row["tokens_per_s"], 1.0, rel_tol=1e-9)
        # one record per prompt (paired across arms by index), and a bootstrap interval around the point
        assert [p["i"] for p in row["per_prompt"]] == list(range(len(row["per_prompt"])))
        lo, hi = row["tokens_per_s_ci"]
        assert lo <= row["tokens_per_s"] <= hi
        if row["method"] == "cloud-only":
            assert row["drafted"] == 0
            assert row["acceptance_rate"] is None
            continue
        assert row["drafted"] > 0
        assert 0.0 <= row["acceptance_rate"] <= 1.0
        assert math.isclose(row["mean_acceptance_length"], 1 + row["accepted"] / row["rounds"])
        # payload vs formula: only the header share of partial last blocks differs
        assert abs(row["payload_bits_per_draft_token"] - row["formula_bits_per_draft_token"]) < 40
        # the wire carries the payload plus gRPC/HTTP2 framing, never less
        assert row["wire_bits_per_draft_token"] >= row["payload_bits_per_draft_token"]
        assert row["overhead_bytes_per_block"] > 0
        terms = [row["bound_mismatch"], row["bound_sparsification"], row["bound_lattice"]]
        assert math.isclose(row["bound_total"], sum(terms))
        assert row["expected_resampling"] <= row["bound_total"] + 1e-9


def test_greedy_exact_end_to_end(results: tuple[Path, dict[str, Any]]) -> None:
    _, data = results
    greedy = [r for r in data["cells"] if r["temperature"] == 0.0 and r["method"] == KSQS]
    assert greedy
    assert all(r["greedy_equals_cloud_only"] for r in greedy)
