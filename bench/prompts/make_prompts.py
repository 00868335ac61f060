"""Regenerate the frozen prompt sets (code from this interpreter's stdlib, English from fortunes).

Usage: ``.venv/bin/python bench/prompts/make_prompts.py`` (needs Debian's ``fortunes`` package:
``apt-get install -y fortunes``). The output is committed; rerunning on another Python version
gives different code prompts, which is why the files are frozen rather than built at test time.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Tame, English-prose categories of the (non-offensive) fortunes package.
FORTUNE_FILES = (
    "computers",
    "education",
    "literature",
    "people",
    "platitudes",
    "science",
    "wisdom",
    "work",
)
N_CODE = 240
N_ENGLISH = 240


def _stable_key(text: str) -> str:
    """Order by content hash so the selection does not depend on file-system order."""
    return hashlib.sha256(text.encode()).hexdigest()


def _function_prompts(path: Path, stdlib: Path) -> list[dict[str, str]]:
    """Cut each top-level or method function into a prompt: signature + the first lines of body."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines()
    out: list[dict[str, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or node.end_lineno is None:
            continue
        n_body = node.end_lineno - node.lineno + 1
        if not 8 <= n_body <= 60:
            continue
        # Keep the def line plus about a third of the body: the model has to continue the rest.
        keep = max(3, n_body // 3)
        chunk = lines[node.lineno - 1 : node.lineno - 1 + keep]
        indent = len(chunk[0]) - len(chunk[0].lstrip())
        text = "\n".join(line[indent:] for line in chunk) + "\n"
        if not 80 <= len(text) <= 700 or not text.isascii():
            continue
        rel = path.relative_to(stdlib).as_posix()
        out.append({"source": f"{rel}:{node.lineno}:{node.name}", "text": text})
    return out


def code_prompts(n: int) -> list[dict[str, str]]:
    """Pick n function-prefix prompts from the stdlib, at most 2 per module, content-hash ordered."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in stdlib.rglob("*.py")
        if not any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for part in p.parts)
    )
    pool: list[dict[str, str]] = []
    for path in files:
        cands = sorted(_function_prompts(path, stdlib), key=lambda c: _stable_key(c["text"]))
        pool.extend(cands[:2])
    pool.sort(key=lambda c: _stable_key(c["text"]))
    chosen = pool[:n]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} code prompts found in {stdlib}")
    return [{"id": f"code-{i:04d}", **c} for i, c in enumerate(chosen)]


def english_prompts(n: int) -> list[dict[str, str]]:
    """Pick n fortunes of 60-400 characters from a few tame categories, content-hash ordered."""
    pool: list[dict[str, str]] = []
    for name in FORTUNE_FILES:
        path = FORTUNE_DIR / name
        if not path.exists():
            raise SystemExit(f"{path} missing: apt-get install -y fortunes")
        for j, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n%\n")):
            text = raw.strip("\n")
            if 60 <= len(text) <= 400 and text.isascii() and "\t" not in text:
                pool.append({"source": f"fortunes/{name}#{j}", "text": text})
    pool.sort(key=lambda c: _stable_key(c["text"]))
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} fortunes found")
    return [{"id": f"en-{i:04d}", **c} for i, c in enumerate(pool[:n])]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """One JSON object per line, keys id, source, text."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"id": row["id"], "source": row["source"], "text": row["text"]}) + "\n")


def main() -> None:
    """Write code.jsonl and english.jsonl next to this script."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    write_jsonl(args.out / "code.jsonl", code_prompts(N_CODE))
    write_jsonl(args.out / "english.jsonl", english_prompts(N_ENGLISH))
    print(f"wrote {N_CODE} code and {N_ENGLISH} English prompts to {args.out}")


if __name__ == "__main__":
    main()
