"""`draftlink-cloud` / `python -m cloud`: the cloud verifier process."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cloud.config import load
from common.errors import ConfigError
from common.runtime import EarlySignals, run_async, setup_logging
from common.tls import load_server_tls


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and check the config, then serve until SIGTERM/SIGINT; returns the exit code."""
    try:
        cfg = load(argv)
        load_server_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)  # unusable files: exit 2 now
    except ConfigError as exc:
        print(f"draftlink-cloud: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    early = EarlySignals()  # a signal during the heavy imports below still means "stop", exit 0
    from cloud.app import serve  # heavy (torch, transformers): only after the config parsed

    return run_async(serve(cfg, early))


if __name__ == "__main__":
    sys.exit(main())
