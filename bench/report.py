"""Benchmark outputs: results.json, results.csv, PNG plots and the docs/BENCHMARKS.md summary."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "method",
    "temperature",
    "rate_bps",
    "delay_ms",
    "draft_len",
    "requests",
    "completion_tokens",
    "tokens_per_s",
    "latency_per_token_s",
    "ttft_s",
    "acceptance_rate",
    "mean_acceptance_length",
    "resampling_rate",
    "payload_bits_per_draft_token",
    "wire_bits_per_draft_token",
    "formula_bits_per_draft_token",
    "uplink_bytes_per_token",
    "bound_mismatch",
    "bound_sparsification",
    "bound_lattice",
    "bound_total",
    "expected_resampling",
    "errors",
)


def write_json(path: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """The full record: run metadata plus one row per cell (extra keys kept)."""
    path.write_text(json.dumps({"meta": meta, "cells": list(rows)}, indent=2, default=str))


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


def rate_label(bps: float) -> str:
    """2000000 → '2 Mbit/s'; 0 → 'unshaped'."""
    if not bps:
        return "unshaped"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bit/s"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The cells as a markdown table (the columns a reader compares)."""
    head = (
        "| method | T | uplink | delay ms | tok/s | s/token | TTFT s | accept | τ | resample | "
        "bits/draft (payload / wire / formula) | uplink B/token | bound (mism + sparse + lattice) |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        if r.get("skipped"):
            lines.append(
                f"| {r['method']} | {r['temperature']} | {rate_label(r['rate_bps'])} | {r['delay_ms']} | "
                f"skipped: {r['skipped']} |" + " |" * 8
            )
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
            f"| {r['method']} | {r['temperature']} | {rate_label(r['rate_bps'])} | {r['delay_ms']} | "
            f"{_fmt(r.get('tokens_per_s'))} | {_fmt(r.get('latency_per_token_s'))} | "
            f"{_fmt(r.get('ttft_s'))} | "
            f"{_fmt(r.get('acceptance_rate'))} | {_fmt(r.get('mean_acceptance_length'))} | "
            f"{_fmt(r.get('resampling_rate'))} | {bits} | {_fmt(r.get('uplink_bytes_per_token'))} | {bound} |"
        )
    return "\n".join(lines)


def plot(out_dir: Path, rows: Sequence[dict[str, Any]], ksizes: dict[str, list[int]]) -> list[Path]:
    """tokens/s vs uplink rate per method (log x), resampling vs bits, and the C-SQS K_t histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for temp in sorted({r["temperature"] for r in rows if r["rate_bps"]}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sub = [r for r in rows if r["temperature"] == temp and r["rate_bps"]]
        for method in dict.fromkeys(r["method"] for r in sub):
            pts = sorted(
                (r["rate_bps"], r["tokens_per_s"]) for r in sub if r["method"] == method and r["tokens_per_s"]
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("uplink rate (bit/s)")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"throughput vs uplink rate, T={temp}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        path = out_dir / f"tokens_per_s_T{temp}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    spec_rows = [r for r in rows if r.get("payload_bits_per_draft_token")]
    for method in dict.fromkeys(r["method"] for r in spec_rows):
        cells = [r for r in spec_rows if r["method"] == method]
        ax.scatter(
            [r["payload_bits_per_draft_token"] for r in cells],
            [r["resampling_rate"] for r in cells],
            label=method,
        )
    ax.set_xscale("log")
    ax.set_xlabel("bits per draft token (payload)")
    ax.set_ylabel("resampling rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    path = out_dir / "resampling_vs_bits.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    for method, sizes in ksizes.items():
        if not sizes:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(sizes, bins=min(50, max(5, len(set(sizes)))))
        ax.set_xlabel("K_t (retained support size)")
        ax.set_ylabel("draft positions")
        ax.set_title(method)
        safe = method.replace("|", "_T").replace(":", "_").replace(",", "_").replace("=", "")
        path = out_dir / f"kt_hist_{safe}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def append_markdown(
    doc: Path,
    title: str,
    command: str,
    meta: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    plots: Sequence[Path],
) -> None:
    """Append a dated section with the exact command, the table and links to the plots."""
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
        "Headline comparisons (computed from the cells below):\n",
        *headline(rows, meta),
        "",
        markdown_table(rows),
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


def _cell(
    rows: Sequence[dict[str, Any]], method_prefix: str, temp: float, rate: float
) -> list[dict[str, Any]]:
    return [
        r
        for r in rows
        if r["method"].startswith(method_prefix)
        and r["temperature"] == temp
        and r["rate_bps"] == rate
        and r.get("pass", "grid") == "grid"
        and r.get("tokens_per_s")
    ]


def _ratio_line(name: str, mine: list[dict[str, Any]], other: list[dict[str, Any]]) -> str:
    best = max(other, key=lambda r: r["tokens_per_s"]) if other else None
    parts = []
    for r in mine:
        if best is None:
            parts.append(f"{r['method']}: no {name} cell")
            continue
        parts.append(
            f"{r['method']} {r['tokens_per_s']:.3g} tok/s = {r['tokens_per_s'] / best['tokens_per_s']:.2f}× "
            f"{best['method']} ({best['tokens_per_s']:.3g} tok/s; "
            f"resampling {_fmt(r.get('resampling_rate'))} vs {_fmt(best.get('resampling_rate'))})"
        )
    return "; ".join(parts)


def headline(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """The issue's target comparisons, computed from the measured cells (no figure typed by hand)."""
    grid = [r for r in rows if r.get("pass", "grid") == "grid"]
    rates = sorted({r["rate_bps"] for r in grid} & {1e6, min((r["rate_bps"] for r in grid), default=1e6)})
    out = [line for rate in rates for line in _compare_at(grid, rate)]
    out += _wire_and_reference(rows, meta)
    return out


def _compare_at(rows: Sequence[dict[str, Any]], rate: float) -> list[str]:
    """Sparse codecs vs dense:fp16 and vs the best qs, and K-SQS vs C-SQS, at one uplink rate."""
    out: list[str] = []
    for temp in sorted({r["temperature"] for r in rows}):
        sparse = _cell(rows, "ksqs", temp, rate) + _cell(rows, "csqs", temp, rate)
        out.append(
            f"- {rate_label(rate)}, T={temp}, vs dense:fp16: "
            + _ratio_line("dense:fp16", sparse, _cell(rows, "dense:fp16", temp, rate))
        )
        out.append(
            f"- {rate_label(rate)}, T={temp}, vs best qs: "
            + _ratio_line("qs", sparse, _cell(rows, "qs:", temp, rate))
        )
        k, c = _cell(rows, "ksqs", temp, rate), _cell(rows, "csqs", temp, rate)
        if k and c:
            bk, bc = max(k, key=lambda r: r["tokens_per_s"]), max(c, key=lambda r: r["tokens_per_s"])
            lead = bk if bk["tokens_per_s"] >= bc["tokens_per_s"] else bc
            out.append(
                f"- regime {rate_label(rate)}, T={temp}: {lead['method']} ahead "
                f"({bk['method']} {bk['tokens_per_s']:.3g} tok/s, "
                f"accept {_fmt(bk.get('acceptance_rate'))}; {bc['method']} {bc['tokens_per_s']:.3g} tok/s, "
                f"accept {_fmt(bc.get('acceptance_rate'))})"
            )
    return out


def _wire_and_reference(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Wire vs formula bits, edge–cloud vs one process, and the T = 0 exactness check."""
    out: list[str] = []
    wire = [
        r
        for r in rows
        if r.get("wire_bits_per_draft_token")
        and r.get("formula_bits_per_draft_token")
        and r.get("pass", "grid") == "grid"
    ]
    if wire:
        devs = {
            r["method"]: r["wire_bits_per_draft_token"] / r["formula_bits_per_draft_token"] - 1 for r in wire
        }
        pays = {
            r["method"]: r["payload_bits_per_draft_token"] / r["formula_bits_per_draft_token"] - 1
            for r in wire
        }
        out.append(
            "- bits per draft token, wire vs formula (last cell per method): "
            + ", ".join(f"{m} {100 * d:+.1f}% (payload {100 * pays[m]:+.1f}%)" for m, d in devs.items())
        )
    ref = meta.get("inprocess") or {}
    uns = [r for r in rows if r.get("pass") == "unshaped" and r["method"] == ref.get("method")]
    if uns and ref.get("tokens_per_s") and uns[0].get("tokens_per_s"):
        mine, theirs = uns[0]["tokens_per_s"], ref["tokens_per_s"]
        out.append(
            f"- unshaped link, {ref['method']} T={ref['temperature']}: edge–cloud {mine:.3g} tok/s "
            f"vs one process {theirs:.3g} tok/s = {mine / theirs:.0%}"
        )
    greedy = [r for r in rows if "greedy_equals_cloud_only" in r]
    if greedy:
        bad = [r["method"] for r in greedy if not r["greedy_equals_cloud_only"]]
        out.append(
            f"- T=0 text equals cloud-only for {len(greedy) - len(bad)}/{len(greedy)} methods"
            + (f" (differs: {', '.join(bad)})" if bad else "")
        )
    return out
