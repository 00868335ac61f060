"""The cloud process: gRPC server (Verifier + health + reflection), metrics, start-up and drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import common
from cloud.config import CloudConfig
from cloud.metrics import CloudMetrics
from cloud.servicer import ServingState, VerifierServicer
from cloud.sessions import SessionManager
from cloud.verifier import VerifierLimits, max_message_bytes
from cloud.worker import ModelWorker
from common.codec import BITSTREAM_VERSION, KIND_IDS
from common.config import describe
from common.metrics import MetricsServer, start_metrics_server
from common.models import LoadedModel, load_model
from common.protocol import FEATURES
from common.rpc import convert as cv
from common.rpc import pb, pb_grpc
from common.wire import LEAN_HTTP2, GrpcArg, merge_args, parse_grpc_args

log = logging.getLogger("draftlink.cloud")

VERIFIER_SERVICE = pb.DESCRIPTOR.services_by_name["Verifier"].full_name  # "draftlink.v1.Verifier"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CODEC_KINDS = tuple(dict.fromkeys(k.split(":")[0] for k in KIND_IDS))  # dense, qs, ksqs, csqs
# Upper bound of the Info limit before the model (hence V) is known: Qwen2.5's 151,936 ids.
_MAX_VOCAB_HINT = 152_064


def resolve_device(device: str) -> str:
    """'auto' → cuda on one GPU, 'auto' (device_map over all GPUs) on several, else cpu."""
    if device != "auto":
        return device
    n = torch.cuda.device_count()
    return "cpu" if n == 0 else ("cuda" if n == 1 else "auto")


class CloudServer:
    """Owns the grpc.aio server, the model worker, sessions and metrics of one cloud process."""

    def __init__(self, cfg: CloudConfig, lm: LoadedModel | None = None) -> None:
        self.cfg = cfg
        self.metrics = CloudMetrics(model=cfg.model)
        self.limits = VerifierLimits(cfg.max_draft_len, cfg.max_prompt_tokens, cfg.max_new_tokens)
        self.state = ServingState(
            manager=SessionManager(cfg.max_sessions, self.metrics),
            worker=ModelWorker(),
            metrics=self.metrics,
            limits=self.limits,
            idle_timeout=cfg.session_idle_timeout,
        )
        self.state.worker.listeners.append(self.metrics.model_queue_depth.set)
        self._preloaded = lm
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.metrics_server: MetricsServer | None = None
        self.port = 0
        self.max_message_bytes = 0

    async def start(self) -> int:
        """Bind and serve health (NOT_SERVING) and reflection at once; the model loads after."""
        vocab_hint = self._preloaded.vocab_size if self._preloaded else _MAX_VOCAB_HINT
        max_bytes = self.max_message_bytes = max_message_bytes(self.limits, vocab_hint)
        base: list[GrpcArg] = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share
        ]
        # Wire (issue 13): no BDP-probe pings, a large static window; --grpc-args overrides.
        options = merge_args(base, LEAN_HTTP2, parse_grpc_args(self.cfg.grpc_args))
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_VerifierServicer_to_server(VerifierServicer(self.state), self.server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (VERIFIER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        for service in ("", VERIFIER_SERVICE):
            await self.health.set(service, NOT_SERVING)
        self.port = self.server.add_insecure_port(f"{self.cfg.host}:{self.cfg.port}")
        if self.port == 0:
            raise OSError(f"cannot bind gRPC on {self.cfg.host}:{self.cfg.port}")
        await self.server.start()
        if self.cfg.metrics_port:
            self.metrics_server = start_metrics_server(
                self.cfg.metrics_port, self.metrics.registry, self.cfg.host
            )
        log.info("gRPC listening on %s:%d (max message %d bytes)", self.cfg.host, self.port, max_bytes)
        return self.port

    async def load(self) -> LoadedModel:
        """Load the model on the worker thread (the thread that will run it), then report SERVING."""
        if self.cfg.torch_threads:  # process-wide; oversubscribed cores make OpenMP spin badly
            torch.set_num_threads(self.cfg.torch_threads)
        lm = self._preloaded
        if lm is None:
            cfg = self.cfg
            device = resolve_device(cfg.device)
            start = time.perf_counter()
            lm = await self.state.worker.run(
                lambda: load_model(cfg.model, device=device, dtype=cfg.dtype, fast_linear=cfg.fast_linear)
            )
            log.info("model %s loaded in %.1fs on %s", cfg.model, time.perf_counter() - start, device)
        if max_message_bytes(self.limits, lm.vocab_size) > self.max_message_bytes:
            log.warning(
                "vocab %d: a full dense block exceeds the %d-byte message limit",
                lm.vocab_size,
                self.max_message_bytes,
            )
        self.state.info = self._info(lm)
        self.state.lm = lm
        log.info("model %s: vocab %d, tokenizer fingerprint %s", lm.spec, lm.vocab_size, lm.fingerprint)
        for service in ("", VERIFIER_SERVICE):
            await self.health.set(service, SERVING)
        return lm

    def _info(self, lm: LoadedModel) -> cv.ServerInfo:
        limits = cv.Limits(
            max_sessions=self.cfg.max_sessions,
            max_draft_len=self.cfg.max_draft_len,
            max_prompt_tokens=self.cfg.max_prompt_tokens,
            max_new_tokens=self.cfg.max_new_tokens,
            max_message_bytes=self.max_message_bytes,
        )
        return cv.ServerInfo(
            model_id=self.cfg.model,
            tokenizer_fingerprint=lm.fingerprint,
            vocab_size=lm.vocab_size,
            codecs=CODEC_KINDS,
            limits=limits,
            server_version=common.__version__,
            bitstream_version=BITSTREAM_VERSION,
            features=FEATURES,
            model_options=self._model_options(),
        )

    def _model_options(self) -> tuple[tuple[str, str], ...]:
        """How the target runs (Info.model_options), for tools that load it the same way."""
        opts = {
            "device": resolve_device(self.cfg.device),
            "dtype": self.cfg.dtype,
            "fast_linear": str(self.cfg.fast_linear).lower(),
            "torch_threads": str(self.cfg.torch_threads),
        }
        return tuple(sorted(opts.items()))

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new streams, let live ones finish within grace, cancel, close."""
        grace = self.cfg.grace_period if grace is None else grace
        log.info("shutting down: %d live session(s), grace %.1fs", self.state.manager.live, grace)
        await self.health.enter_graceful_shutdown()
        self.state.manager.drain()
        if self.server is not None:
            await self._drain(self.server, grace)
        self.state.worker.close(wait=True)
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        log.info("stopped")

    async def _drain(self, server: grpc.aio.Server, grace: float) -> None:
        """Stop accepting; wait for live sessions (not health watches) up to grace; cancel the rest."""
        loop = asyncio.get_running_loop()
        empty = asyncio.Event()
        manager = self.state.manager

        def on_change(live: int) -> None:
            if live == 0:
                loop.call_soon_threadsafe(empty.set)

        manager.add_listener(on_change)
        if manager.live == 0:
            empty.set()
        stopping = asyncio.ensure_future(server.stop(grace))
        waiter = asyncio.ensure_future(empty.wait())
        await asyncio.wait([stopping, waiter], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not stopping.done():
            await server.stop(0)  # sessions are done (or grace is over): end watches and stragglers
        await stopping


async def serve(cfg: CloudConfig, stop_requested: Callable[[], bool] = lambda: False) -> int:
    """Run until SIGTERM/SIGINT (a second signal skips the grace period); the exit code."""
    log.info("draftlink-cloud %s config %s", common.__version__, describe(cfg))
    server = CloudServer(cfg)
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s", sig.name)
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if stop_requested():  # signalled before the handlers above were installed
        stop.set()
    await server.start()
    load = asyncio.ensure_future(server.load())
    if not await _first(load, stop):  # stopped while loading: nothing to drain
        load.cancel()
        await server.stop(0)
        return 0
    if load.exception() is not None:
        log.error("cannot load model %s: %s", cfg.model, load.exception())
        await server.stop(0)
        return 1
    await stop.wait()
    drain = asyncio.ensure_future(server.stop())
    if not await _first(drain, force):
        log.warning("second signal: cancelling the remaining streams now")
        assert server.server is not None
        await server.server.stop(0)  # overrides the grace of the stop in progress
        await drain
    return 0


async def _first(task: asyncio.Future[Any], event: asyncio.Event) -> bool:
    """Wait for task or event; True when the task finished first (the task is left running)."""
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return task.done()
