"""`draftlink-link` / `python -m link`: run the shaped relay until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from common.config import describe
from common.errors import ConfigError
from common.runtime import run_async, setup_logging
from link.config import LinkConfig, load
from link.metrics import LinkMetrics
from link.relay import LinkRelay

log = logging.getLogger("draftlink.link")

SHUTDOWN_GRACE_S = 1.0


async def serve(cfg: LinkConfig, stop: asyncio.Event | None = None) -> int:
    """Start the relay and /metrics, wait for a stop signal, shut down in order; return 0."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = LinkMetrics()
    relay = LinkRelay(cfg, metrics)
    await relay.start()
    try:
        if cfg.metrics_port:
            port = metrics.serve(cfg.listen_addr[0], cfg.metrics_port)
            log.info("metrics on http://%s:%d/metrics", cfg.listen_addr[0], port)
        await stop.wait()
        log.info("stopping: no new connections, closing %d open", relay.open_connections)
    finally:
        # Order matters: stop accepting and close connections before the metrics go away.
        await relay.close(grace=SHUTDOWN_GRACE_S)
        metrics.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        cfg = load(argv)
    except ConfigError as exc:
        print(f"draftlink-link: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    log.info("draftlink-link config %s", describe(cfg))
    try:
        return run_async(serve(cfg))
    except OSError as exc:  # e.g. the listen or metrics port is taken
        log.error("draftlink-link failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
