"""Edge HTTP app in-process (httpx ASGI transport) against a tiny cloud verifier on a loopback port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from edge.app import start_service
from edge.config import EdgeConfig
from edge.http_api import build_app
from edge.service import EdgeService
from tests.support.cloud import ServerThread, tiny_config


@pytest.fixture(scope="module")
def cloud() -> Iterator[ServerThread]:
    with ServerThread(tiny_config(max_draft_len=8, max_new_tokens=256, max_prompt_tokens=512)) as server:
        yield server


def edge_config(cloud: ServerThread, **kw: Any) -> EdgeConfig:
    base = EdgeConfig(model="builtin:tiny-draft", cloud=cloud.address, max_concurrency=2, temperature=0.0)
    return replace(base, **kw)


async def _client(cfg: EdgeConfig) -> tuple[httpx.AsyncClient, EdgeService]:
    service = await start_service(cfg)
    await service.client.check_health()
    transport = httpx.ASGITransport(app=build_app(service))
    return httpx.AsyncClient(transport=transport, base_url="http://edge", timeout=60), service


@pytest.fixture
async def edge(cloud: ServerThread) -> AsyncIterator[tuple[httpx.AsyncClient, EdgeService]]:
    client, service = await _client(edge_config(cloud))
    yield client, service
    await client.aclose()
    await service.client.close()
    service.drafter.close()


def sse_events(body: str) -> list[Any]:
    """Parse an SSE body into JSON objects (and the literal '[DONE]')."""
    out: list[Any] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_health_models_and_metrics(edge: tuple[httpx.AsyncClient, EdgeService]) -> None:
    client, service = edge
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    r = await client.get("/v1/models")
    assert [m["id"] for m in r.json()["data"]] == [service.model_name]
    r = await client.get("/metrics")
    assert "draftlink_build_info" in r.text
    assert "draftlink_running_requests" in r.text


async def test_completion_stream_format_and_text_match(edge: tuple[httpx.AsyncClient, EdgeService]) -> None:
    client, _ = edge
    body = {"prompt": "def add(a, b):", "max_tokens": 24, "return_token_ids": True}
    whole = (await client.post("/v1/completions", json=body)).json()
    r = await client.post(
        "/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]
    final = chunks[-2]["choices"][0]
    assert final["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"
    assert final["token_ids"] == whole["choices"][0]["token_ids"]
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert text == whole["choices"][0]["text"]
    assert whole["usage"]["completion_tokens"] == 24
    spec = whole["metrics"]["speculative_decoding"]
    assert spec["num_accepted_draft_tokens"] + spec["rounds"] == 24


async def test_chat_stream_role_first_then_content(edge: tuple[httpx.AsyncClient, EdgeService]) -> None:
    client, _ = edge
    body = {"messages": [{"role": "user", "content": "hello"}], "max_completion_tokens": 12}
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["role"] == "assistant"
    events = sse_events((await client.post("/v1/chat/completions", json={**body, "stream": True})).text)
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]


async def test_cloud_only_greedy_equals_speculative(edge: tuple[httpx.AsyncClient, EdgeService]) -> None:
    client, _ = edge
    body: dict[str, Any] = {"prompt": [5, 17, 300, 42], "max_tokens": 30, "return_token_ids": True}
    spec = (await client.post("/v1/completions", json=body)).json()
    cloud_only = (
        await client.post("/v1/completions", json={**body, "draftlink": {"mode": "cloud-only"}})
    ).json()
    assert spec["choices"][0]["token_ids"] == cloud_only["choices"][0]["token_ids"]
    assert cloud_only["metrics"]["speculative_decoding"]["mode"] == "cloud-only"


async def test_stop_string_closes_the_cloud_session(
    edge: tuple[httpx.AsyncClient, EdgeService], cloud: ServerThread
) -> None:
    client, _ = edge
    body: dict[str, Any] = {"prompt": "def add(a, b):", "max_tokens": 40, "ignore_eos": True}
    before = outcomes(cloud)
    full = (await client.post("/v1/completions", json=body)).json()["choices"][0]["text"]
    stop = full[10:13]
    r = (await client.post("/v1/completions", json={**body, "stop": [stop]})).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == full[: full.index(stop)]
    assert r["usage"]["completion_tokens"] < 40
    assert cloud.wait_live(0, timeout=10)
    await asyncio.sleep(0)  # let the background status waiters run
    after = outcomes(cloud)
    # the full run ended "finished", the stopped one "closed" (CloseSession), none "cancelled"
    assert {k: after[k] - before[k] for k in after} == {"finished": 1, "closed": 1, "cancelled": 0}


def outcomes(cloud: ServerThread) -> dict[str, float]:
    m = cloud.server.metrics
    return {
        o: m.value("draftlink_sessions_total", {"outcome": o}) for o in ("finished", "closed", "cancelled")
    }


BAD: list[tuple[str, Any, int, str | None, str]] = [
    ("/v1/completions", "{not json", 400, None, "invalid_json"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "invalid_type"),
    ("/v1/completions", {"max_tokens": 5}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": "x", "model": "nope"}, 404, "model", "model_not_found"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 100000}, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {"prompt": "word " * 600}, 413, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n", "unsupported_parameter"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt", "unsupported_parameter"),
    ("/v1/completions", {"prompt": [1, 99999]}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature", "invalid_value"),
    (
        "/v1/completions",
        {"prompt": "x", "draftlink": {"codec": "zip:9"}},
        400,
        "draftlink.codec",
        "invalid_value",
    ),
    (
        "/v1/completions",
        {"prompt": "x", "draftlink": {"draft_len": 0}},
        400,
        "draftlink.draft_len",
        "invalid_value",
    ),
    (
        "/v1/completions",
        {"prompt": "x", "draftlink": {"draft_len": 9}},
        400,
        "draftlink.draft_len",
        "invalid_value",
    ),
    (
        "/v1/completions",
        {"prompt": "x", "draftlink": {"mode": "warp"}},
        400,
        "draftlink.mode",
        "invalid_value",
    ),
    ("/v1/completions", {"prompt": "x", "draftlink": {"bogus": 1}}, 400, "draftlink.bogus", "invalid_value"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, None, "invalid_value"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "logprobs": True},
        400,
        "logprobs",
        "unsupported_parameter",
    ),
    ("/v1/nothing", {}, 404, None, "not_found"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), BAD)
async def test_bad_requests_get_openai_errors(
    edge: tuple[httpx.AsyncClient, EdgeService],
    path: str,
    body: Any,
    status: int,
    param: str | None,
    code: str,
) -> None:
    client, _ = edge
    if isinstance(body, str):
        r = await client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    ok = await client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2})
    assert ok.status_code == 200


async def test_over_concurrency_is_429_not_queued(edge: tuple[httpx.AsyncClient, EdgeService]) -> None:
    client, service = edge
    service.acquire()
    service.acquire()  # both slots busy
    try:
        r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert r.headers["retry-after"] == "1"
    finally:
        service.release()
        service.release()
    assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})).status_code == 200


async def test_api_key_required_when_set(cloud: ServerThread) -> None:
    client, service = await _client(edge_config(cloud, api_key="s3cret"))
    try:
        assert (await client.get("/v1/models")).status_code == 401
        r = await client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})).status_code == 200
        assert (await client.get("/health")).status_code == 200  # probes need no key
    finally:
        await client.aclose()
        await service.client.close()
        service.drafter.close()


async def test_cloud_unreachable_is_503_and_health_follows() -> None:
    dying = ServerThread(tiny_config()).start()
    client, service = await _client(edge_config(dying))
    try:
        dying.stop()
        r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "service_unavailable"
        assert not await service.client.check_health(timeout_s=1.0)
        r = await client.get("/health")
        assert r.status_code == 503
        assert r.json()["status"] == "unavailable"
    finally:
        await client.aclose()
        await service.client.close()
        service.drafter.close()
