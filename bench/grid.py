"""Benchmark profiles and the sweep grid: methods × link settings × temperatures."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

CLOUD_ONLY = "cloud-only"


@dataclass(frozen=True)
class Profile:
    """Everything one sweep needs besides the output folder."""

    name: str
    target: str
    drafter: str
    prompt_file: str
    num_prompts: int
    max_tokens: int
    methods: tuple[str, ...]
    rates_bps: tuple[float, ...]  # uplink; 0 = unshaped
    delays_ms: tuple[float, ...]
    temperatures: tuple[float, ...]
    draft_len: int = 4
    downlink_bps: float = 0.0  # 0 = unshaped (the papers shape the uplink)
    cell_budget_s: float = 120.0  # stop sending prompts to a cell after this much time
    max_round_upload_s: float = 20.0  # skip a cell whose formula payload per round takes longer
    inprocess_method: str = "ksqs:k=16,ell=100"
    cloud_args: tuple[str, ...] = field(default_factory=tuple)
    edge_args: tuple[str, ...] = field(default_factory=tuple)


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        target="builtin:tiny-target",
        drafter="builtin:tiny-draft",
        prompt_file="bench/prompts/code.jsonl",
        num_prompts=3,
        max_tokens=32,
        methods=(
            CLOUD_ONLY,
            "dense:fp32",
            "dense:fp16",
            "qs:ell=240",
            "ksqs:k=16,ell=100",
            "ksqs:k=32,ell=240",
            "csqs:alpha=0.05,eta=0.02,ell=240,kmax=64",
        ),
        rates_bps=(1e5, 1e6, 1e7, 1e8),
        delays_ms=(10.0,),
        temperatures=(0.4, 1.0),
        cell_budget_s=30.0,
    ),
    "qwen": Profile(
        name="qwen",
        target="builtin:qwen2.5-coder-1.5b",
        drafter="builtin:qwen2.5-coder-0.5b",
        prompt_file="bench/prompts/code.jsonl",
        num_prompts=3,
        max_tokens=32,
        methods=(
            CLOUD_ONLY,
            "dense:fp16",
            "qs:ell=240",
            "qs:ell=720",
            "ksqs:k=16,ell=100",
            "ksqs:k=32,ell=240",
            "csqs:alpha=0.05,eta=0.02,ell=240,kmax=64",
        ),
        rates_bps=(1e5, 1e6, 1e7, 1e8),
        delays_ms=(20.0,),
        temperatures=(0.4, 1.0),
        cell_budget_s=150.0,
        cloud_args=("--fast-linear",),
        # int8 drafter: ~5x faster steps on CPU for a small agreement loss (docs/BENCHMARKS.md, Models)
        edge_args=("--int8",),
    ),
}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def customise(
    profile: Profile,
    methods: str | None = None,
    rates: str | None = None,
    delays: str | None = None,
    temperatures: str | None = None,
    prompts: int | None = None,
    max_tokens: int | None = None,
    draft_len: int | None = None,
    cell_budget_s: float | None = None,
) -> Profile:
    """Override a profile from CLI strings (methods separated by ';' since specs contain ',')."""
    changes: dict[str, object] = {}
    if methods:
        changes["methods"] = tuple(m.strip() for m in methods.split(";") if m.strip())
    if rates:
        changes["rates_bps"] = _floats(rates)
    if delays:
        changes["delays_ms"] = _floats(delays)
    if temperatures:
        changes["temperatures"] = _floats(temperatures)
    if prompts is not None:
        changes["num_prompts"] = prompts
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    if draft_len is not None:
        changes["draft_len"] = draft_len
    if cell_budget_s is not None:
        changes["cell_budget_s"] = cell_budget_s
    return replace(profile, **changes)  # type: ignore[arg-type]
