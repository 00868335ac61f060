"""Adapt rendered Kubernetes manifests (kustomize output) to what `podman kube play` 4.3 runs.

What podman cannot express, and what this does instead:

- Services: not implemented (no cluster IPs, no DNS for Service names). Each Deployment becomes a
  Pod named after the Service that selects it; podman's network DNS resolves pod names, so
  `draftlink-cloud:50051` still reaches the cloud. One replica per Deployment (a Service in front
  of several pods needs a real cluster); headless Services only add names and are dropped.
- grpc probes: ignored by podman; httpGet/tcpSocket probes become `curl` health checks and named
  ports become port 0; the images have no curl. Every probe becomes an `exec` probe running the
  images' Python checks (grpc.health.v1 Check, urllib GET, socket connect) on the numeric port,
  its words shell-quoted (podman joins them and runs `sh -c`). podman turns the liveness probe
  into the container's HEALTHCHECK; readiness and startup probes have no effect there.
- HorizontalPodAutoscaler, ServiceMonitor and other kinds podman ignores are dropped.
- `terminationGracePeriodSeconds` is not mapped (podman stops with its 10 s default).
- The edge's API is published on the host with hostIP/hostPort (what a Service of type
  NodePort/LoadBalancer would do), when asked to.

    python -m deploy.podman.kube deploy/k8s/overlays/tiny --publish draftlink-edge=127.0.0.1:18000
"""

from __future__ import annotations

import argparse
import copy
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

KEPT_KINDS = ("ConfigMap", "Secret", "PersistentVolumeClaim")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
GRPC_CHECK = (
    "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg; "
    "ch = grpc.insecure_channel('127.0.0.1:{port}'); "
    "r = hg.HealthStub(ch).Check(h.HealthCheckRequest(service='{service}'), timeout={timeout}); "
    "sys.exit(r.status != h.HealthCheckResponse.SERVING)"
)
HTTP_CHECK = (
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout={timeout})"
)
TCP_CHECK = "import socket; socket.create_connection(('127.0.0.1', {port}), timeout={timeout}).close()"

Doc = dict[str, Any]


def render(kustomization: Path) -> list[Doc]:
    """`kubectl kustomize DIR` as a list of objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl (with built-in kustomize) not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(kustomization)], capture_output=True, text=True, timeout=120, check=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _port_number(port: int | str, container: Doc) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return int(port)


def exec_probe(probe: Doc, container: Doc) -> Doc:
    """The same probe as an `exec` of the image's Python (timings kept)."""
    timeout = max(1, int(probe.get("timeoutSeconds", 1)) - 1)
    if "grpc" in probe:
        port = _port_number(probe["grpc"]["port"], container)
        code = GRPC_CHECK.format(port=port, service=probe["grpc"].get("service", ""), timeout=timeout)
    elif "httpGet" in probe:
        port = _port_number(probe["httpGet"]["port"], container)
        code = HTTP_CHECK.format(port=port, path=probe["httpGet"].get("path", "/"), timeout=timeout)
    elif "tcpSocket" in probe:
        code = TCP_CHECK.format(port=_port_number(probe["tcpSocket"]["port"], container), timeout=timeout)
    else:
        return {**probe, "exec": {"command": shell_words(probe["exec"]["command"])}}
    kept = {k: v for k, v in probe.items() if k not in ("grpc", "httpGet", "tcpSocket")}
    return {"exec": {"command": shell_words(["python", "-c", code])}, **kept}


def shell_words(argv: list[str]) -> list[str]:
    """podman 4.3 joins an exec probe's words with spaces and runs them with `sh -c`, so each word
    must be shell-quoted (Kubernetes would pass the quotes through: this output is for podman)."""
    return [shlex.quote(a) for a in argv]


def _selecting_service(labels: Mapping[str, str], services: list[Doc]) -> str | None:
    for svc in services:
        selector: dict[str, str] = svc["spec"].get("selector", {})
        if svc["spec"].get("clusterIP") != "None" and selector and selector.items() <= labels.items():
            return str(svc["metadata"]["name"])
    return None


def _pod(deployment: Doc, services: list[Doc], publish: Mapping[str, str], notes: list[str]) -> Doc:
    name = deployment["metadata"]["name"]
    template = deployment["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    pod_name = _selecting_service(labels, services) or name
    notes.append(f"Deployment/{name} -> Pod/{pod_name} (one replica; the pod name stands in for the Service)")
    if int(deployment["spec"].get("replicas", 1)) != 1:
        notes.append(f"Deployment/{name}: replicas {deployment['spec']['replicas']} -> 1")
    spec = copy.deepcopy(template["spec"])
    if "terminationGracePeriodSeconds" in spec:
        notes.append(f"Pod/{pod_name}: terminationGracePeriodSeconds not mapped (podman stops after 10 s)")
    for i, container in enumerate(spec["containers"]):
        for key in PROBES:
            if key in container:
                container[key] = exec_probe(container[key], container)
                notes.append(f"Pod/{pod_name}: {container['name']} {key} -> exec (python)")
        if i == 0 and name in publish:
            host_ip, _, host_port = publish[name].rpartition(":")
            port = container["ports"][0]
            port["hostPort"] = int(host_port)
            if host_ip:
                port["hostIP"] = host_ip
            notes.append(f"Pod/{pod_name}: port {port['containerPort']} published on {publish[name]}")
    metadata = {k: v for k, v in template["metadata"].items() if k in ("labels", "annotations")}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, **metadata}, "spec": spec}


def adapt(docs: list[Doc], publish: Mapping[str, str] | None = None) -> tuple[list[Doc], list[str]]:
    """podman-ready objects and a note per change. publish: Deployment name -> "[ip:]port" on the
    host for its first container's first port."""
    services = [d for d in docs if d.get("kind") == "Service"]
    out: list[Doc] = []
    notes: list[str] = []
    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        if kind == "Deployment":
            out.append(_pod(doc, services, publish or {}, notes))
        elif kind in KEPT_KINDS:
            out.append(copy.deepcopy(doc))
        else:
            notes.append(f"{kind}/{name}: dropped (podman kube play does not implement it)")
    return out, notes


def dump(docs: list[Doc]) -> str:
    return str(yaml.safe_dump_all(docs, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m deploy.podman.kube", description=doc)
    parser.add_argument("kustomization", type=Path, help="e.g. deploy/k8s/overlays/tiny")
    parser.add_argument(
        "--publish", action="append", default=[], metavar="DEPLOYMENT=[IP:]PORT", help="hostPort for its API"
    )
    args = parser.parse_args(argv)
    publish = dict(p.split("=", 1) for p in args.publish)
    docs, notes = adapt(render(args.kustomization), publish)
    for note in notes:
        print(f"# {note}", file=sys.stderr)
    print(dump(docs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
