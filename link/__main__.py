"""`draftlink-link` / `python -m link`: run the shaped relay until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from common.config import describe
from common.errors import ConfigError
from common.runtime import EarlySignals, run_async, serve_until_signalled, setup_logging
from link.config import LinkConfig, load
from link.metrics import LinkMetrics
from link.relay import LinkRelay

log = logging.getLogger("draftlink.link")

SHUTDOWN_GRACE_S = 1.0  # a cut connection is resumed by the edge; no need to hold it long


class LinkProcess:
    """The relay under common.runtime's lifecycle: listen, relay, stop accepting, close connections."""

    def __init__(self, cfg: LinkConfig) -> None:
        self.cfg = cfg
        self.metrics = LinkMetrics()
        self.relay = LinkRelay(cfg, self.metrics)
        self._closed = False

    async def start(self) -> None:
        await self.relay.start()
        if self.cfg.metrics_port:
            port = self.metrics.serve(self.cfg.listen_addr[0], self.cfg.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.cfg.listen_addr[0], port)

    async def ready(self) -> None:
        return None  # nothing slow: relaying starts with start()

    async def drain(self, grace: float) -> None:
        # Order matters: stop accepting and close connections before the metrics go away.
        log.info("stopping: no new connections, closing %d open", self.relay.open_connections)
        await self._close_relay(grace)

    async def force(self) -> None:
        await self._close_relay(0.0)

    async def _close_relay(self, grace: float) -> None:
        if not self._closed:
            self._closed = True
            await self.relay.close(grace=grace)

    async def close(self) -> None:
        await self._close_relay(0.0)
        self.metrics.close()


async def serve(cfg: LinkConfig, early: EarlySignals | None = None) -> int:
    """Serve until a stop signal, then shut down in order; 0."""
    await serve_until_signalled(LinkProcess(cfg), SHUTDOWN_GRACE_S, "draftlink-link", early)
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
        return run_async(serve(cfg, EarlySignals()))
    except OSError as exc:  # e.g. the listen or metrics port is taken
        log.error("draftlink-link failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
