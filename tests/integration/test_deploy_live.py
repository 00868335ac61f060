"""deploy/ against live tiny processes: dashboard metrics, image health checks, a real Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.tools import inventory as inv
from launcher.procs import ManagedProcess, free_port
from launcher.stack import Stack, StackConfig

pytestmark = pytest.mark.integration

JOBS = {"cloud": "draftlink-cloud", "link": "draftlink-link", "edge": "draftlink-edge"}
PROMETHEUS_DEADLINE_S = 45.0


# Addresses, ports and models come from launch's flags (loopback, free ports, tiny models).
_STACK_OWNED = re.compile(r"_(HOST|PORT|METRICS_PORT|LISTEN|UPSTREAM|CLOUD|MODEL|[A-Z]+_BPS|DELAY_MS)$")


def _compose_env() -> dict[str, str]:
    """The compose services' other DRAFTLINK_* settings (codec, draft length, device, ...), as deployed."""
    env: dict[str, str] = {}
    for c in inv.compose_containers():
        if c.name in JOBS:
            env.update(
                {k: v for k, v in c.env.items() if k.startswith("DRAFTLINK_") and not _STACK_OWNED.search(k)}
            )
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cfg = StackConfig(
        models="tiny",
        link=True,
        uplink_bps=0.0,
        delay_ms=0.0,
        env=_compose_env(),
        log_dir=tmp_path_factory.mktemp("deploy-stack"),
        ready_timeout=120.0,
    )
    with Stack(cfg) as running:
        yield running


def _metrics_urls(stack: Stack) -> dict[str, str]:
    assert stack.link_metrics_url is not None
    return {
        "cloud": stack.cloud_metrics_url,
        "link": stack.link_metrics_url,
        "edge": f"{stack.edge_url}/metrics",
    }


def _complete(stack: Stack) -> dict[str, Any]:
    body = {"prompt": "def fibonacci(n):", "max_tokens": 16, "temperature": 0}
    resp = httpx.post(f"{stack.base_url}/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_dashboard_reads_only_metrics_the_live_processes_export(stack: Stack) -> None:
    exported = {
        name: inv.exported_series(httpx.get(url, timeout=10).text)
        for name, url in _metrics_urls(stack).items()
    }
    problems = inv.dashboard_problems(exported)
    assert not problems, "\n".join(problems) + "\n" + stack.logs(30)


@pytest.mark.parametrize("process", ["cloud", "edge", "link"])
def test_image_healthcheck_commands_against_live_processes(stack: Stack, process: str) -> None:
    """Each Dockerfile's HEALTHCHECK one-liner passes against the live process, fails on a dead port."""
    instructions = inv.dockerfile_instructions(inv.DEPLOY / "docker" / f"{process}.Dockerfile")
    argv = inv.healthcheck_argv(next(i.args for i in instructions if i.keyword == "HEALTHCHECK"))
    port_key, port = {
        "cloud": ("DRAFTLINK_CLOUD_PORT", stack.cloud_port),
        "edge": ("DRAFTLINK_EDGE_PORT", stack.edge_port),
        "link": ("DRAFTLINK_LINK_METRICS_PORT", stack.link_metrics_port),
    }[process]
    assert port_key in argv[-1], f"the {process} health check must read {port_key}"
    cmd = [sys.executable, *argv[1:]]
    ok = subprocess.run(cmd, env={port_key: str(port)}, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    dead = subprocess.run(cmd, env={port_key: str(free_port())}, capture_output=True, text=True, timeout=30)
    assert dead.returncode != 0


def _prometheus_config(stack: Stack, path: Path) -> Path:
    """The shipped scrape config with targets rewritten to the live loopback ports, 2 s interval."""
    cfg = yaml.safe_load(inv.PROMETHEUS_CONFIG.read_text())
    ports = {
        JOBS["cloud"]: stack.cloud_metrics_port,
        JOBS["link"]: stack.link_metrics_port,
        JOBS["edge"]: stack.edge_port,
    }
    cfg["global"]["scrape_interval"] = "2s"
    cfg["global"]["scrape_timeout"] = "2s"
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] in ports]
    assert len(jobs) == 3, "the shipped config must scrape cloud, link and edge"
    for job in jobs:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    cfg["scrape_configs"] = jobs
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus binary not installed (Debian package `prometheus`)")
    port = free_port()
    argv = [
        binary,
        f"--config.file={_prometheus_config(stack, tmp_path / 'prometheus.yml')}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with ManagedProcess("prometheus", argv, log_dir=tmp_path) as proc:
        proc.wait_ready(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200, timeout=20)
        yield url


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _by_job(url: str, metric: str) -> dict[str, float]:
    return {r["metric"]["job"]: float(r["value"][1]) for r in _query(url, metric)}


def _targets(url: str) -> dict[str, tuple[str, str]]:
    """Scrape health and last error per job."""
    active = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    return {t["labels"]["job"]: (t["health"], t["lastError"]) for t in active}


def _wait_for(check: Callable[[], Any], what: str, last: Callable[[], Any] | None = None) -> Any:
    """Poll check() until it returns something truthy; fail with `last()` for context."""
    deadline = time.monotonic() + PROMETHEUS_DEADLINE_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}" + (f"; last seen: {last()}" if last else ""))


def _scraped_value(url: str, metric: str) -> float:
    """One unlabelled sample straight from a /metrics endpoint."""
    lines = httpx.get(url, timeout=5).text.splitlines()
    return float(next(ln.split()[-1] for ln in lines if ln.startswith(metric + " ")))


@pytest.mark.timeout(120)
def test_prometheus_scrapes_spec_decode_counters(stack: Stack, prometheus: str) -> None:
    """After one completion, Prometheus (shipped config) reads the spec-decode counters back."""
    start = time.monotonic()
    _wait_for(
        lambda: all(_targets(prometheus).get(job, ("down", ""))[0] == "up" for job in JOBS.values()),
        "all three targets up",
        lambda: _targets(prometheus),
    )
    spec = _complete(stack)["metrics"]["speculative_decoding"]
    assert spec["num_draft_tokens"] > 0
    metric = "draftlink_spec_decode_num_draft_tokens_total"
    edge_now = _scraped_value(f"{stack.edge_url}/metrics", metric)

    def caught_up() -> dict[str, float] | None:
        seen = _by_job(prometheus, metric)
        return seen if seen.get(JOBS["edge"]) == seen.get(JOBS["cloud"]) == edge_now else None

    seen = _wait_for(
        caught_up,
        f"{metric} = {edge_now} for edge and cloud",
        lambda: (_by_job(prometheus, metric), _targets(prometheus)),
    )
    assert seen[JOBS["edge"]] >= spec["num_draft_tokens"]
    accepted = _by_job(prometheus, "draftlink_spec_decode_num_accepted_tokens_total")
    assert accepted[JOBS["edge"]] == accepted[JOBS["cloud"]]
    link_bytes = _query(prometheus, "sum(draftlink_link_bytes_total)")
    assert float(link_bytes[0]["value"][1]) > 0
    variables = inv.dashboard_variables()
    for _title, expr in inv.dashboard_queries():
        _query(prometheus, inv.expand_query(expr, variables))  # parses and evaluates
    assert time.monotonic() - start < 60, "the Prometheus round trip must stay under a minute"
