"""Read the deployment assets into plain data: Dockerfile instructions, containers, env keys, metrics."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[1]
ROOT = DEPLOY.parent
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "draftlink.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bdraftlink_[a-z0-9_]+\b")
SELECTED_METRIC = re.compile(r"\b(draftlink_[a-z0-9_]+)\{([^}]*)\}")
JOB_SELECTOR = re.compile(r'job="\$(\w+)_job"')
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with continuation lines joined."""

    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Container:
    """Where a process is started (Dockerfile, compose service, k8s container) and how."""

    where: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    name: str = ""  # container / service / image name (cloud, edge, link, prometheus, ...)

    @property
    def script(self) -> str | None:
        """The executable the container runs first (a console script, python, sh, ...)."""
        return self.argv[0] if self.argv else None


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Parse a Dockerfile into instructions (comments dropped, `\\` continuations joined)."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    return out


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD/HEALTHCHECK CMD; ValueError for the shell form."""
    if not args.startswith("["):
        raise ValueError(f"not exec form: {args!r}")
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"exec form must be a list of strings: {args!r}")
    return value


def env_pairs(args: str) -> dict[str, str]:
    """ENV KEY=VALUE [KEY=VALUE ...] -> {KEY: VALUE} (the legacy `ENV KEY VALUE` form is rejected)."""
    out: dict[str, str] = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"ENV without '=': {args!r}")
        out[key] = value
    return out


def healthcheck_argv(args: str) -> list[str]:
    """The command of `HEALTHCHECK [--options] CMD [...]`."""
    _, sep, command = args.partition("CMD ")
    if not sep:
        raise ValueError(f"HEALTHCHECK without CMD: {args!r}")
    return exec_form(command.strip())


def copy_sources(args: str) -> list[str]:
    """Build-context sources of a COPY (empty for COPY --from=stage)."""
    tokens = shlex.split(args)
    if any(t.startswith("--from=") for t in tokens):
        return []
    paths = [t for t in tokens if not t.startswith("--")]
    return paths[:-1]


def dockerignore_patterns(dockerfile: Path) -> list[str]:
    """The patterns of <dockerfile>.dockerignore (BuildKit's per-Dockerfile ignore file)."""
    text = Path(f"{dockerfile}.dockerignore").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _matches(path: str, pattern: str) -> bool:
    """Docker's pattern match, enough for allowlists: `*`, `dir/` prefixes and leading `**/`."""
    if pattern.startswith("**/"):
        parts = path.split("/")
        return any(_matches("/".join(parts[i:]), pattern[3:]) for i in range(len(parts)))
    return fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern + "/")


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether a context-relative path is excluded (the last matching pattern wins)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if _matches(path, pattern.lstrip("!").rstrip("/")):
            ignored = not negate
    return ignored


def build_context(dockerfile: Path, dest: Path) -> list[str]:
    """Copy what the Dockerfile's COPY instructions take from the repo into dest, minus ignored
    files, as `docker build` would see it; returns the copied relative paths."""
    patterns = dockerignore_patterns(dockerfile)
    copied = []
    for ins in dockerfile_instructions(dockerfile):
        for src in copy_sources(ins.args) if ins.keyword == "COPY" else []:
            root = ROOT / src
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if not is_ignored(rel, patterns):
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    (dest / rel).write_bytes(file.read_bytes())
                    copied.append(rel)
    return copied


def dockerfile_container(path: Path) -> Container:
    """The runtime stage of a Dockerfile: ENTRYPOINT + CMD and every ENV it sets (all stages)."""
    argv: list[str] = []
    env: dict[str, str] = {}
    for ins in dockerfile_instructions(path):
        if ins.keyword == "ENTRYPOINT":
            argv = exec_form(ins.args)
        elif ins.keyword == "CMD":
            argv = argv + exec_form(ins.args)
        elif ins.keyword == "ENV":
            env.update(env_pairs(ins.args))
    return Container(f"{path.relative_to(ROOT)}", tuple(argv), env, path.name.split(".")[0])


def resolve(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose interpolation: ${VAR}, ${VAR:-default} from env (unset by default), $$ -> $."""
    env = env or {}

    def sub(match: re.Match[str]) -> str:
        return env.get(match.group(1)) or (match.group(2) or "")

    return INTERPOLATION.sub(sub, value).replace("$$", "$")


def resolve_compose_env(raw: Any, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """compose `environment:` (a mapping or a list of KEY=VALUE), interpolated."""
    if isinstance(raw, dict):
        pairs = {str(k): "" if v is None else str(v) for k, v in raw.items()}
    else:
        pairs = {str(k): v for k, _, v in (str(item).partition("=") for item in raw or [])}
    return {k: resolve(v, env) for k, v in pairs.items()}


def _as_argv(raw: Any) -> list[str]:
    if raw is None:
        return []
    return shlex.split(raw) if isinstance(raw, str) else [str(x) for x in raw]


def compose_containers(path: Path = COMPOSE) -> list[Container]:
    """One Container per compose service: entrypoint + command, environment."""
    doc = yaml.safe_load(path.read_text())
    out = []
    for name, svc in doc["services"].items():
        argv = _as_argv(svc.get("entrypoint")) + _as_argv(svc.get("command"))
        out.append(
            Container(
                f"compose service {name}", tuple(argv), resolve_compose_env(svc.get("environment")), name
            )
        )
    return out


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec(s) inside a workload document (Deployment, Job, ...)."""
    spec = doc.get("spec") or {}
    template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
    if template:
        yield template["spec"]


def k8s_containers(docs: list[dict[str, Any]], where: str) -> list[Container]:
    """Every container and init container of the workloads in docs."""
    out = []
    for doc in docs:
        for pod in pod_specs(doc):
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                argv = [*c.get("command", []), *c.get("args", [])]
                env = {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
                name = f"{where}: {doc['kind']}/{doc['metadata']['name']}/{c['name']}"
                out.append(Container(name, tuple(argv), env, c["name"]))
    return out


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a (multi-document) YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_manifest_files() -> list[Path]:
    """Every Kubernetes YAML under deploy/k8s except the kustomization files themselves."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every target of every panel."""
    doc = json.loads(path.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.append((str(panel["title"]), str(target["expr"])))
    return out


def dashboard_variables(path: Path = DASHBOARD) -> dict[str, str]:
    """Dashboard template variables and their current values."""
    doc = json.loads(path.read_text())
    return {v["name"]: str(v["current"]["value"]) for v in doc["templating"]["list"]}


def expand_query(expr: str, variables: dict[str, str], rate_interval: str = "1m") -> str:
    """Substitute Grafana variables ($name and $__rate_interval) so Prometheus can run the query."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", variables[name])
    return expr


def referenced_metrics(expr: str) -> set[str]:
    """The draftlink_* series names a PromQL expression reads."""
    return set(METRIC_NAME.findall(expr))


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_series(exposition: str) -> set[str]:
    """Series names a /metrics text exposition offers, including those of families with no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_problems(exported: Mapping[str, set[str]], path: Path = DASHBOARD) -> list[str]:
    """Queries reading a metric without a job selector, or one its process does not export."""
    problems = []
    for title, expr in dashboard_queries(path):
        selected = SELECTED_METRIC.findall(expr)
        if {name for name, _ in selected} != referenced_metrics(expr):
            problems.append(f"{title}: every draftlink_* metric needs a {{job=...}} selector: {expr}")
        for name, selector in selected:
            job = JOB_SELECTOR.search(selector)
            process = job.group(1) if job else "?"
            if name not in exported.get(process, set()):
                problems.append(f"{title}: {name} is not exported by {process}")
    return problems
