"""The images' build steps without a Docker engine: the builder stage's wheel, the link's deps."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from deploy.tools import inventory as inv
from launcher.procs import free_port

LINK_DOCKERFILE = inv.DEPLOY / "docker" / "link.Dockerfile"


def _can_build_wheels_offline() -> bool:
    """setuptools with a built-in bdist_wheel (>= 70.1), or with the wheel package beside it."""
    try:
        major, minor = (int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.parametrize("process", ["cloud", "edge", "link"])
def test_builder_stage_builds_a_wheel_with_stubs(process: str, tmp_path: Path) -> None:
    """The build context the Dockerfile sees (COPY + dockerignore), protogen, then the wheel."""
    if not _can_build_wheels_offline():
        pytest.skip("needs setuptools >= 70.1 (or setuptools + wheel) to build the wheel without PyPI")
    dockerfile = inv.DEPLOY / "docker" / f"{process}.Dockerfile"
    context = tmp_path / "src"
    copied = inv.build_context(dockerfile, context)
    assert not [p for p in copied if "__pycache__" in p or p.startswith("common/rpc/gen/")]
    runs = " ".join(i.args for i in inv.dockerfile_instructions(dockerfile) if i.keyword == "RUN")
    if "common.protogen" in runs:
        gen = subprocess.run(
            [sys.executable, "-m", "common.protogen"], cwd=context, capture_output=True, text=True
        )
        assert gen.returncode == 0, gen.stderr
        assert (context / "common/rpc/gen/verifier_pb2_grpc.py").exists()
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("draftlink-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert f"{process}/__main__.py" in names
    assert "common/models/assets/tiny_tokenizer.json" in names
    if "common.protogen" in runs:
        assert {"common/rpc/gen/verifier_pb2.py", "common/rpc/gen/verifier_pb2_grpc.py"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        f"draftlink-{process} = {process}.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def _link_image_modules() -> set[str]:
    """Top-level modules the link image has: stdlib, the project, and what its RUN installs."""
    runs = " ".join(i.args for i in inv.dockerfile_instructions(LINK_DOCKERFILE) if i.keyword == "RUN")
    dists = re.findall(r'"([A-Za-z][A-Za-z0-9_-]*)[<>=]', runs)
    assert dists, "the link image installs its dependencies explicitly"
    return {d.lower().replace("-", "_") for d in dists} | {"common", "link"}


_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    allowed = set(sys.argv[1].split(",")) | set(sys.stdlib_module_names)
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] not in allowed:
                raise ImportError(f"{name} is not installed in the link image")
            return None
    sys.meta_path.insert(0, Block())
    from link.__main__ import main
    sys.exit(main(sys.argv[2:]))
    """
)


def test_link_runs_with_only_the_link_images_dependencies() -> None:
    """Run draftlink-link with every import outside its image's package set refused."""
    metrics_port = free_port()
    argv = [
        sys.executable,
        "-c",
        _BLOCKER,
        ",".join(sorted(_link_image_modules())),
        *("--listen", f"127.0.0.1:{free_port()}", "--upstream", f"127.0.0.1:{free_port()}"),
        *("--metrics-port", str(metrics_port), "--uplink-bps", "1000000"),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, f"link exited: {proc.communicate()[0]}"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "not installed in the link image" not in out
