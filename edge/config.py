"""Edge daemon configuration: one frozen dataclass, a flag and a DRAFTLINK_EDGE_* env twin per field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.config import field, load_config
from common.errors import CodecError, ConfigError
from common.wire import parse_grpc_args

ENV_PREFIX = "DRAFTLINK_EDGE_"
MAX_DRAFT_LEN = 64
AUTO = "auto"  # draft_len / codec chosen per block by the adaptive controller (edge/adaptive.py)
STATIC_CODEC = "ksqs:k=16,ell=100"  # cold-start codec when the edge's default codec is "auto"
STATIC_DRAFT_LEN = 4  # cold-start draft length when the edge's default draft_len is "auto"


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the edge daemon reads at start-up (resolved once, logged with secrets masked)."""

    model: str = field("builtin:qwen2.5-coder-0.5b", "drafter model spec (the small model, q)")
    cloud: str = field(
        "127.0.0.1:50051",
        "cloud verifier (or link relay) gRPC address host:port; several: a comma-separated list; "
        "dns:NAME:PORT: every address NAME resolves to (a headless Service)",
    )
    host: str = field("127.0.0.1", "HTTP bind address")
    port: int = field(8000, "HTTP port (OpenAI API, /health and /metrics)")
    codec: str = field(
        STATIC_CODEC,
        "default draft codec spec, or 'auto': chosen per block by the adaptive controller from the "
        f"codecs the cloud decodes ({STATIC_CODEC} until it has estimates); per-request override allowed",
    )
    draft_len: str = field(
        str(STATIC_DRAFT_LEN),
        "default drafts per round L, or 'auto': chosen per block by the adaptive controller in [1, "
        f"--auto-max-draft-len] ({STATIC_DRAFT_LEN} until it has estimates); per-request override allowed",
    )
    auto_max_draft_len: int = field(
        16, "longest block the adaptive controller chooses (draft_len auto; capped by the cloud's limit)"
    )
    client_states: int = field(
        1024, "clients whose C-SQS threshold and acceptance carry over between requests (LRU; 0 = none)"
    )
    pipeline: bool = field(False, "streamed rounds: keep drafting while blocks are in flight (per request)")
    pipeline_depth: int = field(4, "streamed rounds: blocks of one chain in flight at most")
    temperature: float = field(0.7, "temperature used when a request omits it (0 = greedy)")
    top_p: float = field(1.0, "top_p used when a request omits it")
    default_max_tokens: int = field(256, "max_tokens used when a request omits it")
    max_tokens_limit: int = field(2048, "largest max_tokens a request may ask for (400 above)")
    max_prompt_tokens: int = field(4096, "longest prompt in tokens (413 above)")
    max_concurrency: int = field(4, "generations served at once; more get 429 (no queue)")
    request_timeout: float = field(300.0, "deadline of one generation in seconds (gRPC deadline)")
    resume_timeout: float = field(
        30.0,
        "seconds a generation that lost its cloud session waits for a cloud to take it back "
        "(capped by request_timeout; 0 = fail at once)",
    )
    grace_period: float = field(10.0, "seconds in-flight requests get to finish on SIGTERM")
    api_key: str | None = field(None, "bearer token required on /v1/* when set", secret=True)
    served_model_name: str | None = field(None, "model name in the API (default: the cloud's model id)")
    fast_linear: bool = field(False, "drafter: use the fast linear kernels of common.models")
    int8: bool = field(False, "drafter: int8 weight quantization")
    threads: int = field(0, "torch intra-op threads for the drafter (0 = torch default)")
    health_interval: float = field(2.0, "seconds between cloud health checks while no generation runs")
    grpc_args: str = field("", "extra gRPC channel args name=value,... over the built-in ones (wire tuning)")
    startup_timeout: float = field(120.0, "seconds to wait for the cloud's Info at start-up")
    tls_ca: str | None = field(None, "PEM file of the CA that signed the cloud's cert (enables TLS)")
    tls_cert: str | None = field(None, "PEM client certificate for mutual TLS")
    tls_key: str | None = field(None, "PEM client private key for mutual TLS (unencrypted)")
    tls_server_name: str | None = field(
        None, "name the cloud's certificate must carry (default: the host of each --cloud target)"
    )
    cloud_token: str | None = field(
        None, "token sent to the cloud as 'authorization: Bearer' metadata (its --auth-token)", secret=True
    )
    log_level: str = field("INFO", "log level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    def validate(self) -> None:
        """Raise ConfigError for values the daemon cannot run with."""
        parse_grpc_args(self.grpc_args)  # ConfigError on a malformed list
        parse_targets(self.cloud)
        _check(0 <= self.port < 65536, f"port out of range: {self.port}")
        _check(
            self.draft_len == AUTO
            or (self.draft_len.isdigit() and 1 <= int(self.draft_len) <= MAX_DRAFT_LEN),
            f"draft_len must be 'auto' or in [1, {MAX_DRAFT_LEN}], got {self.draft_len!r}",
        )
        _check(
            1 <= self.auto_max_draft_len <= MAX_DRAFT_LEN,
            f"auto_max_draft_len must be in [1, {MAX_DRAFT_LEN}]",
        )
        _check(self.client_states >= 0, "client_states must be >= 0")
        _check(1 <= self.pipeline_depth <= 64, "pipeline_depth must be in [1, 64]")
        _check(0.0 <= self.temperature <= 100.0, "temperature must be in [0, 100]")
        _check(0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]")
        _check(self.max_tokens_limit >= 1, "max_tokens_limit must be >= 1")
        _check(1 <= self.default_max_tokens <= self.max_tokens_limit, "default_max_tokens out of range")
        _check(self.max_prompt_tokens >= 1, "max_prompt_tokens must be >= 1")
        _check(self.max_concurrency >= 1, "max_concurrency must be >= 1")
        _check(self.request_timeout > 0 and self.health_interval > 0, "timeouts must be > 0")
        _check(
            self.resume_timeout >= 0 and self.grace_period >= 0,
            "resume_timeout and grace_period must be >= 0",
        )
        _check(self.cloud_token is None or bool(self.cloud_token.strip()), "cloud_token is empty")
        _check((self.tls_cert is None) == (self.tls_key is None), "tls_cert and tls_key go together")
        _check(self.tls_cert is None or self.tls_ca is not None, "mutual TLS needs tls_ca")
        try:
            from common.codec import parse_codec_spec

            parse_codec_spec(self.static_codec)
        except ImportError:  # codec package not installed yet: checked again when the codec is built
            pass
        except CodecError as exc:
            raise ConfigError(f"invalid codec spec {self.codec!r}: {exc}") from None

    @property
    def static_codec(self) -> str:
        """The default codec, or the cold-start one when it is "auto"."""
        return STATIC_CODEC if self.codec == AUTO else self.codec

    @property
    def static_draft_len(self) -> int:
        """The default draft length, or the cold-start one when it is "auto"."""
        return STATIC_DRAFT_LEN if self.draft_len == AUTO else int(self.draft_len)


def parse_targets(spec: str) -> list[tuple[str, str, int]]:
    """'a:1,dns:b:2' → [('static', 'a', 1), ('dns', 'b', 2)] (ConfigError on a malformed entry)."""
    out = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        kind = "dns" if raw.startswith("dns:") else "static"
        hostport = raw.removeprefix("dns:").removeprefix("///")
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"cloud target {raw!r} must be host:port or dns:NAME:PORT")
        out.append((kind, host.strip("[]"), int(port)))
    if not out:
        raise ConfigError("cloud needs at least one host:port")
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def load_edge_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> EdgeConfig:
    """Resolve the edge config from flags, then DRAFTLINK_EDGE_* env, then defaults."""
    return load_config(
        EdgeConfig,
        argv,
        prog="draftlink-edge",
        description="draftlink edge daemon: OpenAI-compatible HTTP API that drafts with a small model "
        "and verifies with the cloud over gRPC (speculative decoding, compressed drafts).",
        prefix=ENV_PREFIX,
        env=env,
    )
