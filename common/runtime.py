"""Process runtime helpers: logging set-up, uvloop installation, free ports."""

from __future__ import annotations

import asyncio
import logging
import socket
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


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on host (tests and `make run`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
