"""Thin podman wrappers: the environment (containers.conf), commands, inspection, health checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CONTAINERS_CONF = Path(__file__).with_name("containers.conf")


class PodmanError(RuntimeError):
    """A podman command failed; the message carries its output."""


def env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for podman: the caller's, with CONTAINERS_CONF defaulting to ours."""
    out = dict(os.environ if base is None else base)
    out.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return out


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 600.0,
    extra_env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (podman, podman-compose, ...) with the podman environment."""
    proc = subprocess.run(
        list(args),
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
        check=False,
    )
    if check and proc.returncode != 0:
        raise PodmanError(f"{' '.join(args)} -> exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def podman(*args: str, check: bool = True, timeout: float | None = 600.0) -> subprocess.CompletedProcess[str]:
    """`podman ARGS...`."""
    return run(["podman", *args], check=check, timeout=timeout)


def missing_reason() -> str | None:
    """Why podman cannot be used here at all (None when it can): not installed, or not root (the
    project sets up rootful podman only: sandbox containers.conf, debootstrap, bridge networks)."""
    if shutil.which("podman") is None:
        return "podman not installed (apt-get install podman runc debootstrap)"
    if os.geteuid() != 0:
        return "needs root: the podman path is set up for rootful podman"
    return None


def check_working() -> None:
    """Raise PodmanError when the installed podman does not answer (`podman version`)."""
    try:
        proc = podman("version", check=False, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PodmanError(f"podman version failed: {exc}") from exc
    if proc.returncode != 0:
        raise PodmanError(f"podman version failed: {(proc.stderr or proc.stdout).strip()}")


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def image_inspect(ref: str) -> dict[str, Any]:
    """`podman image inspect` of one image (Config, Size, Healthcheck, ...)."""
    out: list[dict[str, Any]] = json.loads(podman("image", "inspect", ref).stdout)
    return out[0]


def image_id(ref: str) -> str | None:
    proc = podman("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def inspect(container: str) -> dict[str, Any]:
    """`podman container inspect` of one container."""
    out: list[dict[str, Any]] = json.loads(podman("container", "inspect", container).stdout)
    return out[0]


def exit_code(container: str) -> int:
    return int(inspect(container)["State"]["ExitCode"])


def healthcheck(container: str) -> subprocess.CompletedProcess[str]:
    """Run the container's HEALTHCHECK once (podman schedules checks with systemd timers, which
    sandboxes without systemd lack, so status stays `starting` unless checks are run by hand)."""
    return podman("healthcheck", "run", container, check=False, timeout=60)


def exec_in(container: str, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """`podman exec` a command in a running container."""
    flags = ["--user", user] if user else []
    return podman("exec", *flags, container, *argv, check=False, timeout=60)


def logs(container: str, tail: int = 40) -> str:
    proc = podman("logs", "--tail", str(tail), container, check=False, timeout=30)
    return proc.stdout + proc.stderr


def volumes_of(container: str) -> list[str]:
    """Names of the named/anonymous volumes mounted in a container (not bind mounts)."""
    return [m["Name"] for m in inspect(container)["Mounts"] if m.get("Type") == "volume" and m.get("Name")]


def ip_address(container: str, network: str) -> str:
    nets: dict[str, Any] = inspect(container)["NetworkSettings"]["Networks"]
    return str(nets[network]["IPAddress"])
