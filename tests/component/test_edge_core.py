"""Edge pure core: detokenization, config, error mapping, start-up checks (rounds: test_rounds.py)."""

from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest

from common.config import describe
from common.errors import ConfigError
from common.models.tiny import tiny_tokenizer
from common.rounds import ProtocolViolationError
from common.rpc.convert import Limits, ServerInfo
from common.sampling import drafter_rng, verifier_rng
from edge.config import EdgeConfig, load_edge_config
from edge.detok import TextStream
from edge.errors import from_exception, from_grpc, from_validation

# ---- detokenization --------------------------------------------------------------------------

TEXT = "héllo wörld 🙂 日本語のテキスト def f(x):\n    return x + 1  # ünïcödé"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_incremental_text_equals_full_decode_with_multibyte(tok) -> None:
    ids = tok.encode(TEXT)
    ts = TextStream(tok)
    deltas = [ts.push([i]) for i in ids] + [ts.finish()]
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True) == TEXT
    assert not any("\ufffd" in d for d in deltas)  # partial UTF-8 is held, never emitted


def test_incremental_text_in_chunks_matches_one_token_at_a_time(tok) -> None:
    ids = tok.encode(TEXT)
    one = TextStream(tok)
    a = "".join(one.push([i]) for i in ids) + one.finish()
    chunked = TextStream(tok)
    b = "".join(chunked.push(ids[i : i + 3]) for i in range(0, len(ids), 3)) + chunked.finish()
    assert a == b == TEXT


def test_special_tokens_are_skipped(tok) -> None:
    ids = [*tok.encode("abc"), tok.eos_token_id]
    ts = TextStream(tok)
    assert ts.push(ids) + ts.finish() == "abc"
    assert ts.num_tokens == len(ids)


@pytest.mark.parametrize("stop", [["wörld"], ["ld 🙂", "zzz"], ["🙂"]])
def test_stop_string_is_cut_and_never_leaked(tok, stop: list[str]) -> None:
    ids = tok.encode(TEXT)
    ts = TextStream(tok, stop)
    out = ""
    for i in ids:
        out += ts.push([i])
        assert not any(s in out for s in stop)
        if ts.stopped:
            break
    out += ts.finish()
    cut = min(TEXT.find(s) for s in stop if s in TEXT)
    assert ts.stopped
    assert out == TEXT[:cut] == ts.text
    assert ts.num_tokens <= len(ids)


def test_stop_string_absent_flushes_everything(tok) -> None:
    ids = tok.encode(TEXT)
    ts = TextStream(tok, ["not-in-text"])
    out = ts.push(ids)
    assert len(out) <= len(TEXT)
    assert out + ts.finish() == TEXT
    assert not ts.stopped


# ---- config, rng, errors, start-up checks ----------------------------------------------------


def test_config_defaults_env_and_secret_masking() -> None:
    cfg = load_edge_config([], env={})
    assert cfg == EdgeConfig()
    cfg = load_edge_config(["--draft-len", "6"], env={"DRAFTLINK_EDGE_API_KEY": "sekret"})
    assert cfg.draft_len == "6"
    assert cfg.static_draft_len == 6
    assert cfg.api_key == "sekret"
    assert "sekret" not in describe(cfg)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--draft-len", "0"], {}),
        (["--codec", "ksqs:k=0"], {}),
        (["--cloud", "nohostport"], {}),
        ([], {"DRAFTLINK_EDGE_NOPE": "1"}),
        (["--tls-cert", "a.pem", "--tls-key", "k.pem"], {}),  # mTLS without a CA
    ],
)
def test_config_rejects_bad_values(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_edge_config(argv, env=env)


def test_edge_rng_is_seeded_but_not_the_clouds_stream() -> None:
    a, b = drafter_rng(42, 7).random(4), drafter_rng(42, 7).random(4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, verifier_rng(42, 7).random(4))  # the cloud's draws stay independent
    assert not np.allclose(a, drafter_rng(42, 8).random(4))  # and each position has its own stream


class _Rpc(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "boom"


@pytest.mark.parametrize(
    ("code", "status", "ecode"),
    [
        (grpc.StatusCode.UNAVAILABLE, 503, "cloud_unavailable"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503, "cloud_busy"),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_value"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "request_timeout"),
        (grpc.StatusCode.INTERNAL, 502, "bad_gateway"),
    ],
)
def test_grpc_status_maps_to_http(code: grpc.StatusCode, status: int, ecode: str) -> None:
    err = from_grpc(_Rpc(code))
    assert (err.status, err.code) == (status, ecode)
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_exceptions_map_once() -> None:
    assert from_exception(ProtocolViolationError("x")).status == 502
    assert from_exception(RuntimeError("bug")).status == 500
    assert (
        from_validation([{"type": "json_invalid", "loc": ("body", 3), "msg": "bad"}]).code == "invalid_json"
    )
    err = from_validation([{"type": "int_type", "loc": ("body", "max_tokens"), "msg": "int"}])
    assert (err.status, err.param, err.code) == (400, "max_tokens", "invalid_type")


def _info(fp: str, vocab: int = 2000) -> ServerInfo:
    return ServerInfo("builtin:other", fp, vocab, ("ksqs",), Limits(4, 8, 100, 100, 1 << 20), "0", 1)


def test_check_cloud_refuses_a_different_tokenizer() -> None:
    from common.models import load_model
    from edge.app import check_cloud
    from edge.client import StartupError

    lm = load_model("builtin:tiny-draft")
    cfg = EdgeConfig(model="builtin:tiny-draft")
    check_cloud(cfg, lm, _info(lm.fingerprint))
    with pytest.raises(StartupError) as info:
        check_cloud(cfg, lm, _info("f" * 64))
    msg = str(info.value)
    assert "builtin:tiny-draft" in msg
    assert "builtin:other" in msg
    assert lm.fingerprint in msg
    assert "f" * 64 in msg
    with pytest.raises(StartupError, match="draft_len"):
        check_cloud(replace(cfg, draft_len="9"), lm, _info(lm.fingerprint))
