"""Print (or refresh in deploy/README.md) the DRAFTLINK_* env-key tables from the config dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import env_key

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- envkeys:begin (python -m deploy.tools.envkeys --write) -->", "<!-- envkeys:end -->"


@dataclass(frozen=True)
class Process:
    """A draftlink process: its console script and where its config dataclass lives."""

    name: str
    script: str
    module: str
    cls: str
    prefix: str

    def config_class(self) -> type[Any]:
        """Import the process's frozen config dataclass."""
        cls: type[Any] = getattr(importlib.import_module(self.module), self.cls)
        return cls

    def fields(self) -> list[dataclasses.Field[Any]]:
        """The config dataclass's fields, in declaration order."""
        return list(dataclasses.fields(self.config_class()))

    def env_keys(self) -> set[str]:
        """Every DRAFTLINK_<PROC>_* key this process accepts."""
        return {env_key(self.prefix, f.name) for f in self.fields()}


PROCESSES: dict[str, Process] = {
    "cloud": Process("cloud", "draftlink-cloud", "cloud.config", "CloudConfig", "DRAFTLINK_CLOUD_"),
    "edge": Process("edge", "draftlink-edge", "edge.config", "EdgeConfig", "DRAFTLINK_EDGE_"),
    "link": Process("link", "draftlink-link", "link.config", "LinkConfig", "DRAFTLINK_LINK_"),
}
# Keys outside the per-process prefixes, read by shared code (common/models/fetch.py).
GLOBAL_ENV_KEYS: dict[str, str] = {
    "DRAFTLINK_CACHE_DIR": "model cache of `make fetch-models` (layout `models/<name>/`); "
    "default `~/.cache/draftlink`, `/models` in the images",
}


def process_for_script(script: str) -> Process | None:
    """The process a console script (draftlink-cloud, ...) starts, or None."""
    return next((p for p in PROCESSES.values() if p.script == script), None)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if value is None or value is dataclasses.MISSING:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`" if value else "(empty)"
    return f"`{value}`"


def process_table(proc: Process) -> str:
    """One markdown table: env key, flag, default, meaning."""
    lines = [
        f"#### {proc.script} (`{proc.module}.{proc.cls}`)",
        "",
        "| env key | flag | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for f in proc.fields():
        help_text = str(f.metadata.get("help", ""))
        if "choices" in f.metadata:
            help_text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        if f.metadata.get("secret"):
            help_text += " (secret: masked in logs; use a Secret)"
        flag = "--" + f.name.replace("_", "-")
        key = env_key(proc.prefix, f.name)
        lines.append(f"| `{key}` | `{flag}` | {_cell(_default(f))} | {_cell(help_text)} |")
    return "\n".join(lines)


def tables() -> str:
    """All tables: the three processes, then the shared keys."""
    parts = [process_table(p) for p in PROCESSES.values()]
    shared = ["#### shared", "", "| env key | meaning |", "| --- | --- |"]
    shared += [f"| `{k}` | {_cell(v)} |" for k, v in GLOBAL_ENV_KEYS.items()]
    parts.append("\n".join(shared))
    return "\n\n".join(parts) + "\n"


def splice(text: str, body: str) -> str:
    """Replace what lies between the markers in text with body."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + body + text[end:]


def main(argv: list[str] | None = None) -> int:
    """Print the tables; --write refreshes deploy/README.md, --check fails when it is stale."""
    parser = argparse.ArgumentParser(prog="python -m deploy.tools.envkeys", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="refresh the tables in deploy/README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when deploy/README.md is stale")
    args = parser.parse_args(argv)
    body = tables()
    if not (args.write or args.check):
        sys.stdout.write(body)
        return 0
    current = README.read_text()
    fresh = splice(current, body)
    if args.check:
        if fresh != current:
            print(f"{README} env-key tables are stale: run python -m deploy.tools.envkeys --write")
            return 1
        return 0
    README.write_text(fresh)
    print(f"refreshed env-key tables in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
