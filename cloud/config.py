"""The cloud verifier's configuration: one frozen dataclass, a flag and DRAFTLINK_CLOUD_* twin per field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.config import field, load_config
from common.errors import ConfigError
from common.wire import parse_grpc_args

ENV_PREFIX = "DRAFTLINK_CLOUD_"
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class CloudConfig:
    """Everything `draftlink-cloud` can be told (flag > env > default)."""

    model: str = field("builtin:qwen2.5-coder-1.5b", "target model spec (builtin:, hf:, gguf:)")
    host: str = field("127.0.0.1", "address the gRPC and metrics servers bind to")
    port: int = field(50051, "gRPC port (0 = pick a free port)")
    metrics_port: int = field(9101, "Prometheus /metrics port (0 = disabled)")
    max_sessions: int = field(16, "concurrent Session + Generate streams")
    session_idle_timeout: float = field(60.0, "seconds a session may wait for its next message")
    max_draft_len: int = field(16, "drafts per DraftBlock")
    max_prompt_tokens: int = field(8192, "prompt length limit in tokens")
    max_new_tokens: int = field(4096, "upper bound of a request's max_new_tokens")
    device: str = field("cpu", "cpu, cuda, or auto (device_map=auto over all GPUs)", choices=DEVICES)
    dtype: str = field("float32", "model weights dtype", choices=DTYPES)
    fast_linear: bool = field(False, "use the models package's fast linear kernels")
    torch_threads: int = field(0, "torch intra-op threads for the model engine (0 = torch's default)")
    max_batch_tokens: int = field(2048, "tokens one batched target forward may carry")
    max_batch_sessions: int = field(32, "sessions whose work one batched target forward may carry")
    batch_wait_ms: float = field(1.0, "gather window: wait up to this long for more ready work (0 = never)")
    prefill_chunk: int = field(512, "longest slice of one prompt's prefill in one forward (chunked prefill)")
    grace_period: float = field(10.0, "seconds in-flight streams get to finish on SIGTERM")
    tls_cert: str | None = field(None, "PEM certificate chain for the gRPC port (TLS on; needs tls_key)")
    tls_key: str | None = field(None, "PEM private key of tls_cert (unencrypted)")
    tls_client_ca: str | None = field(
        None, "PEM CA bundle clients' certificates must chain to: mutual TLS (a client cert is required)"
    )
    auth_token: str | None = field(
        None, "shared token every call must carry as 'authorization: Bearer <token>' metadata", secret=True
    )
    health_port: int = field(
        0, "plaintext port serving only grpc.health.v1, for probes that cannot do TLS (0 = none)"
    )
    grpc_args: str = field("", "extra gRPC server args name=value,... over the built-in ones (wire tuning)")
    log_level: str = field("INFO", "log level", choices=LOG_LEVELS)

    def validate(self) -> None:
        """Raise ConfigError for values the server cannot run with."""
        parse_grpc_args(self.grpc_args)  # ConfigError on a malformed list
        positive = (
            "max_sessions",
            "max_draft_len",
            "max_prompt_tokens",
            "max_new_tokens",
            "max_batch_tokens",
            "max_batch_sessions",
            "prefill_chunk",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("port", "metrics_port", "health_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be in [0, 65535], got {getattr(self, name)}")
        if not self.session_idle_timeout > 0:
            raise ConfigError(f"session_idle_timeout must be > 0, got {self.session_idle_timeout}")
        if not 0.0 <= self.batch_wait_ms < 10_000.0:
            raise ConfigError(f"batch_wait_ms must be in [0, 10000), got {self.batch_wait_ms}")
        if not self.grace_period >= 0:
            raise ConfigError(f"grace_period must be >= 0, got {self.grace_period}")
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads must be >= 0, got {self.torch_threads}")
        if self.max_draft_len > 255:
            raise ConfigError(f"max_draft_len must be <= 255, got {self.max_draft_len}")
        self._validate_security()

    def _validate_security(self) -> None:
        """Option combinations only; the files themselves are read at start-up (common.tls)."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("auth_token is empty (unset it to disable token checks)")
        if self.health_port and self.health_port == self.port:
            raise ConfigError(f"health_port must differ from port {self.port}")


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> CloudConfig:
    """Resolve the config from argv, DRAFTLINK_CLOUD_* env keys and defaults."""
    return load_config(
        CloudConfig,
        argv,
        prog="draftlink-cloud",
        description="draftlink cloud verifier: serves draftlink.v1.Verifier over gRPC.",
        prefix=ENV_PREFIX,
        env=env,
    )
