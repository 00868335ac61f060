"""Regressions of the edge's input hardening over real sockets (issue 12: 5xx, resets and stalls)."""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from edge.config import EdgeConfig
from edge.service import INLINE_TOKENIZE_CHARS
from tests.component.edge_server import EdgeThread
from tests.httpcheck import assert_health_fast, local_port, one_connection
from tests.support.cloud import ServerThread, tiny_config

PROMPT = [5, 17, 300, 42, 7]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def cloud() -> Iterator[ServerThread]:
    with ServerThread(tiny_config(max_draft_len=8, max_new_tokens=64, max_prompt_tokens=512)) as server:
        yield server


def edge_config(cloud: ServerThread, **kw: Any) -> EdgeConfig:
    return EdgeConfig(model="builtin:tiny-draft", cloud=cloud.address, max_concurrency=2, **kw)


@pytest.fixture(scope="module")
def edge(cloud: ServerThread) -> Iterator[EdgeThread]:
    with EdgeThread(edge_config(cloud)) as server:
        yield server


@pytest.fixture
def client(edge: EdgeThread) -> Iterator[httpx.Client]:
    with one_connection(edge.url) as c:
        yield c


def tokens(client: httpx.Client, **body: Any) -> list[int]:
    base = {"prompt": PROMPT, "max_tokens": 8, "ignore_eos": True, "return_token_ids": True}
    r = client.post("/v1/completions", json={**base, **body})
    assert r.status_code == 200, r.text
    ids: list[int] = r.json()["choices"][0]["token_ids"]
    return ids


def error(r: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["param"]) == (code, param), err


# ---- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["speculative", "cloud-only"])
@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1e-45},  # the reported one: NaN probabilities (edge), a 502 (cloud-only)
        {"temperature": 5e-324},
        {"temperature": 1e-38},
        {"temperature": 9.99e-6},  # below vLLM's 1e-5: greedy
        {"temperature": -0.0},
        {"temperature": 1.0, "top_p": 1e-300},  # 0 in float32 (= "disabled" on the wire) before
        {"temperature": 1.0, "top_p": 5e-324},
    ],
    ids=["t1e-45", "t5e-324", "t1e-38", "t9.99e-6", "t-0", "p1e-300", "p5e-324"],
)
def test_tiny_temperature_and_top_p_are_greedy_in_both_modes(
    client: httpx.Client, mode: str, sampling: dict[str, float]
) -> None:
    greedy = tokens(client, temperature=0)
    assert tokens(client, **sampling, seed=1, draftlink={"mode": mode}) == greedy


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b'{"prompt": "a", "temperature": NaN}', None, "invalid_json"),
        (b'{"prompt": "a", "top_p": Infinity}', None, "invalid_json"),
        (b'{"prompt": "a", "seed": -Infinity}', None, "invalid_json"),
        (b'{"prompt": "a", "temperature": 1e999}', "temperature", "invalid_value"),  # json: inf
        (b'{"prompt": "a", "logit_bias": {"1": -1e999}}', "logit_bias.1", "invalid_value"),
        (b'{"prompt": "a", "max_tokens": 1' + b"0" * 5000 + b"}", None, "invalid_json"),
        (b'{"prompt": "a", "seed": 18446744073709551616}', "seed", "invalid_value"),
        (b'{"prompt": "a", "temperature": 100.00001}', "temperature", "invalid_value"),
        (b'{"prompt": "a", "top_p": -0.0}', "top_p", "invalid_value"),
        (b'{"prompt": "a", "max_tokens": 4.0}', "max_tokens", "invalid_type"),
        (b'{"prompt": [1, 2, 1e3]}', "prompt", "invalid_type"),
        (
            b'{"prompt": "a", "draftlink": {"codec": "' + b"q" * 300 + b'"}}',
            "draftlink.codec",
            "invalid_value",
        ),
        (b'{"prompt": "a", "stop": ["' + b"s" * 1025 + b'"]}', "stop", "unsupported_parameter"),
        (b"[" * 50_000, None, "invalid_json"),  # deeper than json's recursion limit
        (b'["prompt"]', None, "invalid_json"),
        (b'{"prompt": "\xff"}', None, "invalid_json"),  # not UTF-8
        (b'{"prompt": "\xed\xa0\x80"}', None, "invalid_json"),  # a surrogate encoded in UTF-8
    ],
)
def test_numbers_and_bytes_json_does_not_allow_are_400(
    client: httpx.Client, raw: bytes, param: str | None, code: str
) -> None:
    r = client.post("/v1/completions", content=raw, headers=JSON)
    error(r, 400, code, param)


# ---- unicode ---------------------------------------------------------------------------------

LONE = "\\ud800"  # as JSON escapes it; the raw bytes below are plain ASCII


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/completions", f'{{"prompt": "{LONE}", "max_tokens": 4}}', "prompt"),  # the reported one
        ("/v1/completions", f'{{"prompt": ["a{LONE}b"]}}', "prompt.0"),
        ("/v1/completions", '{"prompt": "a", "stop": "\\udfff"}', "stop"),
        ("/v1/completions", f'{{"prompt": "a", "stop": ["x", "{LONE}"]}}', "stop.1"),
        ("/v1/completions", f'{{"prompt": "a", "model": "{LONE}"}}', "model"),
        ("/v1/completions", f'{{"prompt": "a", "user": "{LONE}"}}', "user"),
        ("/v1/completions", f'{{"prompt": "a", "suffix": "{LONE}"}}', "suffix"),
        ("/v1/completions", f'{{"prompt": "a", "draftlink": {{"codec": "{LONE}"}}}}', "draftlink.codec"),
        ("/v1/completions", f'{{"prompt": "a", "draftlink": {{"{LONE}": 1}}}}', "draftlink.\\ud800"),
        ("/v1/completions", f'{{"prompt": "a", "logit_bias": {{"{LONE}": 1}}}}', "logit_bias.\\ud800"),
        ("/v1/completions", f'{{"prompt": "a", "anything": [[{{"k": "{LONE}"}}]]}}', "anything.0.0.k"),
        (
            "/v1/chat/completions",
            f'{{"messages": [{{"role": "user", "content": "{LONE}"}}]}}',
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            f'{{"messages": [{{"role": "user", "content": [{{"type": "text", "text": "{LONE}"}}]}}]}}',
            "messages.0.content.0.text",
        ),
        (
            "/v1/chat/completions",
            f'{{"messages": [{{"role": "user", "name": "{LONE}"}}]}}',
            "messages.0.name",
        ),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(
    client: httpx.Client, path: str, raw: str, param: str
) -> None:
    r = client.post(path, content=raw.encode(), headers=JSON)
    error(r, 400, "invalid_value", param)
    assert "surrogate" in r.json()["error"]["message"]


def test_valid_surrogate_pairs_and_odd_characters_are_fine(client: httpx.Client) -> None:
    for text in ["\\ud83d\\ude00", "\\u0000", "\\ufeff\\uffff", "<|endoftext|>", "e\\u0301" * 3]:
        raw = f'{{"prompt": "{text}", "max_tokens": 2, "stop": ["{text}"]}}'.encode()
        r = client.post("/v1/completions", content=raw, headers=JSON)
        assert r.status_code == 200, (text, r.text)


# ---- sizes and the event loop -----------------------------------------------------------------


def test_one_megabyte_prompt_is_413_at_once_and_the_connection_stays(
    edge: EdgeThread, client: httpx.Client
) -> None:
    body = json.dumps({"prompt": "x" * 1_000_000, "max_tokens": 4}).encode()
    durations: list[float] = []

    def send() -> httpx.Response:
        t = time.perf_counter()
        r = client.post("/v1/completions", content=body, headers=JSON)
        durations.append(time.perf_counter() - t)
        return r

    port = local_port(client.get("/health"))
    assert_health_fast(edge.url, send, lambda r: error(r, 413, "request_too_large"))
    assert min(durations) < 1.0, f"the 413 took {durations} s (it needs no parsing or tokenizing)"
    r = client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2})
    assert r.status_code == 200
    assert local_port(r) == port  # the unread body was drained, not reset


def test_chunked_oversized_body_is_413_and_the_connection_stays(
    edge: EdgeThread, client: httpx.Client
) -> None:
    limit = edge.service.limits.max_body_bytes

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(limit // 4096 + 2):
            yield b"y" * 4096
        yield b'"}'

    port = local_port(client.get("/health"))
    r = client.post("/v1/completions", content=chunks(), headers=JSON)  # no Content-Length
    error(r, 413, "request_too_large")
    r = client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2})
    assert (r.status_code, local_port(r)) == (200, port)


def test_largest_accepted_body_is_tokenized_off_the_event_loop(edge: EdgeThread) -> None:
    limit = edge.service.limits.max_body_bytes
    rng = random.Random(0)
    text = "".join(rng.choice(string.ascii_letters + " ") for _ in range(limit - 100))
    body = json.dumps({"prompt": text}).encode()
    assert len(body) <= limit

    with one_connection(edge.url) as c:  # made outside the window: loading CA certs holds the GIL
        send = partial(c.post, "/v1/completions", content=body, headers=JSON)
        assert_health_fast(edge.url, send, lambda r: error(r, 413, "context_length_exceeded", "prompt"))


def test_a_slow_tokenizer_never_blocks_health(edge: EdgeThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic twin of the test above: tokenizing takes 1 s here, on whatever thread runs it."""
    tok = edge.service.drafter.lm.tokenizer
    real = tok.encode

    def slow(*args: Any, **kw: Any) -> Any:
        time.sleep(1.0)
        return real(*args, **kw)

    monkeypatch.setattr(tok, "encode", slow)
    prompt = "word " * 2000  # 10,000 characters: over the inline bound, so a worker thread tokenizes
    assert len(prompt) > INLINE_TOKENIZE_CHARS
    chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 1}

    with one_connection(edge.url) as c:
        send = partial(c.post, "/v1/chat/completions", json=chat)
        assert_health_fast(edge.url, send, lambda r: error(r, 413, "context_length_exceeded", "messages"))


# ---- auth and internal errors ------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(cloud: ServerThread) -> Iterator[EdgeThread]:
    with EdgeThread(edge_config(cloud, api_key="s3cret")) as server:
        yield server


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"prompt": "\\ud800"}', b'{"prompt": "a", "temperature": NaN}', b"x" * 2_000_000],
    ids=["bad-json", "surrogate", "nan", "2MB"],
)
def test_the_key_is_checked_before_the_body(keyed: EdgeThread, raw: bytes) -> None:
    with one_connection(keyed.url) as c:
        port = local_port(c.get("/health"))  # probes need no key
        error(c.post("/v1/completions", content=raw, headers=JSON), 401, "invalid_api_key")
        wrong = {**JSON, "Authorization": "Bearer s3cre"}
        error(c.post("/v1/chat/completions", content=raw, headers=wrong), 401, "invalid_api_key")
        right = {**JSON, "Authorization": "Bearer s3cret"}
        r = c.post("/v1/completions", content=raw, headers=right)
        assert r.status_code in (400, 413), r.text  # now the body is judged
        ok = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}, headers=right)
        assert (ok.status_code, local_port(ok)) == (200, port)


def test_an_internal_error_is_a_500_body_on_a_kept_connection(
    edge: EdgeThread, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    port = local_port(client.get("/health"))
    monkeypatch.setattr(edge.service, "new_generation", broken)
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
    error(r, 500, "internal_error")
    assert "close" not in r.headers.get("connection", "")
    assert edge.service.running == 0  # the slot came back
    monkeypatch.undo()
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
    assert (r.status_code, local_port(r)) == (200, port)
