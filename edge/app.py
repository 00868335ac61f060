"""Edge start-up and shutdown: load the drafter, check the cloud's tokenizer, serve HTTP on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from types import FrameType

import torch
import uvicorn

from common.config import describe
from common.models import LoadedModel, check_compatible, load_model
from common.rpc.convert import ServerInfo
from common.wire import parse_grpc_args
from edge.client import CloudClient, StartupError, make_channel
from edge.config import EdgeConfig
from edge.drafter import Drafter
from edge.http_api import build_app
from edge.metrics import EdgeMetrics
from edge.service import EdgeService, codec_kind

log = logging.getLogger("draftlink.edge")


def load_drafter(cfg: EdgeConfig) -> LoadedModel:
    """Load the drafter model (blocking; run it off the event loop)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return load_model(cfg.model, fast_linear=cfg.fast_linear, int8=cfg.int8)


def check_cloud(cfg: EdgeConfig, lm: LoadedModel, info: ServerInfo) -> None:
    """Refuse to run against an incompatible cloud (StartupError naming both sides)."""
    try:
        check_compatible(lm.fingerprint, cfg.model, info.tokenizer_fingerprint, info.model_id)
    except Exception as exc:  # TokenizerMismatchError: add the full fingerprints
        full = f"drafter {cfg.model}: {lm.fingerprint}; cloud {info.model_id}: {info.tokenizer_fingerprint}"
        raise StartupError(f"{exc} [{full}]") from None
    if info.vocab_size and info.vocab_size != lm.vocab_size:
        raise StartupError(
            f"vocabulary size mismatch: drafter {cfg.model} has {lm.vocab_size}, "
            f"cloud {info.model_id} has {info.vocab_size}"
        )
    kind = codec_kind(cfg.codec)
    if info.codecs and kind not in info.codecs:
        raise StartupError(f"the cloud does not decode codec {kind!r} (it decodes {', '.join(info.codecs)})")
    if info.limits.max_draft_len and cfg.draft_len > info.limits.max_draft_len:
        raise StartupError(f"draft_len {cfg.draft_len} exceeds the cloud's limit {info.limits.max_draft_len}")


async def start_service(cfg: EdgeConfig) -> EdgeService:
    """Load the drafter and reach the cloud concurrently, then check they fit together."""
    channel = make_channel(cfg.cloud, cfg.tls_ca, cfg.tls_cert, cfg.tls_key, parse_grpc_args(cfg.grpc_args))
    client = CloudClient(channel, cfg.cloud, cfg.health_interval)
    try:
        lm, info = await asyncio.gather(
            asyncio.to_thread(load_drafter, cfg), client.wait_info(timeout_s=cfg.startup_timeout)
        )
        check_cloud(cfg, lm, info)
    except BaseException:
        await client.close()
        raise
    log.info(
        "drafter %s (vocab %d) ↔ cloud %s %s (codecs %s, limits %s)",
        cfg.model,
        lm.vocab_size,
        info.model_id,
        info.server_version,
        ",".join(info.codecs),
        info.limits,
    )
    metrics = EdgeMetrics(model=cfg.model)
    return EdgeService(cfg, Drafter(lm), client, info, metrics)


async def serve(cfg: EdgeConfig) -> None:
    """Run until SIGINT/SIGTERM (uvicorn drains in-flight requests, then we close the channel)."""
    log.info("config %s", describe(cfg))
    service = await start_service(cfg)
    metrics = service.metrics

    def on_health(ok: bool) -> None:
        metrics.cloud_up.set(1 if ok else 0)

    await service.client.check_health()
    service.client.busy = lambda: service.running > 0  # no health checks while sessions are open
    health = asyncio.create_task(service.client.health_loop(on_health))
    app = build_app(service)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            loop="none",
            http="auto",
            log_config=None,
            access_log=cfg.log_level == "DEBUG",
            timeout_graceful_shutdown=10,
        )
    )
    # uvicorn re-raises a captured SIGTERM/SIGINT through the handlers it found; with these no-op
    # handlers in place that re-raise is harmless, so the cleanup below runs and we exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore_signal)
    try:
        log.info("serving http://%s:%d/v1 (model %s)", cfg.host, cfg.port, service.model_name)
        await server.serve()
    finally:
        health.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health
        await service.client.close()
        service.drafter.close()
        log.info("edge stopped")


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    log.debug("signal %d after shutdown began: ignored", signum)
