"""The TLS variants of deploy/: compose override and k8s overlay wire certificates, token and probes."""

from __future__ import annotations

import importlib.resources
import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from common.config import load_config
from deploy.tools import envkeys
from deploy.tools import inventory as inv

COMPOSE_TLS = inv.DEPLOY / "compose.tls.yaml"
OVERLAY = inv.K8S / "overlays" / "tls"


def _env(raw: Any) -> dict[str, str]:
    return inv.resolve_compose_env(raw, {"DRAFTLINK_GRPC_TOKEN": "t"})


def test_compose_override_matches_the_compose_spec() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    try:
        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema (which ships the compose-spec schema) not installed")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    doc = yaml.safe_load(COMPOSE_TLS.read_text())
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(doc))
    assert not errors, [e.message for e in errors[:5]]


def test_compose_override_wires_secrets_token_and_health_port() -> None:
    doc = yaml.safe_load(COMPOSE_TLS.read_text())
    base = yaml.safe_load(inv.COMPOSE.read_text())["services"]
    secrets = set(doc["secrets"])
    for name, svc in doc["services"].items():
        assert name in base
        proc = envkeys.PROCESSES[name]
        env = _env(svc["environment"])
        assert set(env) <= proc.env_keys()
        mounted = {f"/run/secrets/{s}" for s in svc["secrets"]}
        assert set(svc["secrets"]) <= secrets
        files = {v for k, v in env.items() if k.endswith(("_CERT", "_KEY", "_CA"))}
        assert len(files) == 3
        assert files <= mounted, (name, files - mounted)
        merged = {**_env(base[name].get("environment", {})), **env}
        cfg = load_config(
            proc.config_class(), [], prog=proc.script, description="", prefix=proc.prefix, env=merged
        )
        assert cfg is not None
    cloud, edge = (_env(doc["services"][n]["environment"]) for n in ("cloud", "edge"))
    assert cloud["DRAFTLINK_CLOUD_AUTH_TOKEN"] == edge["DRAFTLINK_EDGE_CLOUD_TOKEN"]
    assert cloud["DRAFTLINK_CLOUD_HEALTH_PORT"] in doc["services"]["cloud"]["expose"]
    assert edge["DRAFTLINK_EDGE_TLS_SERVER_NAME"] == "cloud"  # the edge dials link:50052


def _render() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with built-in kustomize) not installed")
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _container(docs: list[dict[str, Any]], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    pod = dep["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_k8s_overlay_mounts_secrets_and_probes_the_health_port() -> None:
    docs = _render()
    for name, secret in (
        ("draftlink-cloud", "draftlink-cloud-tls"),
        ("draftlink-edge", "draftlink-edge-tls"),
    ):
        pod, c = _container(docs, name)
        env = {e["name"]: e for e in c["env"]}
        mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
        volume = next(v for v in pod["volumes"] if v["name"] == "tls")
        assert volume["secret"]["secretName"] == secret
        assert mount["readOnly"] is True
        files = [e["value"] for k, e in env.items() if k.endswith(("_CERT", "_KEY", "_CA"))]
        assert len(files) == 3
        assert all(f.startswith(mount["mountPath"] + "/") for f in files)
        token = next(e for k, e in env.items() if k.endswith("TOKEN"))
        assert token["valueFrom"]["secretKeyRef"] == {"name": "draftlink-grpc-token", "key": "token"}
    _, cloud = _container(docs, "draftlink-cloud")
    health = int(next(e["value"] for e in cloud["env"] if e["name"] == "DRAFTLINK_CLOUD_HEALTH_PORT"))
    assert {cloud[p]["grpc"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {health}
    assert health in {p["containerPort"] for p in cloud["ports"]}
    services = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].startswith("draftlink-cloud")
    ]
    assert services
    assert all("appProtocol" not in s["spec"]["ports"][0] for s in services)  # no longer h2c
