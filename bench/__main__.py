"""draftlink-bench: sweep methods × uplink rates × delays × temperatures through the real processes."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.grid import PASSES, PROFILES, Profile, customise
from bench.plots import plot
from bench.report import append_markdown, write_csv, write_json


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="draftlink-bench",
        description="Run the draftlink benchmark grid through cloud, link and edge processes.",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny", help="model pair and default grid")
    p.add_argument(
        "--methods",
        help="';'-separated arms: codec specs, cloud-only, pipelined:<codec>, adaptive, adaptive-pipelined",
    )
    p.add_argument("--passes", help=f"comma-separated passes to run, of: {', '.join(PASSES)}")
    p.add_argument("--rates", help="comma-separated uplink rates in bit/s (0 = unshaped)")
    p.add_argument("--delays", help="comma-separated one-way delays in ms")
    p.add_argument(
        "--temperatures", help="comma-separated temperatures of the grid (the greedy pass runs T=0)"
    )
    p.add_argument("--markov", help="';'-separated link --schedule specs for the markov pass")
    p.add_argument(
        "--concurrency", help="comma-separated client counts for the concurrency pass, e.g. 1,4,16,32"
    )
    p.add_argument(
        "--edges", type=int, help="edge processes (the concurrency pass spreads clients over them)"
    )
    p.add_argument("--prompts", type=int, help="number of prompts per cell (each has its own seed)")
    p.add_argument("--max-tokens", type=int, help="tokens generated per prompt")
    p.add_argument("--draft-len", type=int, help="drafts per round (L) of the static arms")
    p.add_argument(
        "--cell-budget", type=float, help="seconds per cell after which a pass stops starting prompts"
    )
    p.add_argument(
        "--out", help="output folder for results.json, results.csv and plots (default: docs/bench/<profile>)"
    )
    p.add_argument("--doc", default="docs/BENCHMARKS.md", help="markdown file the summary is appended to")
    p.add_argument("--no-doc", action="store_true", help="do not append to the markdown file")
    p.add_argument(
        "--no-references",
        action="store_true",
        help="skip the in-process references and bound terms after the passes (tables show –)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--from-results",
        metavar="JSON",
        help="re-render plots and the markdown summary from a stored results.json (no run)",
    )
    return p.parse_args(argv)


def run(profile: Profile, quiet: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sweep with a progress bar (one tick per request)."""
    from tqdm import tqdm

    from bench.sweep import count_requests, sweep

    total = count_requests(profile) + sum(c * profile.requests_per_client for c in profile.concurrency)
    bar = tqdm(total=total, desc=f"bench {profile.name}", unit="req", disable=quiet, file=sys.stderr)
    try:
        return sweep(profile, bar.write, lambda: bar.update(1))
    finally:
        bar.close()


def rerender(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Stored measurements; derived formula columns recomputed with the current code."""
    from bench.methods import codec_of
    from bench.sweep import formula_bits

    data = json.loads(path.read_text())
    meta, rows = data["meta"], data["cells"]
    vocab = meta.get("vocab_size")
    for row in rows:
        codec = codec_of(row["method"])
        if vocab and codec is not None:
            ks = meta.get("ksizes", {}).get(f"{codec}|{row['temperature']}")
            row["formula_bits_per_draft_token"] = formula_bits(codec, vocab, row["draft_len"], ks)
    return meta, rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = customise(
        PROFILES[args.profile],
        methods=args.methods,
        passes=args.passes,
        rates_bps=args.rates,
        delays_ms=args.delays,
        temperatures=args.temperatures,
        markov=args.markov,
        concurrency=args.concurrency,
        edges=args.edges,
        num_prompts=args.prompts,
        max_tokens=args.max_tokens,
        draft_len=args.draft_len,
        cell_budget_s=args.cell_budget,
        references=False if args.no_references else None,
    )
    out = Path(args.out or f"docs/bench/{profile.name}")
    out.mkdir(parents=True, exist_ok=True)
    command = "draftlink-bench " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.from_results:
        meta, rows = rerender(Path(args.from_results))
        meta["rendered_by"] = command
        command = str(meta.get("command", command))
    else:
        meta, rows = run(profile, args.quiet)
        meta["command"] = command
    write_json(out / "results.json", meta, rows)
    write_csv(out / "results.csv", rows)
    plots = plot(out, rows, meta.get("ksizes", {}))
    if not args.no_doc:
        append_markdown(Path(args.doc), f"Sweep: profile {profile.name}", command, meta, rows, plots)
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'} and {len(plots)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
