"""GET /v1/draftlink/config: what this edge serves and how (read-only; tools and benchmarks read it)."""

from __future__ import annotations

import dataclasses
from typing import Any

from edge.service import EdgeService

# request defaults a client may override per request (the `draftlink` extension and sampling)
_DEFAULTS = ("codec", "draft_len", "pipeline", "pipeline_depth", "temperature", "top_p", "default_max_tokens")


def config_body(service: EdgeService) -> dict[str, Any]:
    """The drafter's model and load options, the request defaults, effective limits and the cloud's Info."""
    cfg, lm, info = service.cfg, service.drafter.lm, service.info
    limits = dataclasses.asdict(service.limits)
    limits["codec_kinds"] = sorted(limits["codec_kinds"])
    return {
        "served_model": service.model_name,
        "drafter": {
            "model": cfg.model,
            "vocab_size": lm.vocab_size,
            "tokenizer_fingerprint": lm.fingerprint,
            "fast_linear": cfg.fast_linear,
            "int8": cfg.int8,
            "threads": cfg.threads,
        },
        "defaults": {name: getattr(cfg, name) for name in _DEFAULTS},
        "limits": limits,
        "max_concurrency": cfg.max_concurrency,
        "cloud": {
            "target": cfg.cloud,  # one address, a list, or dns:NAME:PORT
            "model_id": info.model_id,
            "model_options": dict(info.model_options),
            "vocab_size": info.vocab_size,
            "codecs": list(info.codecs),
            "features": list(info.features),
            "limits": dataclasses.asdict(info.limits),
            "server_version": info.server_version,
            "bitstream_version": info.bitstream_version,
        },
    }
