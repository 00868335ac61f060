"""bench.device_check planning: model fallback, flags given to the cloud and edges, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import device_check as dc


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("DEVICE", "OUT", dc.TARGET_ENV, dc.DRAFTER_ENV):
        monkeypatch.delenv(key, raising=False)


def test_missing_qwen_falls_back_to_tiny_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRAFTLINK_CACHE_DIR", str(tmp_path))
    target, drafter, note = dc.resolve_models("auto", dry_run=False)
    assert (target, drafter) == dc.TINY
    assert note is not None
    assert "NOT FOUND" in note
    assert str(tmp_path) in note
    with pytest.raises(SystemExit, match="not fetched"):
        dc.resolve_models("qwen", dry_run=False)


def test_env_specs_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dc.TARGET_ENV, "hf:/m/target")
    monkeypatch.setenv(dc.DRAFTER_ENV, "hf:/m/draft")
    assert dc.resolve_models("auto", dry_run=False) == ("hf:/m/target", "hf:/m/draft", None)
    monkeypatch.delenv(dc.DRAFTER_ENV)
    with pytest.raises(SystemExit, match="both"):
        dc.resolve_models("auto", dry_run=False)


def test_device_plan_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dc.TARGET_ENV, "hf:/m/target")
    monkeypatch.setenv(dc.DRAFTER_ENV, "hf:/m/draft")
    plan = dc.make_plan(dc.parse_args([]))
    assert (plan.device, plan.dtype, plan.sessions, plan.max_tokens) == (
        "cuda",
        "bfloat16",
        (1, 8, 32, 64),
        64,
    )
    cloud = plan.cloud_args()
    assert cloud[:4] == ("--device", "cuda", "--dtype", "bfloat16")
    assert cloud[cloud.index("--max-batch-sessions") + 1] == "64"
    assert int(cloud[cloud.index("--max-sessions") + 1]) >= 64
    edge = plan.edge_args()
    assert int(edge[edge.index("--max-concurrency") + 1]) * plan.edges >= 64
    assert "--int8" in edge  # not the tiny drafter


def test_dry_run_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("OUT", str(tmp_path))
    plan = dc.make_plan(dc.parse_args([]))
    assert plan.dry_run
    assert (plan.device, plan.dtype) == ("cpu", "float32")
    assert (plan.target, plan.drafter, plan.models_note) == (*dc.TINY, None)
    assert plan.sessions == (1, 2)
    assert plan.out == str(tmp_path)
    assert "--int8" not in plan.edge_args()


def test_table_marks_skipped_levels() -> None:
    row = {
        "method": "cloud-only",
        "sessions": 1,
        "requests": 1,
        "errors": 0,
        "aggregate_tokens_per_s": 10.0,
        "latency_p50_s": 1.0,
        "latency_p95_s": 1.0,
        "mean_batch_sessions": 1.0,
        "mean_batch_tokens": 5.0,
        "acceptance_rate": None,
    }
    text = dc.table(
        [
            row,
            {**row, "sessions": 8, "aggregate_tokens_per_s": 40.0},
            {"method": "cloud-only", "sessions": 64, "skipped": "budget 420 s"},
        ]
    )
    lines = text.splitlines()
    assert len(lines) == 5
    assert "| 40 | 4 |" in lines[3]
    assert "skipped: budget 420 s" in lines[4]
