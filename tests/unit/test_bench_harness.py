"""The benchmark's pure parts: arms, bootstrap intervals, paired ratios, HTTP/2 frame counting, gRPC args."""

from __future__ import annotations

from typing import Any

import pytest

from bench.grid import PROFILES, customise
from bench.headline import compare_codecs
from bench.methods import base_label, codec_of, parse_method
from bench.split import split_ratios
from bench.stats import Estimate, paired_ratio, ratio_of_sums, verdict
from bench.wire import PREFACE, FrameCounts, FrameParser
from common.errors import ConfigError
from common.wire import LEAN_HTTP2, merge_args, parse_grpc_args


def test_arms_map_to_request_options() -> None:
    assert parse_method("cloud-only").options(4) == {"mode": "cloud-only"}
    serial = parse_method("ksqs:k=16,ell=100").options(4)
    assert serial == {"mode": "speculative", "codec": "ksqs:k=16,ell=100", "draft_len": 4, "pipeline": False}
    streamed = parse_method("pipelined:qs:ell=240")
    assert streamed.pipeline
    assert streamed.codec == "qs:ell=240"
    assert streamed.static
    assert streamed.options(6)["pipeline"] is True
    auto = parse_method("adaptive-pipelined")
    assert auto.adaptive
    assert auto.pipeline
    assert not auto.static
    assert auto.options(4) == {"mode": "speculative", "codec": "auto", "draft_len": "auto", "pipeline": True}
    assert codec_of("adaptive") is None
    assert codec_of("cloud-only") is None
    assert base_label("pipelined:ksqs:k=16,ell=100") == "ksqs:k=16,ell=100"


def test_ratio_of_sums_interval_contains_the_point() -> None:
    est = ratio_of_sums([10, 12, 9, 11, 30], [1.0, 1.1, 0.9, 1.0, 2.0])
    assert est.value == pytest.approx(72 / 6.0)
    assert est.lo is not None
    assert est.hi is not None
    assert est.value is not None
    assert est.lo <= est.value <= est.hi
    assert ratio_of_sums([], []).value is None
    assert ratio_of_sums([3], [1.0]) == Estimate(3.0)  # one prompt: no interval


def test_paired_ratio_removes_prompt_variance() -> None:
    # prompts differ 10× in speed, but arm a is always exactly 1.2× arm b: the paired interval is tight
    b = {i: (64.0, 64.0 / (1.0 + 9.0 * (i % 2))) for i in range(20)}
    a = {i: (tokens, seconds / 1.2) for i, (tokens, seconds) in b.items()}
    r = paired_ratio(a, b)
    assert r.value == pytest.approx(1.2)
    assert r.lo == pytest.approx(1.2)
    assert r.hi == pytest.approx(1.2)
    assert verdict(r) == "ahead"
    assert verdict(paired_ratio(b, a)) == "behind"
    assert paired_ratio(a, {}).value is None


def _cell(method: str, speed: float, accept: float) -> dict[str, Any]:
    """A grid cell of 20 prompts whose speed and acceptance differ per prompt (prompt variance)."""
    per = [
        {
            "i": i,
            "tokens": 64,
            "seconds": 64 / (speed * (1 + i % 3)),
            "drafted": 100,
            "accepted": round(accept * 100) - i % 2,
            "domain": "code" if i % 2 else "english",
        }
        for i in range(20)
    ]
    return {
        "pass": "grid",
        "method": method,
        "rate_bps": 1e6,
        "schedule": None,
        "delay_ms": 20.0,
        "temperature": 1.0,
        "tokens_per_s": speed,
        "per_prompt": per,
    }


def test_regime_headline_reports_paired_speed_and_acceptance() -> None:
    rows = [_cell("ksqs:k=16,ell=100", 2.0, 0.40), _cell("csqs:alpha=0.05,eta=0.02,ell=240", 2.4, 0.50)]
    (line,) = [x for x in compare_codecs(rows) if x.startswith("- regime")]
    assert "C-SQS ahead" in line
    assert "0.833×" in line  # 2.0 / 2.4 on every prompt
    assert "acceptance ratio 0.798×" in line  # (800 − 10) / (1,000 − 10) accepted of 2,000 drafted
    assert line.endswith("(behind)")  # K-SQS accepts less on every prompt
    tied = compare_codecs(
        [_cell("ksqs:k=16,ell=100", 2.0, 0.4), _cell("csqs:alpha=0.1,eta=0.02,ell=240", 2.0, 0.4)]
    )
    assert "not separated" in tied[0]


def test_split_ratios_separate_the_prompt_domains() -> None:
    """K-SQS 1.2× faster on the code prompts and 0.8× on the English ones: each subset shows it."""
    a, b = _cell("ksqs:k=16,ell=100", 2.0, 0.4), _cell("csqs:alpha=0.05,eta=0.02,ell=240", 2.0, 0.4)
    for prompt in a["per_prompt"]:
        prompt["seconds"] /= 1.2 if prompt["domain"] == "code" else 0.8
    got = {(d, m): est for _, d, m, est in split_ratios([a, b], "ksqs", "csqs")}
    assert verdict(got[("code", "tok/s")]) == "ahead"
    assert got[("code", "tok/s")].value == pytest.approx(1.2)
    assert verdict(got[("english", "tok/s")]) == "behind"
    assert got[("english", "acceptance")].value == pytest.approx(1.0)
    assert ("all", "tok/s") in got
    assert split_ratios([a], "ksqs", "csqs") == []  # one arm only: nothing to compare


def test_verdict_needs_the_interval_to_exclude_one() -> None:
    assert verdict(Estimate(1.1, 0.95, 1.3)) == "not separated"
    assert verdict(Estimate(None)) == "no interval"
    assert Estimate(1.0, 0.9, 1.1).overlaps(Estimate(1.2, 1.05, 1.3))
    assert not Estimate(1.0, 0.9, 1.0).overlaps(Estimate(1.2, 1.05, 1.3))


def _frame(kind: int, payload: bytes, stream: int = 1) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, 0]) + stream.to_bytes(4, "big") + payload


def test_frame_parser_counts_frames_split_anywhere() -> None:
    stream = PREFACE + _frame(4, b"") + _frame(0, b"x" * 100) + _frame(8, b"\0\0\0\1") + _frame(6, b"p" * 8)
    counts = FrameCounts()
    parser = FrameParser(counts, client_side=True)
    for i in range(0, len(stream), 7):  # TCP may cut frames anywhere
        parser.feed(stream[i : i + 7])
    assert counts.frames == {"SETTINGS": 1, "DATA": 1, "WINDOW_UPDATE": 1, "PING": 1}
    assert counts.bytes["DATA"] == 109
    assert counts.bytes["PING"] == 17
    assert counts.other == len(PREFACE)
    assert counts.total == len(stream)
    assert counts.data_sizes == [100]
    before = counts.snapshot()
    parser.feed(_frame(0, b"y" * 5))
    assert counts.minus(before).frames["DATA"] == 1


def test_grpc_args_parse_and_override() -> None:
    assert parse_grpc_args("") == []
    assert parse_grpc_args("grpc.http2.bdp_probe=1, grpc.primary_user_agent=x") == [
        ("grpc.http2.bdp_probe", 1),
        ("grpc.primary_user_agent", "x"),
    ]
    for bad in ("bdp_probe=1", "grpc.x", "grpc.x="):
        with pytest.raises(ConfigError):
            parse_grpc_args(bad)
    merged = dict(merge_args(LEAN_HTTP2, parse_grpc_args("grpc.http2.bdp_probe=1")))
    assert merged["grpc.http2.bdp_probe"] == 1
    assert dict(LEAN_HTTP2)["grpc.http2.bdp_probe"] == 0


def test_profiles_customise_from_cli_strings() -> None:
    p = customise(PROFILES["tiny"], methods="cloud-only; adaptive", rates_bps="1e5,1e6", passes="grid,markov")
    assert p.methods == ("cloud-only", "adaptive")
    assert p.rates_bps == (1e5, 1e6)
    assert p.passes == ("grid", "markov")
    assert customise(p, num_prompts=None).num_prompts == p.num_prompts
    with pytest.raises(ValueError, match="unknown pass"):
        customise(p, passes="grid,nope")
    power = PROFILES["qwen-regime"]
    assert power.num_prompts >= 20
    assert power.max_tokens >= 64
    assert len(power.prompt_files) == 2


def test_no_references_turns_the_in_process_references_off() -> None:
    assert PROFILES["qwen-streamed"].references
    assert not customise(PROFILES["qwen-streamed"], references=False).references
    assert customise(PROFILES["qwen-streamed"], references=None).references  # flag absent: unchanged
