"""Request bodies before the schema: byte limit, strict JSON (UTF-8, no NaN/Infinity), valid Unicode."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from edge.errors import bad_request, body_too_large, from_validation, invalid_json

M = TypeVar("M", bound=BaseModel)
# After a strict UTF-8 decode, a surrogate can only come from a \uXXXX escape in [D800, DFFF];
# a pair is joined into one character by json, so any surrogate left after parsing is lone.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, or 413 as soon as it is known to exceed `limit` bytes (Content-Length first)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:  # "²".isdigit() too
        raise body_too_large(int(declared), limit)  # not read at all; the server discards it
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked (or lying) uploads are counted as they arrive
            raise body_too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (RFC 8259 has no NaN or Infinity)")


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes; 400 for anything else (bad UTF-8, NaN, lone surrogates...)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_json(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise invalid_json("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, ints over the 4300-digit limit
        raise invalid_json(str(exc)) from None
    if not isinstance(obj, dict):
        raise invalid_json(f"the body must be a JSON object, got {type(obj).__name__}")
    if _SURROGATE_ESCAPE.search(text):
        where = lone_surrogate(obj)
        if where is not None:
            raise bad_request(f"{where}: invalid Unicode (a lone surrogate \\uD800-\\uDFFF)", param=where)
    return obj


def lone_surrogate(obj: Any) -> str | None:
    """Dotted path of a string (value or key) holding a lone surrogate; None if there is none."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:  # iterative: the depth is bounded only by json's recursion limit
        path, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            if isinstance(key, str) and _SURROGATE.search(key):
                return _join(path, key)
            if isinstance(item, str):
                if _SURROGATE.search(item):
                    return _join(path, key)
            elif isinstance(item, dict | list):  # numbers, bools and null are skipped cheaply
                stack.append((_join(path, key), item))
    return None


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def validate(model: type[M], obj: dict[str, Any]) -> M:
    """Schema check (pydantic, strict); every problem is a 400 naming the first bad field."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise from_validation(exc.errors(include_url=False, include_input=False)) from None
