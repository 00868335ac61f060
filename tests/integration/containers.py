"""Helpers for the podman tests: polling, terminal notes, probes run inside the images."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest

from deploy.podman import engine

T = TypeVar("T")

# Run as root inside an image (network off): build tools on PATH or under /opt, build leftovers,
# credential files, private keys, and what the venv holds (torch build, CUDA wheels).
IMAGE_PROBE = r"""
import importlib.metadata as md, json, os, shutil
TOOLS = ["gcc", "cc", "c++", "g++", "clang", "ld", "as", "make", "cmake", "ninja", "git", "protoc"]
SECRET_NAMES = {".netrc", ".pypirc", "pip.conf", ".git-credentials", "id_rsa", "id_ed25519", ".npmrc"}
SKIP = ("/proc", "/sys", "/dev", "/usr/share/ca-certificates", "/etc/ssl")
found, secrets, keys = [t for t in TOOLS if shutil.which(t)], [], []
for top, dirs, files in os.walk("/"):
    if top.startswith(SKIP):
        dirs[:] = []
        continue
    for f in files:
        path = os.path.join(top, f)
        if f in SECRET_NAMES:
            secrets.append(path)
        if f.startswith("protoc") and os.access(path, os.X_OK) and not os.path.islink(path):
            found.append(path)
        if top.startswith(("/opt", "/home", "/root", "/etc")) and os.path.isfile(path):
            try:
                if os.path.getsize(path) < 65536 and b"PRIVATE KEY-----" in open(path, "rb").read():
                    keys.append(path)
            except OSError:
                pass
dists = {d.metadata["Name"].lower(): d.version for d in md.distributions()}
print(json.dumps({
    "build_tools": found, "secret_files": secrets, "private_keys": keys,
    "leftovers": [p for p in ("/src", "/wheelhouse", "/root/.cache/pip") if os.path.exists(p)],
    "torch": dists.get("torch"), "cuda_dists": sorted(d for d in dists if d.startswith("nvidia")),
}))
"""

# Files a uid owns under some directories (e.g. podman's --read-only tmpfs mounts).
OWNED_PROBE = r"""
import json, os, sys
uid, found = int(sys.argv[1]), []
for top in sys.argv[2:]:
    for d, dirs, files in os.walk(top):
        found += [os.path.join(d, n) for n in dirs + files if os.lstat(os.path.join(d, n)).st_uid == uid]
print(json.dumps({"owned": found}))
"""

# Run as root inside a running container: which paths take a write.
WRITE_PROBE = r"""
import json, os, sys
out = {}
for d in sys.argv[1:]:
    p = os.path.join(d, ".draftlink-write-probe")
    try:
        open(p, "w").close()
        os.unlink(p)
        out[d] = "ok"
    except OSError as e:
        out[d] = e.strerror
print(json.dumps(out))
"""


def say(request: pytest.FixtureRequest, text: str) -> None:
    """Write straight to the terminal (measured sizes and times, logs of a failed stack)."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        tr.write_line("")
        for line in text.splitlines():
            tr.write_line(line)


def wait_for(check: Callable[[], T | None], what: str, timeout: float, detail: Callable[[], Any]) -> T:
    """Poll check() until it returns something truthy; fail with detail() for context."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(1.0)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


def complete(base_url: str, max_tokens: int = 16) -> dict[str, Any]:
    body = {"prompt": "def fibonacci(n):", "max_tokens": max_tokens, "temperature": 0}
    resp = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def exec_json(container: str, code: str, *args: str, user: str | None = None) -> dict[str, Any]:
    """Run a Python snippet in a running container and parse its JSON output."""
    proc = engine.exec_in(container, "python", "-c", code, *args, user=user)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def metrics(container: str, port: int, path: str = "/metrics") -> str:
    """A container's /metrics, fetched from inside it (no host networking involved)."""
    code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}{path}').read().decode())"
    proc = engine.exec_in(container, "python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def sample(exposition: str, name: str, labels: str = "") -> float | None:
    """One sample's value from a text exposition (`name{labels} value`)."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in exposition.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return None


def process_status(container: str) -> dict[str, Any]:
    """PID 1's uid and argv inside a running container."""
    code = (
        "import json; s = open('/proc/1/status').read().split('\\n'); "
        "uid = next(l for l in s if l.startswith('Uid:')).split()[1:]; "
        "argv = open('/proc/1/cmdline', 'rb').read().split(b'\\0')[:-1]; "
        "print(json.dumps({'uid': [int(u) for u in uid], 'argv': [a.decode() for a in argv]}))"
    )
    return exec_json(container, code)
