"""Edge start-up and shutdown: load the drafter, check the cloud's tokenizer, serve HTTP on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterator
from functools import partial

import torch
import uvicorn

from common.config import describe
from common.models import LoadedModel, check_compatible, load_model
from common.models.engine import BatchLimits
from common.rpc.convert import ServerInfo
from common.runtime import EarlySignals, serve_until_signalled
from common.tls import load_client_tls
from common.wire import parse_grpc_args
from edge.client import CloudClient, CloudSettings, StartupError
from edge.config import AUTO, EdgeConfig
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
    kind = codec_kind(cfg.static_codec)
    if info.codecs and kind not in info.codecs and cfg.codec != AUTO:
        raise StartupError(f"the cloud does not decode codec {kind!r} (it decodes {', '.join(info.codecs)})")
    if (
        info.limits.max_draft_len
        and cfg.draft_len != AUTO
        and cfg.static_draft_len > info.limits.max_draft_len
    ):
        raise StartupError(f"draft_len {cfg.draft_len} exceeds the cloud's limit {info.limits.max_draft_len}")


def cloud_settings(cfg: EdgeConfig) -> CloudSettings:
    """The gRPC side's narrow config (reads and checks the TLS files: ConfigError)."""
    tls = load_client_tls(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
    if cfg.cloud_token and tls is None:
        log.warning("cloud_token is sent over plaintext gRPC: anyone on the path can read it (set tls_ca)")
    return CloudSettings(
        cfg.cloud,
        tls,
        cfg.tls_server_name,
        cfg.cloud_token,
        cfg.health_interval,
        cfg.resume_timeout,
        tuple(parse_grpc_args(cfg.grpc_args)),
    )


async def start_service(cfg: EdgeConfig) -> EdgeService:
    """Load the drafter and reach the cloud concurrently, then check they fit together."""
    client = CloudClient(cloud_settings(cfg))
    try:
        lm, info = await asyncio.gather(
            asyncio.to_thread(load_drafter, cfg), client.wait_info(timeout_s=cfg.startup_timeout)
        )
        check_cloud(cfg, lm, info)
        client.verify = partial(check_cloud, cfg, lm)  # every other target is checked the same way
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
    # concurrent requests draft together: one forward per step over every ready request's block
    limits = BatchLimits(max_batch_sessions=max(1, cfg.max_concurrency), batch_wait_s=0.0)
    drafter = Drafter(lm, limits)
    if cfg.threads > 0:  # the engine thread runs every drafter forward: set it there too
        await drafter.engine.call(lambda: torch.set_num_threads(cfg.threads))
    return EdgeService(cfg, drafter, client, info, metrics)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: common.runtime owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EdgeProcess:
    """The edge under common.runtime's lifecycle (start, ready, drain, force, close)."""

    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.service: EdgeService | None = None
        self.server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None

    async def start(self) -> None:
        return None  # nothing cheap to bind first: HTTP comes up once the drafter and cloud are ready

    async def ready(self) -> None:
        cfg = self.cfg
        self.service = service = await start_service(cfg)
        metrics = service.metrics
        await service.client.check_health()
        metrics.cloud_up.set(1 if service.client.healthy else 0)
        self._health = asyncio.create_task(
            service.client.health_loop(lambda ok: metrics.cloud_up.set(1 if ok else 0))
        )
        uv = uvicorn.Config(
            build_app(service),
            host=cfg.host,
            port=cfg.port,
            loop="none",
            http="auto",
            log_config=None,
            access_log=cfg.log_level == "DEBUG",
            timeout_graceful_shutdown=math.ceil(cfg.grace_period),
        )
        self.server = server = _Server(uv)
        self._serving = asyncio.create_task(server.serve())
        while not server.started:  # uvicorn binds in serve(); a taken port ends the task
            if self._serving.done():
                self._serving.result()
                raise OSError(f"cannot serve HTTP on {cfg.host}:{cfg.port}")
            await asyncio.sleep(0.02)
        log.info("serving http://%s:%d/v1 (model %s)", cfg.host, cfg.port, service.model_name)

    async def drain(self, grace: float) -> None:
        """/health 503, stop accepting, let live requests finish within grace, cancel the rest."""
        if self.service is not None:
            self.service.draining = True
            log.info("draining: %d running request(s), grace %.1fs", self.service.running, grace)
        if self.server is not None and self._serving is not None:
            self.server.config.timeout_graceful_shutdown = math.ceil(grace)
            self.server.should_exit = True
            await asyncio.wait([self._serving])  # force() may cancel it: not an error here

    async def force(self) -> None:
        """Stop waiting for requests; cut what uvicorn still waits for (open connections)."""
        if self.server is None or self._serving is None:
            return
        self.server.force_exit = True
        await asyncio.wait([self._serving], timeout=1.0)
        self._serving.cancel()

    async def close(self) -> None:
        for task in (self._health, self._serving):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.service is not None:
            await self.service.client.close()
            self.service.drafter.close()


async def serve(cfg: EdgeConfig, early: EarlySignals | None = None) -> None:
    """Run until SIGINT/SIGTERM (drain in-flight requests, then close the channels)."""
    log.info("config %s", describe(cfg))
    await serve_until_signalled(EdgeProcess(cfg), cfg.grace_period, "draftlink-edge", early)
