"""Paired arm comparisons within prompt subsets (e.g. code vs English) from a stored results.json."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from bench.headline import Row, cell_label, groups, pairs
from bench.stats import Estimate, paired_ratio, verdict

METRICS = {"tok/s": ("tokens", "seconds"), "acceptance": ("accepted", "drafted")}


def split_ratios(rows: Sequence[Row], a: str, b: str) -> list[tuple[str, str, str, Estimate]]:
    """(cell, domain, metric, a ÷ b) for every grid/markov cell holding both arms (prefix match)."""
    out: list[tuple[str, str, str, Estimate]] = []
    for cells in groups(rows).values():
        ra = next((r for r in cells if r["method"].startswith(a)), None)
        rb = next((r for r in cells if r["method"].startswith(b)), None)
        if ra is None or rb is None:
            continue
        domains = sorted({str(p["domain"]) for p in ra["per_prompt"] if p.get("domain")})
        for domain in [None, *domains]:
            for metric, (num, den) in METRICS.items():
                est = paired_ratio(pairs(ra, num, den, domain), pairs(rb, num, den, domain))
                out.append((cell_label(ra), domain or "all", metric, est))
    return out


def render(rows: Sequence[Row], a: str, b: str) -> str:
    """A markdown table of split_ratios."""
    lines = [f"| cell | prompts | metric | {a} ÷ {b} [95 % CI] | verdict |", "|---|---|---|---|---|"]
    for where, domain, metric, est in split_ratios(rows, a, b):
        if est.value is None:
            continue
        ci = f" [{est.lo:.3g}, {est.hi:.3g}]" if est.lo is not None and est.hi is not None else ""
        lines.append(f"| {where} | {domain} | {metric} | {est.value:.3g}×{ci} | {verdict(est)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.split", description=__doc__)
    p.add_argument("results", nargs="+", type=Path, help="results.json files written by draftlink-bench")
    p.add_argument("--a", default="ksqs", help="method prefix of the numerator arm (default ksqs)")
    p.add_argument("--b", default="csqs", help="method prefix of the denominator arm (default csqs)")
    args = p.parse_args(argv)
    rows: list[Row] = []
    for path in args.results:
        rows += json.loads(path.read_text())["cells"]
    print(render(rows, args.a, args.b))


if __name__ == "__main__":
    main()
