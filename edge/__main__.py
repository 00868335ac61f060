"""`draftlink-edge` / `python -m edge`: the edge daemon's entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from common.errors import ConfigError, ModelError
from common.runtime import run_async, setup_logging
from edge.client import StartupError

log = logging.getLogger("draftlink.edge")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse config, start, serve until SIGINT/SIGTERM. Exit 2 on bad config or an incompatible cloud."""
    from edge.config import load_edge_config

    try:
        cfg = load_edge_config(argv)
    except ConfigError as exc:
        print(f"draftlink-edge: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    from edge.app import serve  # heavy imports (torch, transformers) after --help / config errors

    try:
        run_async(serve(cfg))
    except (StartupError, ModelError, ConfigError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
