"""launcher.stack without starting anything: model profiles, ports, argv wiring, CLI parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.stack import MODEL_PAIRS, Stack, StackConfig, parse_args


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_stack_wires_edge_through_the_link(tmp_path: Path) -> None:
    stack = Stack(StackConfig(models="tiny", link=True, log_dir=tmp_path, uplink_bps=1e6, delay_ms=5))
    assert [p.name for p in stack.processes] == ["cloud", "link", "edge"]
    assert stack.link is not None
    cloud, link, edge = stack.cloud.argv, stack.link.argv, stack.edge.argv
    assert _flag(cloud, "--model") == "builtin:tiny-target"
    assert _flag(edge, "--model") == "builtin:tiny-draft"
    assert _flag(link, "--upstream") == stack.cloud_address
    assert _flag(edge, "--cloud") == _flag(link, "--listen") == f"127.0.0.1:{stack.link_port}"
    assert _flag(link, "--uplink-bps") == "1000000.0"
    assert _flag(link, "--delay-ms") == "5"
    ports = {
        stack.edge_port,
        stack.cloud_port,
        stack.cloud_metrics_port,
        stack.link_port,
        stack.link_metrics_port,
    }
    assert len(ports) == 5
    assert stack.base_url == f"http://127.0.0.1:{stack.edge_port}/v1"
    assert "curl -s http://127.0.0.1" in stack.curl_example()


def test_stack_without_link_points_edge_at_the_cloud(tmp_path: Path) -> None:
    stack = Stack(StackConfig(models="qwen", link=False, log_dir=tmp_path, edge_args=("--draft-len", "6")))
    assert [p.name for p in stack.processes] == ["cloud", "edge"]
    assert _flag(stack.edge.argv, "--cloud") == stack.cloud_address
    assert _flag(stack.edge.argv, "--draft-len") == "6"
    assert (stack.cloud_model, stack.edge_model) == MODEL_PAIRS["qwen"]
    assert stack.link_metrics_url is None


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown models profile"):
        Stack(StackConfig(models="huge"))


def test_cli_defaults_and_flags() -> None:
    cfg = parse_args(["--models", "tiny"])
    assert (cfg.models, cfg.edge_port, cfg.uplink_bps, cfg.delay_ms, cfg.link) == (
        "tiny",
        8000,
        2e6,
        20.0,
        None,
    )
    cfg = parse_args(
        ["--models", "qwen", "--no-link", "--port", "9000", "--edge-args", "--codec 'qs:ell=240'"]
    )
    assert cfg.link is False
    assert cfg.edge_port == 9000
    assert cfg.edge_args == ("--codec", "qs:ell=240")
