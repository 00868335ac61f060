"""The edge's gRPC side: one channel per cloud target (TLS, token), Info, health, and target choice.

`--cloud` names one target (`host:port`), several (a comma-separated list), or `dns:NAME:PORT`:
every address NAME resolves to (a Kubernetes headless Service), re-resolved every
DNS_REFRESH_S seconds and whenever no known target is healthy. A session opens on the healthy
target this edge uses least (list order breaks ties); a resumed one prefers any other healthy
target over the one that just failed (edge/session.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.errors import AuthError
from common.rpc import pb, pb_grpc
from common.rpc.convert import ServerInfo, info_from_pb
from common.rpc.status import error_from_rpc
from common.tls import ClientTLS, probe
from common.wire import LEAN_HTTP2, GrpcArg, merge_args
from edge.config import parse_targets

log = logging.getLogger("draftlink.edge.client")

MAX_MESSAGE_BYTES = 64 << 20  # dense fp32 blocks of a 150k vocabulary are a few MB
DNS_REFRESH_S = 30.0

# Reconnect quickly after a cloud restarts (gRPC's default backoff grows to 120 s): a session
# waiting to resume, and new requests, find the cloud within about a second of it coming back.
# Wire: LEAN_HTTP2 turns off BDP-probe pings and uses a large static window, so a block costs one
# DATA frame and no flow-control chatter; keepalive stays at 30 s (a 17-byte PING, only while calls
# are open). `--grpc-args` overrides any of these (common.wire.parse_grpc_args).
CHANNEL_OPTIONS: list[GrpcArg] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.enable_retries", 0),
    *LEAN_HTTP2,
]


class StartupError(RuntimeError):
    """The edge cannot start (cloud never answered, refused our credentials, incompatible model)."""


@dataclass(frozen=True)
class CloudSettings:
    """What the edge's gRPC side needs from EdgeConfig (resolved TLS material included)."""

    targets: str  # the --cloud value
    tls: ClientTLS | None = None
    tls_server_name: str | None = None
    token: str | None = None
    health_interval: float = 2.0
    resume_timeout: float = 30.0
    grpc_args: tuple[GrpcArg, ...] = ()  # --grpc-args: over CHANNEL_OPTIONS


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_channel(
    address: str,
    tls: ClientTLS | None = None,
    server_name: str | None = None,
    extra_args: tuple[GrpcArg, ...] = (),
) -> grpc.aio.Channel:
    """Plaintext channel, or TLS (mutual when a client certificate is given) checking `server_name`."""
    options = merge_args(CHANNEL_OPTIONS, extra_args)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert_chain
    )
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, creds, options=options)


class CloudTarget:
    """One cloud address: channel, stubs, cached health, and whether its model fits the drafter."""

    def __init__(self, address: str, channel: grpc.aio.Channel, source: str, health_interval: float) -> None:
        self.address = address
        self.source = source  # the --cloud entry it came from
        self.channel = channel
        self.stub = pb_grpc.VerifierStub(channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(channel)
        self.health_interval = health_interval
        self.active = 0  # generations of this edge on this target now
        self.compatible: bool | None = None  # None: not checked since it (re)appeared
        self.info: ServerInfo | None = None
        self._last_ok: float | None = None  # monotonic time of the last SERVING answer
        self.status = "unknown"

    @property
    def healthy(self) -> bool:
        """Verified, and a health check passed within the last three intervals (no failure since)."""
        if self.compatible is not True or self._last_ok is None:
            return False
        return self.busy or time.monotonic() - self._last_ok < 3 * self.health_interval

    @property
    def busy(self) -> bool:
        """Sessions of this edge are open here: they are the liveness signal (a failure of any of
        them marks the target unhealthy), so the poller sends no health checks over the link."""
        return self.active > 0

    def release(self) -> None:
        """A generation left this target; while no call failed here, its sessions vouched for it."""
        self.active -= 1
        if self._last_ok is not None:
            self._last_ok = time.monotonic()

    async def check_health(self, timeout_s: float = 2.0) -> bool:
        """One grpc.health.v1 Check of the whole server; updates the cached state."""
        try:
            resp = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
            ok = bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
            self.status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as exc:
            ok, self.status = False, describe(exc)
        self._last_ok = time.monotonic() if ok else None
        return ok

    def mark_unhealthy(self, why: str) -> None:
        """A call saw this target fail: unhealthy (and re-verified) until a health check passes."""
        self._last_ok = None
        if self.compatible:  # a restarted cloud may serve another model: check it again
            self.compatible = None
        self.status = why

    def report(self) -> dict[str, Any]:
        age = None if self._last_ok is None else round(time.monotonic() - self._last_ok, 3)
        return {"target": self.address, "status": self.status, "last_ok_seconds_ago": age}

    async def close(self) -> None:
        await self.channel.close(grace=None)


class CloudClient:
    """Every cloud target of this edge: choice for new and resumed sessions, health, Info, token."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.health_interval = settings.health_interval
        self.resume_timeout = settings.resume_timeout
        token = settings.token
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.entries = parse_targets(settings.targets)
        self.targets: list[CloudTarget] = []
        self.verify: Callable[[ServerInfo], None] | None = None  # raises StartupError when incompatible
        self._resolved_at = 0.0
        self._tls_names: dict[str, str] = {}  # address → the DNS name it was resolved from
        for kind, host, port in self.entries:
            if kind == "static":
                self._add(_hostport(host, port), f"{host}:{port}", None)

    @property
    def target(self) -> str:
        return self.settings.targets

    # ── targets ────────────────────────────────────────────────────────────────────────────────
    def _add(self, address: str, source: str, tls_name: str | None) -> CloudTarget:
        name = self.settings.tls_server_name or tls_name
        if tls_name is not None:
            self._tls_names[address] = tls_name
        channel = make_channel(address, self.settings.tls, name, self.settings.grpc_args)
        target = CloudTarget(address, channel, source, self.health_interval)
        self.targets.append(target)
        return target

    async def resolve(self, force: bool = False) -> None:
        """(Re-)resolve dns: entries: new addresses become targets, vanished idle ones are dropped."""
        dns = [(host, port) for kind, host, port in self.entries if kind == "dns"]
        if not dns or (not force and time.monotonic() - self._resolved_at < 1.0):
            return
        self._resolved_at = time.monotonic()
        loop = asyncio.get_running_loop()
        for host, port in dns:
            source = f"dns:{host}:{port}"
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve %s: %s", source, exc)
                continue
            found = list(dict.fromkeys(_hostport(str(i[4][0]), port) for i in infos))
            known = {t.address for t in self.targets if t.source == source}
            for address in found:
                if address not in known:
                    log.info("cloud target %s (from %s)", address, source)
                    self._add(address, source, host)
            for t in [t for t in self.targets if t.source == source and t.address not in found]:
                if t.active == 0:
                    log.info("cloud target %s left %s", t.address, source)
                    self.targets.remove(t)
                    await t.close()

    def choose(self, avoid: CloudTarget | None = None) -> list[CloudTarget]:
        """Targets in the order a session tries them: healthy, not `avoid`, least used, list order."""
        usable = [t for t in self.targets if t.compatible is not False]
        order = {id(t): i for i, t in enumerate(self.targets)}
        return sorted(usable, key=lambda t: (not t.healthy, t is avoid, t.active, order[id(t)]))

    # ── Info and health ──────────────────────────────────────────────────────────────────────
    async def info(self, target: CloudTarget, timeout_s: float = 5.0) -> ServerInfo:
        resp = await target.stub.Info(pb.InfoRequest(), timeout=timeout_s, metadata=self.metadata)
        target.info = info_from_pb(resp)
        return target.info

    async def wait_info(self, timeout_s: float) -> ServerInfo:
        """Info from the first target that answers, retried until `timeout_s` passes (StartupError).

        A refused token or a failed TLS handshake ends the wait at once: retrying cannot fix them.
        """
        await self.resolve(force=True)
        deadline = time.monotonic() + timeout_s
        while True:
            last = "no target resolved"
            for target in list(self.targets):
                try:
                    return await self.info(target, max(0.5, min(5.0, deadline - time.monotonic())))
                except grpc.RpcError as exc:
                    last = f"{target.address}: {describe(exc)}"
                    _raise_if_fatal(target, exc)
                    await self._diagnose_tls(target)
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"cloud at {self.target} did not answer Info within {timeout_s:.0f}s: {last}"
                )
            log.info("waiting for the cloud at %s (%s)", self.target, last)
            await asyncio.sleep(0.5)
            await self.resolve()

    async def _diagnose_tls(self, target: CloudTarget) -> None:
        """Ask a plain TLS handshake whether TLS is why the cloud hangs up (StartupError when it is)."""
        tls = self.settings.tls
        host, _, port = target.address.rpartition(":")
        name = self.settings.tls_server_name or self._tls_names.get(target.address)
        problem = await asyncio.to_thread(probe, host.strip("[]"), int(port), tls, name)
        if problem is not None:
            raise StartupError(f"TLS with the cloud at {target.address} failed: {problem}")

    async def check_health(self, timeout_s: float = 2.0) -> bool:
        """Check every target once (verifying those not yet checked); True when any is usable."""
        await asyncio.gather(*(self._check(t, timeout_s) for t in list(self.targets)))
        return self.healthy

    async def _check(self, target: CloudTarget, timeout_s: float) -> None:
        if target.busy and target.healthy:  # no health checks sharing the uplink with drafts
            return
        if not await target.check_health(timeout_s) or target.compatible is not None:
            return
        try:  # (re)appeared: its model must still fit the drafter before sessions go there
            info = await self.info(target, timeout_s)
            if self.verify is not None:
                self.verify(info)
            target.compatible = True
        except grpc.RpcError as exc:
            target.mark_unhealthy(f"Info failed: {describe(exc)}")
        except StartupError as exc:
            log.error("cloud target %s is not usable: %s", target.address, exc)
            target.compatible = False
            target.mark_unhealthy(f"incompatible: {exc}")

    async def health_loop(self, on_change: Callable[[bool], None] | None = None) -> None:
        """Poll every target every `health_interval` seconds until cancelled (probes read the cache)."""
        was: bool | None = None
        states: dict[str, bool] = {}
        last_dns = time.monotonic()
        while True:
            if not self.healthy or time.monotonic() - last_dns > DNS_REFRESH_S:
                await self.resolve(force=time.monotonic() - last_dns > DNS_REFRESH_S)
                last_dns = time.monotonic()
            ok = await self.check_health(timeout_s=max(0.5, min(2.0, self.health_interval)))
            _log_changes(self.targets, states)
            if ok != was and on_change is not None:
                on_change(ok)
            was = ok
            await asyncio.sleep(self.health_interval)

    def mark_unhealthy(self, why: str) -> None:
        """A request saw every cloud fail: report unhealthy until the next passing check."""
        for t in self.targets:
            t.mark_unhealthy(why)

    @property
    def healthy(self) -> bool:
        return any(t.healthy for t in self.targets)

    def health_report(self) -> dict[str, Any]:
        reports = [t.report() for t in self.targets]
        if len(reports) == 1:
            return reports[0]
        usable = [r for r, t in zip(reports, self.targets, strict=True) if t.healthy]
        return {"target": self.target, "healthy": len(usable), "targets": reports}

    async def close(self) -> None:
        for t in self.targets:
            with contextlib.suppress(Exception):
                await t.close()


def _raise_if_fatal(target: CloudTarget, exc: grpc.RpcError) -> None:
    """StartupError for a refused token: no retry can fix it (TLS problems: _diagnose_tls)."""
    if isinstance(error_from_rpc(exc), AuthError):
        raise StartupError(f"the cloud at {target.address} refused our credentials: {describe(exc)}")


def _log_changes(targets: Iterable[CloudTarget], states: dict[str, bool]) -> None:
    for t in targets:
        ok = t.healthy
        if states.get(t.address) != ok:
            log.log(logging.INFO if ok else logging.WARNING, "cloud %s: %s", t.address, t.status)
            states[t.address] = ok


def describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'ERROR'}: {details}"
