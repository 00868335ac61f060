"""Benchmark profiles: model pair, prompts, the grid (methods × link settings × temperatures) and passes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bench.methods import ADAPTIVE, ADAPTIVE_PIPELINED, CLOUD_ONLY, PIPELINED

PASSES = ("unshaped", "greedy", "grid", "markov", "concurrency")
KSQS16 = "ksqs:k=16,ell=100"
KSQS32 = "ksqs:k=32,ell=240"
CSQS = "csqs:alpha=0.05,eta=0.02,ell=240,kmax=64"
CODE, ENGLISH = "bench/prompts/code.jsonl", "bench/prompts/english.jsonl"
# Two-state channels (QS-SD paper style): good ↔ bad rate, switching every `step` seconds on average
MARKOV_2_6M = "markov:good=6e6,bad=2e6,p_gb=0.3,p_bg=0.3,step=0.5,seed=7"
MARKOV_100K_1M = "markov:good=1e6,bad=1e5,p_gb=0.3,p_bg=0.3,step=0.5,seed=7"


@dataclass(frozen=True)
class Profile:
    """Everything one benchmark run needs besides the output folder."""

    name: str
    target: str
    drafter: str
    prompt_files: tuple[str, ...]  # prompts alternate between the files (code, English)
    num_prompts: int  # per cell; prompt i has seed seed_base + i in every cell (paired arms)
    max_tokens: int
    methods: tuple[str, ...]  # bench.methods labels
    rates_bps: tuple[float, ...]  # uplink; 0 = unshaped
    delays_ms: tuple[float, ...]
    temperatures: tuple[float, ...]
    draft_len: int = 4
    downlink_bps: float = 0.0  # 0 = unshaped (the papers shape the uplink)
    cell_budget_s: float = 120.0  # a pass stops starting prompt rounds after cells × this
    max_round_upload_s: float = 20.0  # skip a cell whose formula payload per round takes longer
    inprocess_method: str = KSQS16
    passes: tuple[str, ...] = ("unshaped", "greedy", "grid")
    markov: tuple[str, ...] = ()  # link --schedule specs of the markov pass
    concurrency: tuple[int, ...] = ()  # concurrent clients per level of the concurrency pass
    references: bool = True  # in-process references and bound terms after the passes (minutes on Qwen)
    concurrency_method: str = KSQS16
    concurrency_rate_bps: float = 0.0  # link of the concurrency pass (0 = unshaped)
    requests_per_client: int = 2  # per level of the concurrency pass
    edges: int = 1  # edge processes (clients are spread over them)
    seed_base: int = 0
    cloud_args: tuple[str, ...] = field(default_factory=tuple)
    edge_args: tuple[str, ...] = field(default_factory=tuple)


_TINY = Profile(
    name="tiny",
    target="builtin:tiny-target",
    drafter="builtin:tiny-draft",
    prompt_files=(CODE,),
    num_prompts=3,
    max_tokens=32,
    methods=(CLOUD_ONLY, "dense:fp32", "dense:fp16", "qs:ell=240", KSQS16, KSQS32, CSQS),
    rates_bps=(1e5, 1e6, 1e7, 1e8),
    delays_ms=(10.0,),
    temperatures=(0.4, 1.0),
    cell_budget_s=30.0,
)
_POWER = {"prompt_files": (CODE, ENGLISH), "num_prompts": 20, "max_tokens": 64}
_STREAMED = (
    KSQS16,
    f"{PIPELINED}{KSQS16}",
    "qs:ell=240",
    ADAPTIVE,
    ADAPTIVE_PIPELINED,
)
_QWEN = Profile(
    name="qwen",
    target="builtin:qwen2.5-coder-1.5b",
    drafter="builtin:qwen2.5-coder-0.5b",
    prompt_files=(CODE,),
    num_prompts=3,
    max_tokens=32,
    methods=(CLOUD_ONLY, "dense:fp16", "qs:ell=240", "qs:ell=720", KSQS16, KSQS32, CSQS),
    rates_bps=(1e5, 1e6, 1e7, 1e8),
    delays_ms=(20.0,),
    temperatures=(0.4, 1.0),
    cell_budget_s=150.0,
    cloud_args=("--fast-linear",),
    # int8 drafter: ~5x faster steps on CPU for a small agreement loss (docs/BENCHMARKS.md, Models)
    edge_args=("--int8",),
)

PROFILES: dict[str, Profile] = {
    "tiny": _TINY,
    # ≥ 20 prompts × 64 tokens per cell, code + English: intervals narrow enough to separate arms
    "tiny-power": replace(
        _TINY,
        name="tiny-power",
        **_POWER,  # type: ignore[arg-type]
        methods=(
            CLOUD_ONLY,
            "dense:fp16",
            "qs:ell=240",
            KSQS16,
            KSQS32,
            CSQS,
            _STREAMED[1],
            *_STREAMED[3:],
        ),
        rates_bps=(1e5, 1e6, 1e7),
        passes=("unshaped", "greedy", "grid", "markov"),
        markov=(MARKOV_2_6M, MARKOV_100K_1M),
        cell_budget_s=60.0,
    ),
    "tiny-concurrency": replace(
        _TINY,
        name="tiny-concurrency",
        **_POWER,  # type: ignore[arg-type]
        passes=("concurrency",),
        concurrency=(1, 4, 16, 32),
        requests_per_client=3,
        cloud_args=("--max-sessions", "64"),
        edge_args=("--max-concurrency", "64"),
    ),
    "qwen": _QWEN,
    # issue 13: K-SQS ahead at low temperature, C-SQS at high (paired CIs over 20 prompts)
    "qwen-regime": replace(
        _QWEN,
        name="qwen-regime",
        **_POWER,  # type: ignore[arg-type]
        methods=(KSQS16, KSQS32, CSQS),
        rates_bps=(1e6,),
        temperatures=(0.4, 1.0, 1.3),
        passes=("grid",),
        cell_budget_s=1200.0,
    ),
    # issue 13: sparse codecs vs the best dense QS at 100 kbit/s and 1 Mbit/s (goal 1.2×)
    "qwen-sparse": replace(
        _QWEN,
        name="qwen-sparse",
        **_POWER,  # type: ignore[arg-type]
        methods=("qs:ell=240", "qs:ell=720", KSQS16, KSQS32, CSQS),
        rates_bps=(1e5, 1e6),
        temperatures=(0.4,),
        passes=("grid",),
        cell_budget_s=1200.0,
    ),
    # issue 11: serial vs streamed vs adaptive at fixed rates and under a Markov channel
    "qwen-streamed": replace(
        _QWEN,
        name="qwen-streamed",
        **_POWER,  # type: ignore[arg-type]
        methods=_STREAMED,
        rates_bps=(1e6,),  # --rates 1e5,1e6,1e7: adaptive ÷ best static across the grid (~+50 min per rate)
        temperatures=(0.4,),
        passes=("grid", "markov"),
        markov=(MARKOV_2_6M, MARKOV_100K_1M),
        cell_budget_s=1200.0,
    ),
    # issue 10: aggregate tokens/s, latency and fairness at 1..8 concurrent clients (2 edges)
    "qwen-concurrency": replace(
        _QWEN,
        name="qwen-concurrency",
        **_POWER,  # type: ignore[arg-type]
        temperatures=(0.4,),
        passes=("concurrency",),
        concurrency=(1, 2, 4, 8),
        requests_per_client=2,
        edges=2,
        cloud_args=("--fast-linear", "--max-sessions", "32"),
        edge_args=("--int8", "--max-concurrency", "16"),
    ),
}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def customise(profile: Profile, **overrides: str | int | float | None) -> Profile:
    """Override a profile from CLI values (strings for lists; methods and schedules split on ';')."""
    changes: dict[str, object] = {}
    for key, value in overrides.items():
        if value is None or value == "":
            continue
        if key in ("methods", "markov"):
            changes[key] = tuple(m.strip() for m in str(value).split(";") if m.strip())
        elif key in ("rates_bps", "delays_ms", "temperatures"):
            changes[key] = _floats(str(value))
        elif key == "concurrency":
            changes[key] = tuple(int(x) for x in _floats(str(value)))
        elif key == "passes":
            changes[key] = tuple(p.strip() for p in str(value).split(",") if p.strip())
            unknown = {str(x) for x in str(value).split(",") if x.strip()} - set(PASSES)
            if unknown:
                raise ValueError(f"unknown pass(es) {sorted(unknown)}; known: {', '.join(PASSES)}")
        else:
            changes[key] = value
    return replace(profile, **changes)  # type: ignore[arg-type]
