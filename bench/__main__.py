"""draftlink-bench: sweep methods × uplink rates × delays × temperatures through the real processes."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.grid import PROFILES, customise
from bench.report import append_markdown, plot, write_csv, write_json


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="draftlink-bench",
        description="Run the draftlink benchmark grid through cloud, link and edge processes.",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny", help="model pair and default grid")
    p.add_argument("--methods", help="';'-separated methods (codec specs or cloud-only)")
    p.add_argument("--rates", help="comma-separated uplink rates in bit/s (0 = unshaped)")
    p.add_argument("--delays", help="comma-separated one-way delays in ms")
    p.add_argument(
        "--temperatures", help="comma-separated temperatures of the grid (a T=0 exactness pass always runs)"
    )
    p.add_argument("--prompts", type=int, help="number of prompts per cell")
    p.add_argument("--max-tokens", type=int, help="tokens generated per prompt")
    p.add_argument("--draft-len", type=int, help="drafts per round (L)")
    p.add_argument("--cell-budget", type=float, help="seconds after which a cell stops sending prompts")
    p.add_argument("--out", default="bench/results", help="output folder (results.json, results.csv, plots)")
    p.add_argument("--doc", default="docs/BENCHMARKS.md", help="markdown file the summary is appended to")
    p.add_argument("--no-doc", action="store_true", help="do not append to the markdown file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = customise(
        PROFILES[args.profile],
        args.methods,
        args.rates,
        args.delays,
        args.temperatures,
        args.prompts,
        args.max_tokens,
        args.draft_len,
        args.cell_budget,
    )
    from tqdm import tqdm

    from bench.sweep import count_cells, sweep

    cells = count_cells(profile)
    bar = tqdm(total=cells, desc=f"bench {profile.name}", unit="cell", disable=args.quiet, file=sys.stderr)
    meta, rows = sweep(profile, bar.write, lambda: bar.update(1))
    bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "draftlink-bench " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
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
