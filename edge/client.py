"""The edge's gRPC side: one grpc.aio channel to the cloud, Info at start-up, a cached health poller."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.rpc import pb, pb_grpc
from common.rpc.convert import ServerInfo, info_from_pb
from common.wire import LEAN_HTTP2, GrpcArg, merge_args

log = logging.getLogger("draftlink.edge.client")

MAX_MESSAGE_BYTES = 64 << 20  # dense fp32 blocks of a 150k vocabulary are a few MB

# Reconnect quickly after the cloud restarts (gRPC's default backoff grows to 120 s).
# Wire (issue 13): LEAN_HTTP2 turns off BDP-probe pings and uses a large static window, so a
# block costs one DATA frame and no flow-control chatter; keepalive stays at 30 s (17-byte PING,
# only while calls are open). `--grpc-args` overrides any of these (common.wire.parse_grpc_args).
CHANNEL_OPTIONS: list[GrpcArg] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.enable_retries", 0),
    *LEAN_HTTP2,
]


class StartupError(RuntimeError):
    """The edge cannot start (cloud never answered, incompatible tokenizer or vocabulary)."""


def make_channel(
    target: str,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    extra_args: list[GrpcArg] | None = None,
) -> grpc.aio.Channel:
    """Insecure channel on loopback; TLS (optionally mutual) when a CA file is given."""
    options = merge_args(CHANNEL_OPTIONS, extra_args or [])
    if tls_ca is None:
        return grpc.aio.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes(),
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
    )
    return grpc.aio.secure_channel(target, creds, options=options)


class CloudClient:
    """Stub, health state and lifetime of the channel to the cloud verifier."""

    def __init__(self, channel: grpc.aio.Channel, target: str, health_interval: float = 2.0) -> None:
        self.channel = channel
        self.target = target
        self.stub = pb_grpc.VerifierStub(channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(channel)
        self.health_interval = health_interval
        self._last_ok: float | None = None  # monotonic time of the last SERVING answer
        self._last_status = "unknown"
        # True while generations are open (set by the app). An open session is itself the
        # liveness signal (its failures mark the cloud unhealthy), so the poller sends no health
        # checks then: they would share the uplink with the drafts (issue 13).
        self.busy: Callable[[], bool] = lambda: False

    async def info(self, timeout_s: float = 5.0) -> ServerInfo:
        resp = await self.stub.Info(pb.InfoRequest(), timeout=timeout_s)
        return info_from_pb(resp)

    async def wait_info(self, timeout_s: float) -> ServerInfo:
        """Info, retried until the cloud answers or `timeout_s` seconds pass (StartupError)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await self.info(timeout_s=max(0.5, min(5.0, deadline - time.monotonic())))
            except grpc.RpcError as exc:
                if time.monotonic() >= deadline:
                    raise StartupError(
                        f"cloud at {self.target} did not answer Info within {timeout_s:.0f}s: "
                        f"{_describe(exc)}"
                    ) from None
                log.info("waiting for the cloud at %s (%s)", self.target, _describe(exc))
                await asyncio.sleep(0.5)

    async def check_health(self, timeout_s: float = 2.0) -> bool:
        """One grpc.health.v1 Check of the whole server; updates the cached state."""
        try:
            resp = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
            ok = bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
            self._last_status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as exc:
            ok = False
            self._last_status = _describe(exc)
        if ok:
            self._last_ok = time.monotonic()
        else:
            self._last_ok = None
        return ok

    async def health_loop(self, on_change: Callable[[bool], None] | None = None) -> None:
        """Poll health every `health_interval` seconds until cancelled (probes read the cache)."""
        was: bool | None = None
        while True:
            if self.busy() and self._last_ok is not None:  # sessions open, none saw a failure
                await asyncio.sleep(self.health_interval)
                continue
            ok = await self.check_health(timeout_s=max(0.5, min(2.0, self.health_interval)))
            if ok != was:
                log.log(
                    logging.INFO if ok else logging.WARNING, "cloud %s: %s", self.target, self._last_status
                )
                if on_change is not None:
                    on_change(ok)
                was = ok
            await asyncio.sleep(self.health_interval)

    def mark_unhealthy(self, why: str) -> None:
        """A request saw the cloud fail: report unhealthy until the next passing check."""
        self._last_ok = None
        self._last_status = why

    @property
    def healthy(self) -> bool:
        """A check passed within the last three polling intervals, or since then sessions are open."""
        if self._last_ok is None:
            return False
        return self.busy() or time.monotonic() - self._last_ok < 3 * self.health_interval

    def health_report(self) -> dict[str, Any]:
        age = None if self._last_ok is None else round(time.monotonic() - self._last_ok, 3)
        return {"target": self.target, "status": self._last_status, "last_ok_seconds_ago": age}

    async def close(self) -> None:
        await self.channel.close(grace=None)


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'ERROR'}: {details}"
