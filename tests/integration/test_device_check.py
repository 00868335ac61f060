"""bench/device_check.sh --dry-run: the device check's whole path on the CPU with the tiny pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.device_check import METHODS, RESULTS, TABLE

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # 33–80 s on the shared 2-core machine

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_rows(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("DEVICE", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "device_check.sh"), "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / RESULTS).read_text())
    rows = data["rows"]
    assert [(r["method"], r["sessions"]) for r in rows] == [(m, n) for m in METHODS for n in (1, 2)]
    for r in rows:
        assert r["errors"] == 0
        assert r["requests"] == r["sessions"]
        assert r["aggregate_tokens_per_s"] > 0
        assert r["completion_tokens"] == 16 * r["sessions"]  # ignore_eos: every request runs to max_tokens
        assert r["latency_p50_s"] <= r["latency_p95_s"]
        assert r["mean_batch_sessions"] >= 1  # the cloud's draftlink_batch_sessions histogram moved
    plan = data["meta"]["plan"]
    assert plan["dry_run"]
    assert plan["device"] == "cpu"
    assert plan["edges"] == 2
    assert plan["models_note"] is None
    table = (tmp_path / TABLE).read_text()
    assert table.count("\n| ") == 1 + len(rows)  # header (after the title) + one line per level
    assert "| aggregate tok/s |" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["cloud.log", "edge.log", "edge2.log"]
