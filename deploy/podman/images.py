"""Build the cloud, edge and link images with podman, offline (`make images`).

1. Base image: debootstrap a minimal Debian (python3, python3-venv, python-is-python3,
   ca-certificates) from the archive apt already uses, trim docs and apt lists, `podman import`.
2. Wheelhouse: `pip download` on the host every Python package the images install (the CPU torch
   wheel, the project's dependencies, the build backend) for CPython 3.11 manylinux.
3. `podman build --network none` of each Dockerfile with BASE_IMAGE=<base>, OFFLINE=1 and
   `--build-context wheelhouse=<dir>`: no step can download anything.

Steps 1 and 2 are cached in $DRAFTLINK_IMAGES_CACHE (default ~/.cache/draftlink/containers) and in
podman's storage, keyed by their inputs; podman's layer cache makes unchanged rebuilds quick.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.podman import engine
from deploy.tools import inventory as inv

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
PROCESSES = ("cloud", "edge", "link")
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_TRIM = (
    *("var/cache/apt/archives", "var/lib/apt/lists"),
    *("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"),
)
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The wheels run on the base image's interpreter and glibc (bookworm: CPython 3.11, glibc 2.36).
PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36
BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")  # pyproject's build-system (pip's build isolation)
INPUTS_LABEL = "io.draftlink.build-inputs"

Log = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """A step of the offline build cannot run here (missing tool, no network, ...)."""


@dataclass(frozen=True)
class Built:
    """One built image: reference, size in bytes, build seconds (podman's cache included)."""

    process: str
    ref: str
    size: int
    seconds: float
    rebuilt: bool  # False: an image built from the same inputs was already there


@dataclass(frozen=True)
class Report:
    base: str
    base_seconds: float
    wheelhouse: str
    wheelhouse_seconds: float
    images: tuple[Built, ...]


def default_cache() -> Path:
    return Path(os.environ.get("DRAFTLINK_IMAGES_CACHE") or "~/.cache/draftlink/containers").expanduser()


def _digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- base image


def apt_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian archive apt uses for SUITE (deb822 .sources or sources.list), else deb.debian.org."""
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.M))
            if SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                uri = fields.get("URIs", "").split()
                if uri and not uri[0].rstrip("/").endswith("-security"):
                    return uri[0]
    lists = etc / "sources.list"
    for line in lists.read_text().splitlines() if lists.exists() else []:
        words = re.sub(r"\[[^]]*\]", " ", line.split("#")[0]).split()  # drop [arch=...] options
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            return words[1]
    return DEFAULT_MIRROR


def base_ref() -> str:
    """The base image's name: its tag changes with the package list and trimming."""
    return f"localhost/draftlink-base:{SUITE}-{_digest([SUITE, *BASE_PACKAGES, *BASE_TRIM, *BASE_CHANGES])}"


def base_unavailable_reason(cache: Path | None = None) -> str | None:
    """Why the base image can be neither found nor made here (None when it can)."""
    ref = base_ref()
    tarball = (cache or default_cache()) / f"{ref.rpartition(':')[2]}.tar"
    if tarball.exists() or (shutil.which("debootstrap") and os.geteuid() == 0):
        return None
    if engine.image_exists(ref):
        return None
    if shutil.which("debootstrap") is None:
        return "debootstrap not installed and no cached base image (apt-get install debootstrap)"
    if os.geteuid() != 0:
        return "debootstrap needs root to make the base image (none cached)"
    return None


def ensure_base(cache: Path, mirror: str | None = None, log: Log = _stderr) -> str:
    """The base image in podman's storage: as is, else imported from the cached tarball, else made."""
    ref = base_ref()
    if engine.image_exists(ref):
        return ref
    tarball = cache / f"{ref.rpartition(':')[2]}.tar"
    if not tarball.exists():
        reason = base_unavailable_reason(cache)
        if reason:
            raise ImageBuildError(reason)
        _debootstrap(tarball, mirror or apt_mirror(), log)
    log(f"importing {tarball} as {ref}")
    engine.podman("import", *(f"--change={c}" for c in BASE_CHANGES), str(tarball), ref)
    return ref


def _debootstrap(tarball: Path, mirror: str, log: Log) -> None:
    rootfs = tarball.with_name(f".{tarball.stem}.{os.getpid()}.rootfs")
    log(f"debootstrap {SUITE} from {mirror} (minbase + {', '.join(BASE_PACKAGES)})")
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs)]
    try:
        proc = subprocess.run([*cmd, mirror], capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            log_file = rootfs / "debootstrap" / "debootstrap.log"
            detail = log_file.read_text()[-3000:] if log_file.exists() else proc.stderr[-3000:]
            raise ImageBuildError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{detail}")
        for rel in BASE_TRIM:
            for child in (rootfs / rel).glob("*"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        partial = tarball.with_name(f".{tarball.name}.{os.getpid()}")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.replace(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


# --------------------------------------------------------------------------- wheelhouse


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Every requirement the images install: pyproject's dependencies (torch pinned to its CPU
    build, `+cpu`, never a CUDA one) and the build backend pip's build isolation needs."""
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = [f"{d}+cpu" if re.fullmatch(r"torch==[\w.]+", d) else d for d in deps]
    if not any(d.startswith("torch==") and d.endswith("+cpu") for d in out):
        raise ImageBuildError("pyproject must pin torch exactly (torch==X.Y.Z) for the CPU wheel")
    return [*out, *BUILD_REQUIREMENTS]


def platform_tags(machine: str | None = None) -> list[str]:
    """manylinux tags the base image's glibc accepts (pip does not expand a custom --platform)."""
    arch = machine or platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 4, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def ensure_wheelhouse(cache: Path, torch_index_url: str | None = None, log: Log = _stderr) -> Path:
    """A directory of wheels for every requirement, downloaded once per requirement set."""
    reqs = requirements()
    tags = platform_tags()
    path = cache / f"wheelhouse-{_digest([PYTHON_VERSION, *tags, *reqs])}"
    if (path / ".complete").exists():
        return path
    partial = cache / f".{path.name}.{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    log(f"pip download {len(reqs)} requirements (torch CPU build) into {path}")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(partial)]
    cmd += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311"]
    cmd += [f"--platform={t}" for t in tags]
    cmd += ["--extra-index-url", torch_index_url] if torch_index_url else []
    proc = subprocess.run([*cmd, *reqs], capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        hint = "no CPU torch wheel found? pass --torch-index-url https://download.pytorch.org/whl/cpu"
        raise ImageBuildError(f"pip download failed ({hint}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    (partial / ".complete").write_text("\n".join(sorted(p.name for p in partial.glob("*.whl"))) + "\n")
    if path.exists():  # a concurrent run finished first
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.replace(path)
    return path


# --------------------------------------------------------------------------- images


def image_ref(process: str, tag: str = "latest") -> str:
    return f"localhost/draftlink-{process}:{tag}"


def build_inputs(process: str, base: str, wheelhouse: Path) -> str:
    """Digest of everything a build reads: base image ID, wheelhouse, Dockerfile, dockerignore
    and the files its COPY instructions take from the context (after the dockerignore)."""
    dockerfile = DOCKER_DIR / f"{process}.Dockerfile"
    digest = hashlib.sha256()
    for part in (engine.image_id(base) or base, wheelhouse.name, *build_command(process, base, wheelhouse)):
        digest.update(part.replace(str(ROOT), ".").encode() + b"\0")
    patterns = inv.dockerignore_patterns(dockerfile)
    for path in (dockerfile, Path(f"{dockerfile}.dockerignore")):
        digest.update(path.read_bytes())
    for ins in inv.dockerfile_instructions(dockerfile):
        for src in inv.copy_sources(ins.args) if ins.keyword == "COPY" else []:
            root = ROOT / src
            for file in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                rel = file.relative_to(ROOT).as_posix()
                if not inv.is_ignored(rel, patterns):
                    digest.update(rel.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def build_command(process: str, base: str, wheelhouse: Path, tag: str = "latest") -> list[str]:
    """`podman build` of one image: docker format (keeps HEALTHCHECK), the Dockerfile's
    dockerignore (podman 4.3 does not pick up <Dockerfile>.dockerignore), no network."""
    dockerfile = DOCKER_DIR / f"{process}.Dockerfile"
    return [
        "podman", "build", "--format", "docker", "--layers", "--network", "none",
        "-f", str(dockerfile), "--ignorefile", f"{dockerfile}.dockerignore",
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "OFFLINE=1",
        "--build-context", f"wheelhouse={wheelhouse}",
        "-t", image_ref(process, tag), str(ROOT),
    ]  # fmt: skip


def build(process: str, base: str, wheelhouse: Path, tag: str = "latest", log: Log = _stderr) -> Built:
    """Build one image, or keep the existing one when it was built from the same inputs (podman's
    own layer cache would still hash the 1 GB venv for COPY --from: ~30 s an image)."""
    ref = image_ref(process, tag)
    start = time.monotonic()
    inputs = build_inputs(process, base, wheelhouse)
    previous = engine.image_id(ref)
    if previous:
        info = engine.image_inspect(ref)
        if (info.get("Labels") or {}).get(INPUTS_LABEL) == inputs:
            return Built(process, ref, int(info["Size"]), time.monotonic() - start, rebuilt=False)
    log(f"building {ref}")
    command = build_command(process, base, wheelhouse, tag)
    proc = engine.run(
        [*command[:-1], "--label", f"{INPUTS_LABEL}={inputs}", command[-1]], check=False, timeout=3600
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise ImageBuildError(f"podman build of {ref} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    current = engine.image_id(ref)
    if previous and previous != current:  # the replaced image, now untagged: free its layers
        engine.podman("rmi", previous, check=False)
    return Built(process, ref, int(engine.image_inspect(ref)["Size"]), seconds, rebuilt=True)


def build_all(
    processes: Iterable[str] = PROCESSES,
    *,
    tag: str = "latest",
    cache: Path | None = None,
    mirror: str | None = None,
    torch_index_url: str | None = None,
    log: Log = _stderr,
) -> Report:
    """Base image, wheelhouse, then each image; raises ImageBuildError with the failing output."""
    reason = engine.missing_reason()
    if reason:
        raise ImageBuildError(reason)
    engine.check_working()
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    base = ensure_base(cache, mirror, log)
    base_seconds = time.monotonic() - start
    start = time.monotonic()
    wheels = ensure_wheelhouse(cache, torch_index_url, log)
    wheel_seconds = time.monotonic() - start
    built = tuple(build(p, base, wheels, tag, log) for p in processes)
    return Report(base, base_seconds, str(wheels), wheel_seconds, built)


def render(report: Report) -> str:
    rows = [
        f"base image   {report.base}  ({report.base_seconds:.0f} s)",
        f"wheelhouse   {report.wheelhouse}  ({report.wheelhouse_seconds:.0f} s)",
    ]
    rows += [
        f"{b.ref:34} {b.size / 1e6:7.0f} MB  " + (f"built in {b.seconds:.0f} s" if b.rebuilt else "unchanged")
        for b in report.images
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m deploy.podman.images", description=doc)
    parser.add_argument("processes", nargs="*", metavar="{cloud,edge,link}", help="default: all three")
    parser.add_argument("--tag", default="latest", help="image tag (default: latest)")
    parser.add_argument("--cache", type=Path, default=None, help=f"default: {default_cache()}")
    parser.add_argument("--mirror", default=None, help="Debian archive for debootstrap (default: apt's)")
    parser.add_argument("--torch-index-url", default=None, help="extra index with the CPU torch wheel")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    unknown = set(args.processes) - set(PROCESSES)
    if unknown:
        parser.error(f"unknown images: {sorted(unknown)} (choose from {', '.join(PROCESSES)})")
    try:
        report = build_all(
            args.processes or PROCESSES,
            tag=args.tag,
            cache=args.cache,
            mirror=args.mirror,
            torch_index_url=args.torch_index_url,
        )
    except (ImageBuildError, engine.PodmanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
