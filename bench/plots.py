"""Benchmark plots: tokens/s vs rate (with CIs), resampling vs bits, K_t, time breakdown, concurrency."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.headline import link_label
from bench.methods import parse_method

Row = dict[str, Any]
COMPONENTS = ("draft", "codec", "uplink", "queue", "verify", "downlink", "other")
# "other": wall time no timer accounts for (event loops, gRPC, HTTP, scheduling on a busy host)


def breakdown(row: Row) -> dict[str, float] | None:
    """Where a cell's time went, in seconds per generated token (method.md §8 terms).

    draft/codec/verify/queue: the edge's and cloud's own timers (summed over requests); uplink:
    wire bytes at the link rate plus one-way delay per block; downlink: one-way delay per verdict
    plus bytes at the downlink rate. For streamed arms the terms overlap, so their sum exceeds the
    wall time per token ("other" is then 0 and the overlap is the excess).
    """
    tokens, rate = row.get("completion_tokens") or 0, row.get("rate_bps") or 0.0
    if not tokens or not rate or not row.get("blocks"):
        return None
    d = row["delay_ms"] / 1000.0
    draft, codec = row.get("draft_seconds", 0.0), row.get("codec_seconds", 0.0)
    verify, queue = row.get("verify_seconds", 0.0), row.get("queue_seconds", 0.0)
    parts = {
        "draft": draft - codec,
        "codec": codec,
        "uplink": 8 * row["wire_uplink_bytes"] / rate + row["blocks"] * d,
        "queue": queue,
        "verify": verify - queue,
        "downlink": row["rounds"] * d,
    }
    wall = row["seconds"]
    parts["other"] = max(0.0, wall - sum(parts.values()))
    out = {k: v / tokens for k, v in parts.items()}
    out["wall"] = wall / tokens
    return out


def _save(fig: Any, path: Path, paths: list[Path]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)


def _throughput(out_dir: Path, rows: Sequence[Row], paths: list[Path]) -> None:
    import matplotlib.pyplot as plt

    grid = [r for r in rows if r.get("pass") == "grid" and r.get("rate_bps")]
    for temp in sorted({r["temperature"] for r in grid}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sub = [r for r in grid if r["temperature"] == temp and r.get("tokens_per_s")]
        for method in dict.fromkeys(r["method"] for r in sub):
            pts = sorted(
                (r["rate_bps"], r["tokens_per_s"], *(r.get("tokens_per_s_ci") or [None, None]))
                for r in sub
                if r["method"] == method
            )
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            err = [
                [max(0.0, y - (p[2] or y)) for y, p in zip(ys, pts, strict=True)],
                [max(0.0, (p[3] or y) - y) for y, p in zip(ys, pts, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("uplink rate (bit/s)")
        ax.set_ylabel("tokens/s (95 % CI over prompts)")
        ax.set_title(f"throughput vs uplink rate, T={temp}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        _save(fig, out_dir / f"tokens_per_s_T{temp}.png", paths)


def _resampling(out_dir: Path, rows: Sequence[Row], paths: list[Path]) -> None:
    import matplotlib.pyplot as plt

    spec_rows = [
        r
        for r in rows
        if r.get("payload_bits_per_draft_token")
        and r.get("resampling_rate") is not None
        and r.get("pass") != "concurrency"
    ]
    if not spec_rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
    _save(fig, out_dir / "resampling_vs_bits.png", paths)


def _kt(out_dir: Path, ksizes: dict[str, list[int]], paths: list[Path]) -> None:
    import matplotlib.pyplot as plt

    for method, sizes in ksizes.items():
        if not sizes:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(sizes, bins=min(50, max(5, len(set(sizes)))))
        ax.set_xlabel("K_t (retained support size)")
        ax.set_ylabel("draft positions")
        ax.set_title(method)
        safe = method.replace("|", "_T").replace(":", "_").replace(",", "_").replace("=", "")
        _save(fig, out_dir / f"kt_hist_{safe}.png", paths)


def _breakdowns(out_dir: Path, rows: Sequence[Row], paths: list[Path]) -> None:
    """Stacked time per token per arm, one figure per link setting that has a streamed arm."""
    import matplotlib.pyplot as plt

    groups: dict[tuple[float, float, float], list[Row]] = {}
    for r in rows:
        if r.get("pass") == "grid" and breakdown(r) is not None:
            groups.setdefault((r["rate_bps"], r["delay_ms"], r["temperature"]), []).append(r)
    chosen = {k: v for k, v in groups.items() if any(parse_method(r["method"]).pipeline for r in v)}
    for (rate, delay, temp), cells in (chosen or dict(list(groups.items())[:1])).items():
        fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cells)), 4.5))
        bottoms = [0.0] * len(cells)
        parts = [breakdown(r) or {} for r in cells]
        for comp in COMPONENTS:
            vals = [1000 * p.get(comp, 0.0) for p in parts]
            ax.bar(range(len(cells)), vals, bottom=bottoms, label=comp)
            bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
        ax.scatter(
            range(len(cells)),
            [1000 * p["wall"] for p in parts],
            color="black",
            marker="_",
            s=600,
            zorder=3,
            label="wall",
        )
        ax.set_xticks(range(len(cells)), [r["method"].replace(":", ":\n", 1) for r in cells], fontsize=6)
        ax.set_ylim(0, 1.1 * max([*bottoms, *(1000 * p["wall"] for p in parts)]))
        ax.set_ylabel("ms per generated token")
        ax.set_title(f"where the time goes: {link_label(cells[0])}, {delay:g} ms, T={temp}")
        ax.legend(fontsize=7, ncol=2)
        _save(fig, out_dir / f"breakdown_{int(rate)}_{delay:g}ms_T{temp}.png", paths)


def _concurrency(out_dir: Path, rows: Sequence[Row], paths: list[Path]) -> None:
    import matplotlib.pyplot as plt

    lv = sorted(
        (r for r in rows if r.get("pass") == "concurrency" and r.get("aggregate_tokens_per_s")),
        key=lambda r: r["concurrency"],
    )
    if not lv:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["concurrency"] for r in lv]
    ax.plot(xs, [r["aggregate_tokens_per_s"] for r in lv], marker="o", label="aggregate tok/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("aggregate tokens/s")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["latency_p50_s"] for r in lv], "s--", color="gray", label="p50 latency")
    ax2.plot(xs, [r["latency_p95_s"] for r in lv], "^--", color="black", label="p95 latency")
    ax2.set_ylabel("request latency (s)")
    fig.legend(fontsize=7, loc="upper left")
    _save(fig, out_dir / "concurrency.png", paths)


def plot(out_dir: Path, rows: Sequence[Row], ksizes: dict[str, list[int]]) -> list[Path]:
    """Every plot the rows support; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    paths: list[Path] = []
    _throughput(out_dir, rows, paths)
    _resampling(out_dir, rows, paths)
    _kt(out_dir, ksizes, paths)
    _breakdowns(out_dir, rows, paths)
    _concurrency(out_dir, rows, paths)
    return paths
