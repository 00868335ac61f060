"""draftlink-cloud configuration: flags, DRAFTLINK_CLOUD_* twins, validation, device resolution."""

from __future__ import annotations

import pytest

from cloud.app import resolve_device
from cloud.config import CloudConfig, load
from common.errors import ConfigError


def test_defaults() -> None:
    cfg = load([], env={})
    assert cfg == CloudConfig()
    assert (cfg.model, cfg.host, cfg.port, cfg.metrics_port) == (
        "builtin:qwen2.5-coder-1.5b",
        "127.0.0.1",
        50051,
        9101,
    )


def test_flag_beats_env_beats_default() -> None:
    env = {
        "DRAFTLINK_CLOUD_PORT": "6000",
        "DRAFTLINK_CLOUD_MAX_SESSIONS": "3",
        "DRAFTLINK_CLOUD_FAST_LINEAR": "1",
    }
    cfg = load(["--port", "7000", "--session-idle-timeout", "2.5"], env=env)
    assert (cfg.port, cfg.max_sessions, cfg.fast_linear, cfg.session_idle_timeout) == (7000, 3, True, 2.5)


@pytest.mark.parametrize(
    ("argv", "env", "match"),
    [
        ([], {"DRAFTLINK_CLOUD_PORTT": "1"}, "unknown environment key"),
        (["--max-sessions", "0"], {}, "max_sessions"),
        (["--max-draft-len", "300"], {}, "max_draft_len"),
        (["--port", "70000"], {}, "port"),
        (["--session-idle-timeout", "0"], {}, "session_idle_timeout"),
        (["--grace-period", "-1"], {}, "grace_period"),
        ([], {"DRAFTLINK_CLOUD_PORT": "http"}, "invalid value"),
    ],
)
def test_invalid(argv: list[str], env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(argv, env=env)


def test_choices_are_enforced() -> None:
    with pytest.raises(SystemExit):
        load(["--device", "tpu"], env={})


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("auto") in ("cpu", "cuda", "auto")
