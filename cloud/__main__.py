"""`draftlink-cloud` / `python -m cloud`: the cloud verifier process."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from cloud.config import load
from common.errors import ConfigError
from common.runtime import run_async, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the config, then serve until SIGTERM/SIGINT; returns the exit code."""
    try:
        cfg = load(argv)
    except ConfigError as exc:
        print(f"draftlink-cloud: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    early: list[int] = []  # a signal during the heavy imports below still means "stop", exit 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    from cloud.app import serve  # heavy (torch, transformers): only after the config parsed

    code = run_async(serve(cfg, stop_requested=lambda: bool(early)))
    for sig in (signal.SIGTERM, signal.SIGINT):  # a late repeat signal must not turn 0 into 143
        signal.signal(sig, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())
