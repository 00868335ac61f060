"""Headline comparisons computed from the cells: paired bootstrap ratios over prompts, never typed by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.methods import base_label, parse_method
from bench.stats import Estimate, paired_ratio, verdict

Row = dict[str, Any]
WIRE_TARGET_BYTES = 32.0


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def rate_label(bps: float) -> str:
    """2000000 → '2 Mbit/s'; 0 → 'unshaped'."""
    if not bps:
        return "unshaped"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bit/s"


def link_label(row: Row) -> str:
    """'1 Mbit/s' or the Markov schedule's two rates, e.g. 'markov 2↔6 Mbit/s'."""
    sched = row.get("schedule")
    if sched:
        kv = dict(x.split("=", 1) for x in sched.partition(":")[2].split(",") if "=" in x)
        lo, hi = sorted((float(kv["bad"]), float(kv["good"])))
        return f"markov {rate_label(lo)}↔{rate_label(hi)}"
    return rate_label(row["rate_bps"])


def pairs(
    row: Row, num: str = "tokens", den: str = "seconds", domain: str | None = None
) -> dict[int, tuple[float, float]]:
    """prompt index → (num, den) of a cell's successful requests (of one prompt domain if given)."""
    return {
        int(p["i"]): (float(p[num]), float(p[den]))
        for p in row.get("per_prompt", [])
        if den in p and (domain is None or p.get("domain") == domain)
    }


def cell_label(row: Row) -> str:
    """'1 Mbit/s, 20 ms, T=0.4': the link setting and temperature a headline line is about."""
    return f"{link_label(row)}, {row['delay_ms']:g} ms, T={row['temperature']}"


def ratio(a: Row, b: Row) -> Estimate:
    """Paired tokens/s ratio a ÷ b over the prompts both completed."""
    return paired_ratio(pairs(a), pairs(b))


def acceptance_text(a: Row, b: Row) -> str:
    """Paired acceptance-rate ratio a ÷ b (accepted / drafted per prompt) with its interval."""
    r = paired_ratio(pairs(a, "accepted", "drafted"), pairs(b, "accepted", "drafted"))
    if r.value is None:
        return "acceptance ratio –"
    ci = f" [{_fmt(r.lo)}, {_fmt(r.hi)}]" if r.lo is not None else ""
    return f"acceptance ratio {_fmt(r.value)}×{ci} ({verdict(r)})"


def ratio_text(a: Row, b: Row, target: float | None = None) -> str:
    r = ratio(a, b)
    ci = f" [{_fmt(r.lo)}, {_fmt(r.hi)}]" if r.lo is not None else ""
    goal = f"; goal ≥ {target:g}× {'met' if r.value and r.value >= target else 'missed'}" if target else ""
    return (
        f"{a['method']} ÷ {b['method']} = {_fmt(r.value)}×{ci} ({verdict(r)}; "
        f"{_fmt(a.get('tokens_per_s'))} vs {_fmt(b.get('tokens_per_s'))} tok/s, "
        f"n={len(set(pairs(a)) & set(pairs(b)))}"
        f"{goal})"
    )


def groups(rows: Sequence[Row]) -> dict[tuple[str, float, str | None, float, float], list[Row]]:
    """Cells sharing one link setting and temperature (pass, rate, schedule, delay, T)."""
    out: dict[tuple[str, float, str | None, float, float], list[Row]] = {}
    for r in rows:
        if r.get("pass") in ("grid", "markov") and r.get("tokens_per_s") and not r.get("skipped"):
            out.setdefault(
                (r["pass"], r["rate_bps"], r.get("schedule"), r["delay_ms"], r["temperature"]), []
            ).append(r)
    return out


def _best(cells: Sequence[Row], pred: Any) -> Row | None:
    pick = [r for r in cells if pred(r["method"])]
    return max(pick, key=lambda r: r["tokens_per_s"]) if pick else None


def _serial_codec(prefix: str) -> Any:
    return lambda m: m.startswith(prefix)


def compare_codecs(rows: Sequence[Row]) -> list[str]:
    """Regime (K-SQS vs C-SQS), sparse vs best QS (goal 1.2×), sparse vs dense:fp16, per link and T."""
    out: list[str] = []
    for cells in groups(rows).values():
        where = cell_label(cells[0])
        k, c = _best(cells, _serial_codec("ksqs")), _best(cells, _serial_codec("csqs"))
        if k and c:
            r = ratio(k, c)
            lead = {"ahead": "K-SQS ahead", "behind": "C-SQS ahead"}.get(
                verdict(r), "K-SQS and C-SQS not separated"
            )
            out.append(f"- regime, {where}: {lead}: {ratio_text(k, c)}; {acceptance_text(k, c)}")
        qs = _best(cells, _serial_codec("qs:"))
        sparse = [r for r in cells if r["method"].startswith(("ksqs", "csqs"))]
        if qs:
            out += [f"- sparse vs best QS, {where}: {ratio_text(s, qs, 1.2)}" for s in sparse]
        dense = _best(cells, lambda m: m == "dense:fp16")
        if dense:
            out += [f"- sparse vs dense:fp16, {where}: {ratio_text(s, dense)}" for s in sparse]
    return out


def compare_streamed(rows: Sequence[Row], streamed_goal: float) -> list[str]:
    """Streamed ÷ serial (same codec), adaptive ÷ best static arm, per link and T."""
    out: list[str] = []
    for (kind, *_), cells in groups(rows).items():
        where = cell_label(cells[0])
        by_label = {r["method"]: r for r in cells}
        for r in cells:
            m = parse_method(r["method"])
            if m.pipeline and m.codec and base_label(r["method"]) in by_label:
                serial = by_label[base_label(r["method"])]
                out.append(f"- streamed ÷ serial, {where}: {ratio_text(r, serial, streamed_goal)}")
        static = _best(cells, lambda lbl: parse_method(lbl).static)
        goal = 1.10 if kind == "markov" else 0.97
        for r in cells:
            if parse_method(r["method"]).adaptive and static is not None:
                out.append(f"- adaptive ÷ best static, {where}: {ratio_text(r, static, goal)}")
    return out


def wire_lines(rows: Sequence[Row]) -> list[str]:
    """Uplink overhead bytes per block by method (shaped grid cells), against the 32-byte target."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r.get("pass") in ("grid", "markov") and r.get("overhead_bytes_per_block") is not None:
            per.setdefault(r["method"], []).append(float(r["overhead_bytes_per_block"]))
    if not per:
        return []
    parts = [f"{m} {min(v):.1f}–{max(v):.1f}" for m, v in per.items()]
    worst = max(max(v) for v in per.values())
    status = "met" if worst <= WIRE_TARGET_BYTES else "missed"
    return [
        "- uplink overhead bytes per block ((link bytes − payload − OpenSession) / blocks, range over "
        "cells): " + ", ".join(parts) + f"; target ≤ {WIRE_TARGET_BYTES:g} B {status}"
    ]


def concurrency_lines(rows: Sequence[Row], at: int, goal: float) -> list[str]:
    """Aggregate speed-up at `at` clients vs the first level, and p95 latency growth (≤ 3×)."""
    lv = {r["concurrency"]: r for r in rows if r.get("pass") == "concurrency"}
    if not lv:
        return []
    out = []
    for c, r in sorted(lv.items()):
        mark = (
            f" (goal ≥ {goal:g}× {'met' if (r.get('speedup') or 0) >= goal else 'missed'})" if c == at else ""
        )
        p95 = r.get("p95_vs_first")
        out.append(
            f"- {c} clients: {_fmt(r.get('aggregate_tokens_per_s'))} tok/s aggregate = "
            f"{_fmt(r.get('speedup'))}× "
            f"the first level{mark}; p95 latency {_fmt(r.get('latency_p95_s'))} s = {_fmt(p95)}× "
            f"({'≤ 3× met' if p95 is not None and p95 <= 3 else '≤ 3× missed'}); fairness max/min "
            f"{_fmt(r.get('fairness_max_over_min'))}; mean batch {_fmt(r.get('mean_batch_size'))}"
        )
    return out


def reference_lines(rows: Sequence[Row], meta: dict[str, Any]) -> list[str]:
    """Edge–cloud vs one process (unshaped), and the T = 0 exactness check."""
    out: list[str] = []
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


def headline(rows: Sequence[Row], meta: dict[str, Any]) -> list[str]:
    """Every comparison the issues set targets for, from the cells present."""
    tiny = "tiny" in str(meta.get("models", ""))
    return [
        *compare_codecs(rows),
        *compare_streamed(rows, 1.5 if tiny else 1.25),
        *wire_lines(rows),
        *concurrency_lines(rows, 16 if tiny else 8, 6.0 if tiny else 2.5),
        *reference_lines(rows, meta),
    ]
