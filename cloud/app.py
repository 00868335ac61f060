"""The cloud process: gRPC server (Verifier + health + reflection), metrics, start-up and drain."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import common
from cloud.auth import TokenAuthInterceptor
from cloud.config import CloudConfig
from cloud.metrics import CloudEngineObserver, CloudMetrics
from cloud.servicer import ServingState, VerifierServicer
from cloud.sessions import SessionManager
from cloud.verifier import VerifierLimits, max_message_bytes
from common.codec import BITSTREAM_VERSION, KIND_IDS
from common.config import describe
from common.errors import ConfigError, ModelError
from common.metrics import MetricsServer, start_metrics_server
from common.models import LoadedModel, load_model
from common.models.engine import BatchEngine, BatchLimits
from common.models.packed import PackedLM
from common.protocol import FEATURES
from common.rpc import convert as cv
from common.rpc import pb, pb_grpc
from common.runtime import EarlySignals, serve_until_signalled
from common.tls import load_server_tls
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
    """Owns the grpc.aio server, the batch engine, sessions and metrics of one cloud process."""

    def __init__(self, cfg: CloudConfig, lm: LoadedModel | None = None) -> None:
        self.cfg = cfg
        self.metrics = CloudMetrics(model=cfg.model)
        self.limits = VerifierLimits(cfg.max_draft_len, cfg.max_prompt_tokens, cfg.max_new_tokens)
        self.state = ServingState(
            manager=SessionManager(cfg.max_sessions, self.metrics),
            metrics=self.metrics,
            limits=self.limits,
            idle_timeout=cfg.session_idle_timeout,
        )
        self._preloaded = lm
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None  # plaintext, health only (--health-port)
        self.metrics_server: MetricsServer | None = None
        self.port = 0
        self.max_message_bytes = 0

    async def start(self) -> int:
        """Bind and serve health (NOT_SERVING) and reflection at once; the model loads after.

        TLS (and mutual TLS) when configured: the gRPC port then never speaks plaintext; a
        --health-port serves only grpc.health.v1 in plaintext for probes that cannot do TLS.
        """
        cfg = self.cfg
        tls = load_server_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)  # ConfigError: exit 2
        vocab_hint = self._preloaded.vocab_size if self._preloaded else _MAX_VOCAB_HINT
        max_bytes = self.max_message_bytes = max_message_bytes(self.limits, vocab_hint)
        interceptors = []
        if cfg.auth_token is not None:
            refused = self.metrics.rpc_errors
            interceptors.append(TokenAuthInterceptor(cfg.auth_token, lambda code: refused.labels(code).inc()))
        self.server = grpc.aio.server(
            interceptors=interceptors, options=_server_options(max_bytes, cfg.grpc_args)
        )
        pb_grpc.add_VerifierServicer_to_server(VerifierServicer(self.state), self.server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (VERIFIER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        for service in ("", VERIFIER_SERVICE):
            await self.health.set(service, NOT_SERVING)
        address = f"{cfg.host}:{cfg.port}"
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.key, tls.cert_chain)],
                root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )
            self.port = self.server.add_secure_port(address, creds)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC on {address}")
        await self.server.start()
        if cfg.health_port:
            await self._start_health_port()
        if cfg.metrics_port:
            self.metrics_server = start_metrics_server(cfg.metrics_port, self.metrics.registry, cfg.host)
        mode = "plaintext" if tls is None else ("mutual TLS" if tls.client_ca else "TLS")
        auth = "token required" if cfg.auth_token else "no token"
        log.info(
            "gRPC listening on %s:%d (%s, %s; max message %d bytes)",
            cfg.host,
            self.port,
            mode,
            auth,
            max_bytes,
        )
        return self.port

    async def _start_health_port(self) -> None:
        self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        address = f"{self.cfg.host}:{self.cfg.health_port}"
        if self.health_server.add_insecure_port(address) == 0:
            raise OSError(f"cannot bind the health port on {address}")
        await self.health_server.start()
        log.info("grpc.health.v1 (only) in plaintext on %s", address)

    async def load(self) -> LoadedModel:
        """Load the model, start the batch engine on it, then report SERVING."""
        cfg = self.cfg
        if cfg.torch_threads:  # oversubscribed cores make OpenMP spin badly
            torch.set_num_threads(cfg.torch_threads)
        lm = self._preloaded
        if lm is None:
            device = resolve_device(cfg.device)
            start = time.perf_counter()
            lm = await asyncio.to_thread(
                lambda: load_model(cfg.model, device=device, dtype=cfg.dtype, fast_linear=cfg.fast_linear)
            )
            log.info("model %s loaded in %.1fs on %s", cfg.model, time.perf_counter() - start, device)
        engine = BatchEngine(PackedLM(lm), self.batch_limits(), CloudEngineObserver(self.metrics))
        if cfg.torch_threads:  # the engine thread runs every forward: set it there too
            await engine.call(lambda: torch.set_num_threads(cfg.torch_threads))
        self.metrics.model_queue_depth.set_function(lambda: engine.queued)
        self.state.engine = engine
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

    def batch_limits(self) -> BatchLimits:
        c = self.cfg
        return BatchLimits(
            c.max_batch_tokens, c.max_batch_sessions, c.batch_wait_ms / 1000.0, c.prefill_chunk
        )

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

    # ── lifecycle (common.runtime.Service) ───────────────────────────────────────────────────
    async def ready(self) -> None:
        await self.load()

    async def drain(self, grace: float) -> None:
        """NOT_SERVING, refuse new streams, let live ones finish within grace, cancel the rest."""
        log.info("draining: %d live session(s), grace %.1fs", self.state.manager.live, grace)
        await self.health.enter_graceful_shutdown()
        self.state.manager.drain()
        if self.server is not None:
            await self._drain(self.server, grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.state.engine is not None:
            await asyncio.to_thread(self.state.engine.close, True)  # after the current step

    async def force(self) -> None:
        """Second signal: end every stream now (overrides the grace of the drain in progress)."""
        if self.server is not None:
            await self.server.stop(0)

    async def close(self) -> None:
        for server in (self.server, self.health_server):
            if server is not None:
                await server.stop(0)
        if self.state.engine is not None:
            await asyncio.to_thread(self.state.engine.close, True)
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

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


def _server_options(max_bytes: int, grpc_args: str) -> list[GrpcArg]:
    base: list[GrpcArg] = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share
    ]
    # Wire (docs/BENCHMARKS.md): no BDP-probe pings, a large static window; --grpc-args overrides.
    return merge_args(base, LEAN_HTTP2, parse_grpc_args(grpc_args))


async def serve(cfg: CloudConfig, early: EarlySignals | None = None) -> int:
    """Run until SIGTERM/SIGINT (a second signal skips the grace period); the exit code."""
    log.info("draftlink-cloud %s config %s", common.__version__, describe(cfg))
    server = CloudServer(cfg)
    try:
        await serve_until_signalled(server, cfg.grace_period, "draftlink-cloud", early)
    except OSError as exc:  # a port is taken
        log.error("cannot serve: %s", exc)
        return 1
    except ModelError as exc:
        log.error("cannot load model %s: %s", cfg.model, exc)
        return 1
    except ConfigError as exc:  # TLS files changed between the check in main() and here
        log.error("config error: %s", exc)
        return 2
    except Exception:
        log.exception("start-up failed")
        return 1
    return 0
