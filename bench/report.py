"""Benchmark outputs: results.json, results.csv and the docs/BENCHMARKS.md summary (plots: bench/plots.py)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.headline import headline, link_label, rate_label

__all__ = ["append_markdown", "markdown_table", "rate_label", "write_csv", "write_json"]

COLUMNS = (
    "pass",
    "method",
    "temperature",
    "rate_bps",
    "schedule",
    "delay_ms",
    "draft_len",
    "requests",
    "completion_tokens",
    "tokens_per_s",
    "tokens_per_s_ci",
    "latency_per_token_s",
    "ttft_s",
    "acceptance_rate",
    "acceptance_rate_ci",
    "mean_acceptance_length",
    "resampling_rate",
    "resampling_rate_ci",
    "mean_draft_len",
    "payload_bits_per_draft_token",
    "wire_bits_per_draft_token",
    "formula_bits_per_draft_token",
    "uplink_bytes_per_token",
    "overhead_bytes_per_block",
    "bound_mismatch",
    "bound_sparsification",
    "bound_lattice",
    "bound_total",
    "expected_resampling",
    "concurrency",
    "aggregate_tokens_per_s",
    "latency_p50_s",
    "latency_p95_s",
    "fairness_max_over_min",
    "mean_batch_size",
    "errors",
)


def write_json(path: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """The full record: run metadata plus one row per cell (per-prompt records included)."""
    path.write_text(json.dumps({"meta": meta, "cells": list(rows)}, indent=1, default=str))


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One row per cell with the COLUMNS above."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _ci(row: dict[str, Any], key: str) -> str:
    """'12.3 [11.0, 13.9]' (the 95 % bootstrap interval over prompts when there is one)."""
    lo, hi = (row.get(f"{key}_ci") or [None, None])[:2]
    base = _fmt(row.get(key))
    return base if lo is None or hi is None else f"{base} [{_fmt(lo)}, {_fmt(hi)}]"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Request-pass cells as a markdown table (95 % bootstrap intervals over prompts in brackets)."""
    head = (
        "| pass | method | T | uplink | delay ms | n | tok/s | TTFT s | accept | resample | L̄ | "
        "bits/draft (payload / wire / formula) | overhead B/block | bound (mism + sparse + lattice) |"
    )
    lines = [head, "|" + "---|" * 14]
    if all(r.get("pass") == "concurrency" for r in rows):
        return ""
    for r in rows:
        if r.get("pass") == "concurrency":
            continue
        where = f"| {r['pass']} | {r['method']} | {r['temperature']} | {link_label(r)} | {r['delay_ms']} |"
        if r.get("skipped") and not r.get("completion_tokens"):
            lines.append(f"{where} – | skipped: {str(r['skipped'])[:90]} |" + " |" * 7)
            continue
        bits = " / ".join(
            _fmt(r.get(k), 4)
            for k in (
                "payload_bits_per_draft_token",
                "wire_bits_per_draft_token",
                "formula_bits_per_draft_token",
            )
        )
        bound = (
            f"{_fmt(r.get('bound_total'))} ({_fmt(r.get('bound_mismatch'))} + "
            f"{_fmt(r.get('bound_sparsification'))} + {_fmt(r.get('bound_lattice'))})"
            if r.get("bound_total") is not None
            else "–"
        )
        lines.append(
            f"{where} {len(r.get('per_prompt', []))} | {_ci(r, 'tokens_per_s')} | {_fmt(r.get('ttft_s'))} | "
            f"{_ci(r, 'acceptance_rate')} | {_ci(r, 'resampling_rate')} | {_fmt(r.get('mean_draft_len'))} | "
            f"{bits} | {_fmt(r.get('overhead_bytes_per_block'))} | {bound} |"
        )
    return "\n".join(lines)


def concurrency_table(rows: Sequence[dict[str, Any]]) -> str:
    """The concurrency pass: one line per level."""
    lv = [r for r in rows if r.get("pass") == "concurrency"]
    if not lv:
        return ""
    lines = [
        "| clients | edges | requests | aggregate tok/s | speed-up | p50 s | p95 s | p95 ÷ first | "
        "per-request tok/s min–max | max/min | mean batch (verdicts) | cloud batch histograms |",
        "|" + "---|" * 12,
    ]
    for r in lv:
        hist = "; ".join(
            f"{name}: mean {_fmt(h['mean'])}, p50 ≤ {h['p50']}, p95 ≤ {h['p95']}"
            for name, h in (r.get("cloud_histograms") or {}).items()
        )
        lines.append(
            f"| {r['concurrency']} | {r.get('edges', 1)} | {r['requests']} | "
            f"{_fmt(r.get('aggregate_tokens_per_s'))} | "
            f"{_fmt(r.get('speedup'))} | {_fmt(r.get('latency_p50_s'))} | {_fmt(r.get('latency_p95_s'))} | "
            f"{_fmt(r.get('p95_vs_first'))} | {_fmt(r.get('request_tokens_per_s_min'))}–"
            f"{_fmt(r.get('request_tokens_per_s_max'))} | {_fmt(r.get('fairness_max_over_min'))} | "
            f"{_fmt(r.get('mean_batch_size'))} | {hist or 'not exported by this cloud'} |"
        )
    return "\n".join(lines)


def append_markdown(
    doc: Path,
    title: str,
    command: str,
    meta: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    plots: Sequence[Path],
) -> None:
    """Append a dated section with the exact command, the headline comparisons, tables and plots."""
    parts = [
        f"\n## {title}\n",
        f"Command: `{command}`  ",
        *(
            [f"Rendered from the stored results by: `{meta['rendered_by']}`  "]
            if meta.get("rendered_by")
            else []
        ),
        f"Date: {meta.get('date')}; machine: {meta.get('machine')}; models: {meta.get('models')}; "
        f"prompts: {meta.get('prompts')}; max_tokens: {meta.get('max_tokens')}.\n",
        "Headline comparisons (paired bootstrap over prompts, 95 % intervals; 'ahead' only when the "
        "interval of the ratio excludes 1):\n",
        *headline(rows, meta),
        "",
        markdown_table(rows),
        "",
        concurrency_table(rows),
        "",
    ]
    for p in plots:  # embedded, relative to the markdown file when they live under its folder
        try:
            rel = p.resolve().relative_to(doc.resolve().parent)
        except ValueError:
            rel = p
        parts.append(f"![{p.stem}]({rel})")
    doc.parent.mkdir(parents=True, exist_ok=True)
    with doc.open("a") as fh:
        fh.write("\n".join(parts) + "\n")
