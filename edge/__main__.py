"""`draftlink-edge` / `python -m edge`: the edge daemon's entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from common.errors import ConfigError, ModelError
from common.runtime import EarlySignals, run_async, setup_logging
from common.tls import load_client_tls

log = logging.getLogger("draftlink.edge")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse config, start, serve until SIGINT/SIGTERM. Exit 2 on bad config or an incompatible cloud."""
    from edge.config import load_edge_config

    try:
        cfg = load_edge_config(argv)
        load_client_tls(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)  # unusable files: exit 2 now
    except ConfigError as exc:
        print(f"draftlink-edge: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    early = EarlySignals()
    from edge.app import serve  # heavy imports (torch, transformers) after --help / config errors
    from edge.client import StartupError

    try:
        run_async(serve(cfg, early))
    except (StartupError, ModelError, ConfigError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    except OSError as exc:  # the HTTP port is taken
        log.error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
