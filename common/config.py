"""Frozen-dataclass configs with one CLI flag and one DRAFTLINK_<PROC>_* env twin per field.

Precedence: CLI flag > env twin > dataclass default. Unknown env keys under the process's
prefix are errors, so a typo in a deployment fails loudly instead of being ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from common.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger("draftlink.config")

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off", ""}


def field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its --help text (metadata read by `build_parser`)."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] / X | None to the concrete scalar type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _convert(name: str, raw: str, tp: Any) -> Any:
    """Parse one string value (flag or env) into the field's type, or raise ConfigError."""
    base = _base_type(tp)
    if _is_optional(tp) and raw.strip().lower() in ("", "none"):
        return None
    try:
        if base is bool:
            low = raw.strip().lower()
            if low in _BOOL_TRUE:
                return True
            if low in _BOOL_FALSE:
                return False
            raise ValueError(f"expected a boolean, got {raw!r}")
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
        if base is str:
            return raw
        if typing.get_origin(base) is tuple:
            return tuple(s.strip() for s in raw.split(",") if s.strip())
    except ValueError as exc:
        raise ConfigError(f"invalid value for {name}: {raw!r} ({exc})") from None
    raise ConfigError(f"unsupported config type for {name}: {tp!r}")


def env_key(prefix: str, name: str) -> str:
    """DRAFTLINK_EDGE_ + max_concurrency -> DRAFTLINK_EDGE_MAX_CONCURRENCY."""
    return f"{prefix}{name.upper()}"


def build_parser(cls: type[Any], prog: str, description: str, prefix: str) -> argparse.ArgumentParser:
    """One --flag per dataclass field; defaults are left unset so env twins can apply."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Every flag has an environment twin: {prefix}<FLAG_NAME> (e.g. "
        f"{env_key(prefix, 'port')}). Precedence: flag > environment > default.",
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} (default: {default!r}; env {env_key(prefix, f.name)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if _base_type(hints[f.name]) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
        parser.add_argument(flag, **kwargs)
    return parser


def load_config(
    cls: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    prefix: str,
    env: Mapping[str, str] | None = None,
) -> T:
    """Resolve a config dataclass from CLI flags, then env twins, then defaults."""
    env = os.environ if env is None else env
    parser = build_parser(cls, prog, description, prefix)
    args = parser.parse_args(list(argv) if argv is not None else None)
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # cls is a dataclass type
    names = {f.name for f in fields}
    unknown = sorted(k for k in env if k.startswith(prefix) and k[len(prefix) :].lower() not in names)
    if unknown:
        known = ", ".join(env_key(prefix, n) for n in sorted(names))
        raise ConfigError(f"unknown environment key(s) {', '.join(unknown)}; known keys: {known}")
    values: dict[str, Any] = {}
    for f in fields:
        cli = getattr(args, f.name)
        if cli is not None:
            values[f.name] = cli if not isinstance(cli, str) else _convert(f.name, cli, hints[f.name])
        elif env_key(prefix, f.name) in env:
            values[f.name] = _convert(env_key(prefix, f.name), env[env_key(prefix, f.name)], hints[f.name])
    try:
        cfg = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def describe(cfg: Any) -> str:
    """The resolved config as one JSON line for the start-up log (secrets masked)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("secret") and value:
            value = "***"
        out[f.name] = value
    return json.dumps(out, sort_keys=True, default=str)
