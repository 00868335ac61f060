"""Start cloud (+ link) + edge on loopback as managed child processes: `make run`, tests and bench share it.

    python -m launcher --models tiny|qwen [--port 8000] [--no-link] [--uplink-bps 2e6] ...

Python API: `with Stack(StackConfig(models="tiny")) as stack: stack.base_url ...`
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType

from launcher.procs import ManagedProcess, ProcessFailedError, free_port, python_module_argv

_CloudPorts = tuple[int, int, int]  # gRPC, metrics, health (0: none)

# models profile -> (cloud target model, edge drafter model)
MODEL_PAIRS: dict[str, tuple[str, str]] = {
    "tiny": ("builtin:tiny-target", "builtin:tiny-draft"),
    "qwen": ("builtin:qwen2.5-coder-1.5b", "builtin:qwen2.5-coder-0.5b"),
}
# What a newcomer would type: a bare signature (no trailing indentation for the model to continue)
CURL_PROMPT = "def fibonacci(n):"


def link_available() -> bool:
    """True when the `link` package ships a `__main__` (the shaping relay)."""
    try:
        return importlib.util.find_spec("link.__main__") is not None
    except ImportError:
        return False


@dataclass(frozen=True)
class StackTLS:
    """PEM files for TLS on the gRPC hop (deploy/README.md shows how to make them with openssl)."""

    ca: str  # signs the cloud's certificate; the edge trusts it
    server_cert: str
    server_key: str
    client_ca: str | None = None  # set: mutual TLS (the cloud requires a client certificate)
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None  # the name the edge checks in the cloud's certificate


@dataclass
class StackConfig:
    """What to start; every port 0 means "pick a free one"."""

    models: str = "tiny"  # a MODEL_PAIRS key
    cloud_model: str | None = None  # overrides the profile's target
    edge_model: str | None = None  # overrides the profile's drafter
    host: str = "127.0.0.1"
    edge_port: int = 0
    cloud_port: int = 0
    cloud_metrics_port: int = 0
    link_port: int = 0
    link_metrics_port: int = 0
    link: bool | None = None  # None: use the link when the package has a __main__
    uplink_bps: float = 2_000_000.0
    downlink_bps: float = 0.0  # 0 = unlimited
    delay_ms: float = 20.0  # one-way, each direction
    edge_args: tuple[str, ...] = ()
    cloud_args: tuple[str, ...] = ()
    link_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    ready_timeout: float = 180.0
    extra_clouds: int = 0  # more cloud processes; the edge gets them as further --cloud targets
    tls: StackTLS | None = None  # TLS (mutual with client_ca) on the gRPC hop; health on its own port
    auth_token: str | None = None  # the cloud's --auth-token, and the edge's --cloud-token
    edges: int = 1  # edge processes against the one cloud (the first on edge_port)


def grpc_serving(address: str) -> bool:
    """One grpc.health.v1 Check of the whole server (True when SERVING)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def _http_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=2.0).status_code == 200


def _tcp_open(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0):
        return True


class Stack:
    """cloud → [link] → edge as ManagedProcess children; start() waits until the edge is healthy."""

    def __init__(self, cfg: StackConfig | None = None) -> None:
        self.cfg = cfg = cfg or StackConfig()
        if cfg.models not in MODEL_PAIRS:
            raise ValueError(f"unknown models profile {cfg.models!r}; known: {', '.join(MODEL_PAIRS)}")
        target, drafter = MODEL_PAIRS[cfg.models]
        self.cloud_model = cfg.cloud_model or target
        self.edge_model = cfg.edge_model or drafter
        self.use_link = link_available() if cfg.link is None else cfg.link
        h = cfg.host
        self.edge_port = cfg.edge_port or free_port(h)
        self.cloud_port = cfg.cloud_port or free_port(h)
        self.cloud_metrics_port = cfg.cloud_metrics_port or free_port(h)
        self.link_port = (cfg.link_port or free_port(h)) if self.use_link else 0
        self.link_metrics_port = (cfg.link_metrics_port or free_port(h)) if self.use_link else 0
        self.log_dir = cfg.log_dir
        if self.log_dir is None:
            import tempfile

            self.log_dir = Path(tempfile.mkdtemp(prefix="draftlink-stack-"))
        self.health_port = free_port(h) if cfg.tls is not None else 0
        self.extra_ports: list[_CloudPorts] = []  # (gRPC, metrics, health) ports of each extra cloud
        self._restarts = 0
        self.cloud = self._cloud_process()
        self.extra_clouds = [self._extra_cloud(i) for i in range(cfg.extra_clouds)]
        self.link = self._link_process() if self.use_link else None
        self.edge = self._edge_process()
        # more edges against the same cloud (benchmarks: one edge's drafter thread is one bottleneck)
        self.extra_edge_ports = [free_port(h) for _ in range(max(0, cfg.edges - 1))]
        self.extra_edges = [
            self._edge_process(f"edge{i + 2}", port) for i, port in enumerate(self.extra_edge_ports)
        ]

    # ---- addresses ------------------------------------------------------------------------
    @property
    def cloud_address(self) -> str:
        return f"{self.cfg.host}:{self.cloud_port}"

    @property
    def edge_upstream(self) -> str:
        """Where the edge's gRPC channel points: the link when there is one, else the cloud."""
        return f"{self.cfg.host}:{self.link_port}" if self.use_link else self.cloud_address

    @property
    def edge_targets(self) -> str:
        """The edge's --cloud: its upstream, then every extra cloud (tried in this order)."""
        return ",".join([self.edge_upstream, *(f"{self.cfg.host}:{p[0]}" for p in self.extra_ports)])

    @property
    def edge_url(self) -> str:
        return f"http://{self.cfg.host}:{self.edge_port}"

    @property
    def edge_urls(self) -> list[str]:
        """Every edge's base URL, the first one (edge_url) first."""
        return [self.edge_url, *(f"http://{self.cfg.host}:{p}" for p in self.extra_edge_ports)]

    @property
    def base_url(self) -> str:
        """OpenAI base URL (`openai.OpenAI(base_url=stack.base_url)`)."""
        return f"{self.edge_url}/v1"

    @property
    def cloud_metrics_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cloud_metrics_port}/metrics"

    @property
    def link_metrics_url(self) -> str | None:
        return f"http://{self.cfg.host}:{self.link_metrics_port}/metrics" if self.use_link else None

    @property
    def processes(self) -> list[ManagedProcess]:
        """In start order: cloud(s), link, edge (then any extra edges)."""
        return [
            p
            for p in (self.cloud, *self.extra_clouds, self.link, self.edge, *self.extra_edges)
            if p is not None
        ]

    # ---- process definitions ----------------------------------------------------------------
    def _cloud_process(self, name: str = "cloud", ports: _CloudPorts | None = None) -> ManagedProcess:
        c = self.cfg
        port, metrics_port, health_port = ports or (
            self.cloud_port,
            self.cloud_metrics_port,
            self.health_port,
        )
        argv = python_module_argv(
            "cloud",
            *("--model", self.cloud_model, "--host", c.host, "--port", str(port)),
            *("--metrics-port", str(metrics_port), *c.cloud_args),
        )
        env = dict(c.env)
        if c.tls is not None:
            argv += ["--tls-cert", c.tls.server_cert, "--tls-key", c.tls.server_key]
            argv += ["--tls-client-ca", c.tls.client_ca] if c.tls.client_ca else []
            argv += ["--health-port", str(health_port)]
        if c.auth_token is not None:
            env["DRAFTLINK_CLOUD_AUTH_TOKEN"] = c.auth_token  # env, not argv: ps shows argv
        return ManagedProcess(name, argv, env, self.log_dir)

    def _extra_cloud(self, i: int) -> ManagedProcess:
        h = self.cfg.host
        ports = (free_port(h), free_port(h), free_port(h) if self.cfg.tls is not None else 0)
        self.extra_ports.append(ports)
        return self._cloud_process(f"cloud{i + 2}", ports)

    def _link_process(self, name: str = "link") -> ManagedProcess:
        c = self.cfg
        argv = python_module_argv(
            "link",
            *("--listen", f"{c.host}:{self.link_port}", "--upstream", self.cloud_address),
            *("--uplink-bps", str(c.uplink_bps), "--downlink-bps", str(c.downlink_bps)),
            *("--delay-ms", str(c.delay_ms), "--metrics-port", str(self.link_metrics_port), *c.link_args),
        )
        return ManagedProcess(name, argv, c.env, self.log_dir)

    def _edge_process(self, name: str = "edge", port: int | None = None) -> ManagedProcess:
        c = self.cfg
        argv = python_module_argv(
            "edge",
            *("--model", self.edge_model, "--cloud", self.edge_targets),
            *("--host", c.host, "--port", str(port or self.edge_port)),
            *("--startup-timeout", str(c.ready_timeout), *c.edge_args),
        )
        env = dict(c.env)
        if c.tls is not None:
            argv += ["--tls-ca", c.tls.ca]
            if c.tls.client_cert and c.tls.client_key:
                argv += ["--tls-cert", c.tls.client_cert, "--tls-key", c.tls.client_key]
            argv += ["--tls-server-name", c.tls.server_name] if c.tls.server_name else []
        if c.auth_token is not None:
            env["DRAFTLINK_EDGE_CLOUD_TOKEN"] = c.auth_token
        return ManagedProcess(name, argv, env, self.log_dir)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> Stack:
        """Start all three at once (model loads overlap), then wait: cloud, link, edge /health."""
        try:
            for p in self.processes:
                p.start()
            self.wait_cloud_ready()
            for cloud, ports in zip(self.extra_clouds, self.extra_ports, strict=True):
                cloud.wait_ready(partial(self._cloud_serving, ports), self.cfg.ready_timeout)
            if self.link is not None:
                self.link.wait_ready(lambda: _tcp_open(self.cfg.host, self.link_port), self.cfg.ready_timeout)
            self.wait_edge_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_cloud_ready(self, timeout: float | None = None) -> None:
        ports = (self.cloud_port, self.cloud_metrics_port, self.health_port)
        self.cloud.wait_ready(lambda: self._cloud_serving(ports), timeout or self.cfg.ready_timeout)

    def _cloud_serving(self, ports: _CloudPorts) -> bool:
        """grpc.health.v1 SERVING (with TLS: on the cloud's plaintext health port)."""
        return grpc_serving(f"{self.cfg.host}:{ports[2] if self.cfg.tls is not None else ports[0]}")

    def wait_edge_ready(self, timeout: float | None = None) -> None:
        edges = [self.edge, *self.extra_edges]
        for proc, url in zip(edges, self.edge_urls, strict=True):
            proc.wait_ready(functools.partial(_http_ok, f"{url}/health"), timeout or self.cfg.ready_timeout)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM edge first (drains HTTP), then link, then cloud; exit codes by name."""
        codes: dict[str, int | None] = {}
        for p in reversed(self.processes):
            codes[p.name] = p.stop()
        return codes

    def restart_cloud(self) -> None:
        """Start a fresh cloud on the same ports (after `self.cloud.stop()` or a kill) and wait for it."""
        self._restarts += 1
        self.cloud = self._cloud_process(f"cloud-restart{self._restarts}")  # its own log file
        self.cloud.start()
        self.wait_cloud_ready()

    def restart_link(
        self,
        uplink_bps: float,
        delay_ms: float,
        downlink_bps: float = 0.0,
        link_args: tuple[str, ...] | None = None,
    ) -> None:
        """Re-shape the link: a fresh relay on the same port, then wait until the edge is healthy again.

        The edge's gRPC channel reconnects on its own (the benchmark's way of changing the link).
        link_args (e.g. ("--schedule", "markov:...")) replace the configured extra flags when given.
        """
        if self.link is None:
            raise RuntimeError("this stack runs without a link")
        self.link.stop()
        self.cfg.uplink_bps, self.cfg.delay_ms, self.cfg.downlink_bps = uplink_bps, delay_ms, downlink_bps
        if link_args is not None:
            self.cfg.link_args = link_args
        self._restarts += 1
        self.link = self._link_process(f"link-restart{self._restarts}")
        self.link.start()
        self.link.wait_ready(lambda: _tcp_open(self.cfg.host, self.link_port), self.cfg.ready_timeout)
        self.wait_edge_ready()

    def failed(self) -> ManagedProcess | None:
        """The first child that exited on its own (None while all run)."""
        return next((p for p in self.processes if p.returncode is not None), None)

    def logs(self, tail_lines: int = 200) -> str:
        """Every child's log tail, for test failure reports."""
        parts = [f"----- {p.name} ({p.log_path}) -----\n{p.logs(tail_lines)}" for p in self.processes]
        return "\n".join(parts)

    def curl_example(self, max_tokens: int = 64) -> str:
        body = f'{{"prompt": "{CURL_PROMPT}", "max_tokens": {max_tokens}, "temperature": 0}}'
        return f"curl -s {self.base_url}/completions -H 'Content-Type: application/json' -d '{body}'"

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ---- `python -m launcher` ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> StackConfig:
    p = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Serve draftlink on loopback: cloud verifier, link shaper (when available) and edge.",
    )
    p.add_argument("--models", choices=sorted(MODEL_PAIRS), default="qwen", help="model pair (default: qwen)")
    p.add_argument("--port", type=int, default=8000, help="edge HTTP port (default: 8000)")
    p.add_argument("--cloud-port", type=int, default=0, help="cloud gRPC port (default: a free one)")
    p.add_argument("--no-link", action="store_true", help="edge talks to the cloud directly (no shaping)")
    p.add_argument("--uplink-bps", type=float, default=2e6, help="link uplink rate, bits/s (default: 2e6)")
    p.add_argument("--downlink-bps", type=float, default=0.0, help="link downlink rate, 0 = unlimited")
    p.add_argument("--delay-ms", type=float, default=20.0, help="link one-way delay in ms (default: 20)")
    p.add_argument("--edge-args", default="", help="extra draftlink-edge flags, e.g. '--codec qs:ell=240'")
    p.add_argument("--cloud-args", default="", help="extra draftlink-cloud flags")
    p.add_argument("--log-dir", type=Path, default=None, help="where the three logs go (default: a temp dir)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    a = p.parse_args(argv)
    return StackConfig(
        models=a.models,
        edge_port=a.port,
        cloud_port=a.cloud_port,
        link=False if a.no_link else None,
        uplink_bps=a.uplink_bps,
        downlink_bps=a.downlink_bps,
        delay_ms=a.delay_ms,
        edge_args=tuple(shlex.split(a.edge_args)),
        cloud_args=tuple(shlex.split(a.cloud_args)),
        log_dir=a.log_dir,
        ready_timeout=a.ready_timeout,
    )


def _banner(stack: Stack) -> str:
    link = (
        f"link     {stack.cfg.host}:{stack.link_port} → cloud  (uplink {stack.cfg.uplink_bps:g} bit/s, "
        f"delay {stack.cfg.delay_ms:g} ms)  metrics {stack.link_metrics_url}"
        if stack.use_link
        else "link     (none: edge → cloud directly)"
    )
    return "\n".join(
        [
            f"draftlink is up: {stack.edge_model} (edge) drafting for {stack.cloud_model} (cloud)",
            f"edge     {stack.base_url}   health {stack.edge_url}/health   metrics {stack.edge_url}/metrics",
            link,
            f"cloud    {stack.cloud_address} (gRPC)   metrics {stack.cloud_metrics_url}",
            f"logs     {stack.log_dir}",
            "",
            "try:",
            f"  {stack.curl_example()}",
            "",
            "Ctrl-C stops all three (edge, then link, then cloud).",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Start the stack, print how to use it, wait for Ctrl-C/SIGTERM or a child's death, stop in order."""
    cfg = parse_args(argv)
    stop = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # during start-up: Stack.start stops what it started

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, interrupt)
    stack = Stack(cfg)
    print(f"starting cloud ({stack.cloud_model}) and edge ({stack.edge_model}); logs in {stack.log_dir}")
    try:
        stack.start()
    except ProcessFailedError as exc:
        print(f"draftlink failed to start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted during start-up; stopped", file=sys.stderr)
        return 130
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(_banner(stack), flush=True)
    code = 0
    while not stop.wait(0.5):
        dead = stack.failed()
        if dead is not None:
            print(f"{dead.name} exited with {dead.returncode}:\n{dead.logs(50)}", file=sys.stderr)
            code = 1
            break
    print("stopping: edge, link, cloud ...", flush=True)
    codes = stack.stop()
    print("stopped (" + ", ".join(f"{k} {v}" for k, v in codes.items()) + ")")
    return code
