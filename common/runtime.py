"""Process runtime helpers: logging set-up, uvloop installation."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def setup_logging(level: str = "INFO") -> None:
    """One log format for every draftlink process (timestamp, level, logger, message)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run the process's main coroutine on uvloop (a hard dependency on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - only on platforms uvloop does not support
        return asyncio.run(main)
    return uvloop.run(main)
