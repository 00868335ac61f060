"""Device check (issue 10): the Qwen pair served batched on one CUDA GPU, tokens/s at 1/8/32/64 sessions."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.grid import CODE, KSQS16, Profile
from bench.methods import CLOUD_ONLY
from bench.runner import Prompt

SESSIONS = (1, 8, 32, 64)
DRY_SESSIONS = (1, 2)
METHODS = (KSQS16, CLOUD_ONLY)
TARGET_ENV, DRAFTER_ENV = "DRAFTLINK_DEVICE_TARGET", "DRAFTLINK_DEVICE_DRAFTER"
QWEN = ("builtin:qwen2.5-coder-1.5b", "builtin:qwen2.5-coder-0.5b")
TINY = ("builtin:tiny-target", "builtin:tiny-draft")
RESULTS, TABLE = "device_check.json", "device_check.md"


@dataclass(frozen=True)
class Plan:
    """Everything one device check runs with (stored in the JSON as `plan`)."""

    dry_run: bool
    device: str  # the cloud's --device: cuda, or cpu in the dry run
    dtype: str
    target: str
    drafter: str
    models_note: str | None  # set when the models are not the fetched Qwen pair
    sessions: tuple[int, ...]
    methods: tuple[str, ...]
    max_tokens: int
    temperature: float
    requests_per_session: int
    edges: int
    edge_threads: int
    max_batch_tokens: int
    max_batch_sessions: int
    batch_wait_ms: float
    budget_s: float
    out: str

    def cloud_args(self) -> tuple[str, ...]:
        top = max(self.sessions)
        return (
            *("--device", self.device, "--dtype", self.dtype),
            *("--max-sessions", str(2 * top + 8)),  # one stream per request, plus slack for restarts
            *("--max-batch-tokens", str(self.max_batch_tokens)),
            *("--max-batch-sessions", str(self.max_batch_sessions)),
            *("--batch-wait-ms", f"{self.batch_wait_ms:g}"),
        )

    def edge_args(self) -> tuple[str, ...]:
        per_edge = math.ceil(max(self.sessions) / self.edges) + 2
        args = [
            *("--max-concurrency", str(per_edge)),
            *("--request-timeout", "900"),
        ]
        if self.edge_threads:
            args += ["--threads", str(self.edge_threads)]
        if not self.drafter.startswith("builtin:tiny"):
            args.append("--int8")  # drafter on the CPU: int8 steps are several times faster
        return tuple(args)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/device_check.sh",
        description=(
            "Serve the draftlink pair batched (cloud on CUDA in bfloat16, edges drafting on the CPU) "
            "and print aggregate tokens/s, p50/p95 latency and the cloud's mean batch size per level "
            "of concurrent sessions."
        ),
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny pair, sessions 1,2, 16 tokens (also with env DEVICE=cpu): tests the path",
    )
    p.add_argument(
        "--models",
        choices=("auto", "qwen", "tiny"),
        default="auto",
        help=f"auto: the fetched Qwen pair, else the tiny pair with a warning; ${TARGET_ENV} and "
        f"${DRAFTER_ENV} (model specs, e.g. hf:/path/to/dir) override (default: auto)",
    )
    p.add_argument("--sessions", type=_ints, help="concurrent session levels (default 1,8,32,64; dry: 1,2)")
    p.add_argument(
        "--methods",
        help=f"';'-separated arms, each run over every level (default '{';'.join(METHODS)}')",
    )
    p.add_argument("--max-tokens", type=int, help="tokens per request, ignore_eos (default 64; dry: 16)")
    p.add_argument("--temperature", type=float, default=0.4, help="sampling temperature (default 0.4)")
    p.add_argument(
        "--requests-per-session", type=int, default=1, help="requests each session sends per level"
    )
    p.add_argument("--edges", type=int, help="edge processes; sessions spread over them (default 4; dry: 2)")
    p.add_argument(
        "--edge-threads", type=int, help="torch threads per edge drafter (default 3; dry: torch's default)"
    )
    p.add_argument("--max-batch-tokens", type=int, default=4096, help="cloud --max-batch-tokens")
    p.add_argument(
        "--max-batch-sessions", type=int, help="cloud --max-batch-sessions (default: the largest level)"
    )
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="cloud --batch-wait-ms (default 2)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="no level starts after this many seconds from the start (default 420)",
    )
    p.add_argument("--out", help="output folder (default: $OUT when set, else bench/results/device_check)")
    return p.parse_args(argv)


def resolve_models(choice: str, dry_run: bool) -> tuple[str, str, str | None]:
    """(target, drafter, note): env overrides, else the fetched Qwen pair, else the tiny pair (noted)."""
    from common.models import fetch

    env_target, env_drafter = os.environ.get(TARGET_ENV), os.environ.get(DRAFTER_ENV)
    if env_target or env_drafter:
        if not (env_target and env_drafter):
            raise SystemExit(f"set both {TARGET_ENV} and {DRAFTER_ENV} (model specs), or neither")
        return env_target, env_drafter, None
    if choice == "tiny" or (choice == "auto" and dry_run):
        note = None if dry_run else "tiny pair requested (--models tiny): not the Qwen pair"
        return (*TINY, note)
    root = fetch.cache_dir()
    if fetch.all_fetched(root):
        return (*QWEN, None)
    missing = [str(fetch.model_dir(n, root)) for n in fetch.QWEN_MODELS if not fetch.is_fetched(n, root)]
    if choice == "qwen":
        raise SystemExit(f"the Qwen pair is not fetched (missing {', '.join(missing)}): make fetch-models")
    note = (
        f"Qwen pair NOT FOUND (missing {', '.join(missing)}; set DRAFTLINK_CACHE_DIR, or "
        f"{TARGET_ENV}/{DRAFTER_ENV}): falling back to the embedded TINY pair; these figures measure "
        "the serving and batching path, NOT Qwen throughput"
    )
    return (*TINY, note)


def make_plan(args: argparse.Namespace) -> Plan:
    dry = bool(args.dry_run or os.environ.get("DEVICE", "").lower() == "cpu")
    target, drafter, note = resolve_models(args.models, dry)
    sessions = args.sessions or (DRY_SESSIONS if dry else SESSIONS)
    methods = tuple(m.strip() for m in (args.methods or ";".join(METHODS)).split(";") if m.strip())
    out = args.out or os.environ.get("OUT") or "bench/results/device_check"
    return Plan(
        dry_run=dry,
        device="cpu" if dry else "cuda",
        dtype="float32" if dry else "bfloat16",
        target=target,
        drafter=drafter,
        models_note=note,
        sessions=tuple(sessions),
        methods=methods,
        max_tokens=args.max_tokens or (16 if dry else 64),
        temperature=args.temperature,
        requests_per_session=args.requests_per_session,
        edges=args.edges or (2 if dry else 4),
        edge_threads=args.edge_threads if args.edge_threads is not None else (0 if dry else 3),
        max_batch_tokens=args.max_batch_tokens,
        max_batch_sessions=args.max_batch_sessions or max(sessions),
        batch_wait_ms=args.batch_wait_ms,
        budget_s=args.budget_s,
        out=str(out),
    )


class NoCudaError(RuntimeError):
    """A real (not dry) run found no CUDA device through this interpreter's torch."""


def check_torch(plan: Plan) -> dict[str, Any]:
    """torch's build and device; NoCudaError when a real run finds no CUDA device."""
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    elif plan.device == "cuda":
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise NoCudaError(
            f"device_check: torch {torch.__version__} ({build}) at {sys.executable} sees no CUDA device. "
            "Run with a CUDA build of torch (PYTHON=/path/to/python), or --dry-run / DEVICE=cpu."
        )
    return info


def profile_for(plan: Plan, method: str) -> Profile:
    """The bench profile whose concurrency pass runs one method (bench.concurrency reads it)."""
    top = max(plan.sessions) * plan.requests_per_session
    return Profile(
        name="device-check",
        target=plan.target,
        drafter=plan.drafter,
        prompt_files=(CODE,),
        num_prompts=top,
        max_tokens=plan.max_tokens,
        methods=plan.methods,
        rates_bps=(0.0,),
        delays_ms=(0.0,),
        temperatures=(plan.temperature,),
        passes=("concurrency",),
        concurrency=plan.sessions,
        concurrency_method=method,
        requests_per_client=plan.requests_per_session,
        edges=plan.edges,
        inprocess_method=next((m for m in plan.methods if m != CLOUD_ONLY), KSQS16),
        cloud_args=plan.cloud_args(),
        edge_args=plan.edge_args(),
    )


def request_body(
    method: str, profile: Profile, temperature: float | None = None
) -> Callable[[Prompt], dict[str, Any]]:
    """The completion body of one arm for a prompt (bench.sweep.body: seeded, ignore_eos)."""
    from bench.sweep import body

    temp = profile.temperatures[0] if temperature is None else temperature

    def make(prompt: Prompt) -> dict[str, Any]:
        return body(method, prompt, temp, profile)

    return make


def summarise(row: dict[str, Any], method: str) -> dict[str, Any]:
    """The figures the table shows, from a bench.concurrency level row."""
    hists = row.get("cloud_histograms") or {}
    return {
        "method": method,
        "sessions": row["concurrency"],
        "requests": row["requests"],
        "errors": row["errors"],
        "error_sample": row.get("error_sample"),
        "completion_tokens": row["completion_tokens"],
        "wall_s": row["wall_s"],
        "aggregate_tokens_per_s": row["aggregate_tokens_per_s"],
        "latency_p50_s": row["latency_p50_s"],
        "latency_p95_s": row["latency_p95_s"],
        "mean_batch_sessions": (hists.get("draftlink_batch_sessions") or {}).get("mean"),
        "mean_batch_tokens": (hists.get("draftlink_batch_tokens") or {}).get("mean"),
        "acceptance_rate": row.get("acceptance_rate"),
        "fairness_max_over_min": row.get("fairness_max_over_min"),
        "cloud_histograms": hists,
    }


def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table; speed-up is against the method's first level."""
    head = (
        "| method | sessions | requests | errors | aggregate tok/s | speed-up | p50 s | p95 s "
        "| mean batch (sessions/forward) | mean tokens/forward | acceptance |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    first: dict[str, float | None] = {}  # method → its first level's aggregate tokens/s
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['method']} | {r['sessions']} | skipped: {r['skipped']} |" + " |" * 8)
            continue
        base = first.setdefault(r["method"], r["aggregate_tokens_per_s"])
        tps = r["aggregate_tokens_per_s"]
        speedup = tps / base if tps and base else None
        lines.append(
            f"| {r['method']} | {r['sessions']} | {r['requests']} | {r['errors']} | {_f(tps)} "
            f"| {_f(speedup)} | {_f(r['latency_p50_s'])} | {_f(r['latency_p95_s'])} "
            f"| {_f(r['mean_batch_sessions'])} | {_f(r['mean_batch_tokens'])} | {_f(r['acceptance_rate'])} |"
        )
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return res.stdout.strip() or None


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """JSON and markdown, rewritten after every level (a killed run keeps what it measured)."""
    (out / RESULTS).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    note = f"\n**{meta['plan']['models_note']}**\n" if meta["plan"]["models_note"] else ""
    head = f"Device check {meta['date']}: {meta['models']} on {meta.get('gpu') or meta['plan']['device']}"
    (out / TABLE).write_text(f"{head}\n{note}\n{table(rows)}\n")


def loud(text: str) -> None:
    bar = "#" * 100
    print(f"{bar}\n# {text}\n{bar}", file=sys.stderr, flush=True)


def run(plan: Plan, torch_info: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start the stack once, warm it, then every method × level through bench.concurrency."""
    import httpx

    from bench.concurrency import _level, run_level
    from bench.runner import load_prompts
    from bench.sweep import _stack_config, served_config, warm_up
    from launcher.stack import Stack

    out = Path(plan.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    base = profile_for(plan, plan.methods[0])
    cfg = replace(
        _stack_config(base),
        link=False,  # edge → cloud directly: the link's shaping is not what this measures
        log_dir=out / "logs",
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    prompts = load_prompts(base.prompt_files, base.num_prompts)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()}, {platform.machine()}, {os.cpu_count()} cores",
        "python": sys.version.split()[0],
        "commit": _git_commit(),
        "models": f"{plan.drafter} (edge, CPU) → {plan.target} (cloud, {plan.device} {plan.dtype})",
        "plan": asdict(plan),
        "cloud_args": list(base.cloud_args),
        "edge_args": list(cfg.edge_args),
        **torch_info,
    }
    rows: list[dict[str, Any]] = []
    print(f"starting: {meta['models']}, {plan.edges} edge(s); logs in {out / 'logs'}", flush=True)
    with Stack(cfg) as stack, httpx.Client() as client:
        meta["startup_s"] = time.monotonic() - start
        meta["served"] = served_config(client, stack.edge_url)
        warm_up(stack, client, base, prompts[0])
        # one concurrent burst too: the first batched forwards of each shape pay allocation
        burst = replace(base, max_tokens=min(16, plan.max_tokens), requests_per_client=1)
        _level(stack, burst, prompts, min(8, max(plan.sessions)), request_body(CLOUD_ONLY, burst, 0.0))
        meta["warmup_done_s"] = time.monotonic() - start
        print(f"up and warm after {meta['warmup_done_s']:.0f} s", flush=True)
        for method in plan.methods:
            prof = profile_for(plan, method)
            for n in plan.sessions:
                if time.monotonic() - start > plan.budget_s:
                    rows.append({"method": method, "sessions": n, "skipped": f"budget {plan.budget_s:g} s"})
                    continue
                row = summarise(run_level(stack, prof, prompts, n, request_body(method, prof)), method)
                rows.append(row)
                print(
                    f"[{method}] {n} sessions: {_f(row['aggregate_tokens_per_s'])} tok/s aggregate, "
                    f"p50 {_f(row['latency_p50_s'])} s, p95 {_f(row['latency_p95_s'])} s, "
                    f"mean batch {_f(row['mean_batch_sessions'])}, errors {row['errors']}",
                    flush=True,
                )
                meta["elapsed_s"] = time.monotonic() - start
                write(out, meta, rows)
    meta["elapsed_s"] = time.monotonic() - start
    write(out, meta, rows)
    return meta, rows


def main(argv: Sequence[str] | None = None) -> int:
    plan = make_plan(parse_args(argv))
    try:
        torch_info = check_torch(plan)
    except NoCudaError as exc:
        print(exc, file=sys.stderr)
        return 2
    if plan.models_note:
        loud(plan.models_note)
    if plan.dry_run:
        print("dry run: CPU, float32, the same path as on the device at small concurrency", flush=True)
    from launcher.procs import ProcessFailedError

    try:
        meta, rows = run(plan, torch_info)
    except ProcessFailedError as exc:  # a process died or never got ready: its log tail says why
        print(f"device_check: the stack failed: {exc}\nlogs: {Path(plan.out) / 'logs'}", file=sys.stderr)
        return 1
    print()
    if plan.models_note:
        print(f"NOTE: {plan.models_note}\n")
    print(table(rows))
    out = Path(plan.out)
    print(f"\nwrote {out / RESULTS} and {out / TABLE} ({meta['elapsed_s']:.0f} s in all)")
    measured = [r for r in rows if not r.get("skipped")]
    bad = [r for r in measured if r["errors"] or not r["aggregate_tokens_per_s"]]
    if bad or not measured:
        print(f"device_check: {len(bad)} level(s) with errors or no tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
