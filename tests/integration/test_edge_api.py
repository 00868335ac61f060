"""The edge via real processes (cloud → link → edge, tiny models): exactness, streaming, metrics, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import httpx
import openai
import pytest

from common.models import LoadedModel, load_model
from common.models.agreement import greedy_continuation
from launcher.stack import Stack
from tests.integration.stack import metric, scrape, start_stack, wait_for

pytestmark = pytest.mark.integration

MAX_CONCURRENCY = 2


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(
        request, tmp_path_factory.mktemp("stack"), edge_args=("--max-concurrency", str(MAX_CONCURRENCY))
    )


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.edge_url, timeout=60) as client:
        yield client


@cache
def target() -> LoadedModel:
    return load_model("builtin:tiny-target")


def target_greedy(prompt: list[int], max_new: int) -> list[int]:
    """The target's own greedy continuation (argmax, lowest id on ties), EOS included."""
    lm = target()
    return greedy_continuation(lm, prompt, max_new, lm.eos_token_ids)


PROMPTS = [[5, 17, 300, 42, 7], [1000, 3, 3, 3, 3, 3, 9], list(range(100, 140))]


@pytest.mark.parametrize(
    "draftlink",
    [
        {},
        {"codec": "csqs:alpha=0.05,eta=0.02,ell=240", "draft_len": 6},
        {"codec": "qs:ell=240", "draft_len": 2},
        {"codec": "dense:fp16", "draft_len": 5},
        {"mode": "cloud-only"},
        {"pipeline": True},
        {"pipeline": True, "codec": "csqs:alpha=0.05,eta=0.02,ell=240", "draft_len": 3},
        {"pipeline": True, "codec": "dense:fp16", "draft_len": 1},
        {"draft_len": "auto", "codec": "auto", "pipeline": False},
        {"draft_len": "auto", "codec": "auto", "pipeline": True},
    ],
    ids=[
        "ksqs",
        "csqs",
        "qs",
        "dense16",
        "cloud-only",
        "streamed-ksqs",
        "streamed-csqs",
        "streamed-dense16",
        "auto",
        "streamed-auto",
    ],
)
def test_greedy_equals_target_greedy(http: httpx.Client, draftlink: dict[str, Any]) -> None:
    auto = draftlink.get("codec") == "auto"
    decisions = 0
    for prompt in PROMPTS:
        body = {"prompt": prompt, "max_tokens": 40, "temperature": 0, "return_token_ids": True}
        r = http.post("/v1/completions", json={**body, "draftlink": draftlink})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["token_ids"] == target_greedy(prompt, 40)
        if auto:  # the controller shaped the blocks (codec and length per block)
            spec = r.json()["metrics"]["speculative_decoding"]
            assert spec["codec"] == spec["draft_len"] == "auto"
            assert (spec["blocks_streamed"] > 0) == draftlink["pipeline"]
            decisions += spec["controller"]["decisions"]
    assert decisions > 0 or not auto


def test_streamed_seeded_text_does_not_depend_on_block_length(http: httpx.Client) -> None:
    """Streamed rounds draft every position and both sides key randomness by position: a seeded
    request's text is the same for any draft length (and any timing of the verdicts)."""
    outs = []
    for draft_len in (1, 3, 6):
        body = {
            "prompt": PROMPTS[0],
            "max_tokens": 40,
            "temperature": 0.9,
            "seed": 3,
            "return_token_ids": True,
        }
        body["draftlink"] = {"pipeline": True, "draft_len": draft_len, "codec": "ksqs:k=8,ell=64"}
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        spec = r.json()["metrics"]["speculative_decoding"]
        assert spec["blocks_streamed"] > 0
        outs.append(r.json()["choices"][0]["token_ids"])
    assert outs[0] == outs[1] == outs[2]


def _stream_text(http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    chunks: list[dict[str, Any]] = []
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        chunks.append(json.loads(ln.removeprefix("data: ")))
    key = "delta" if path.endswith("chat/completions") else "text"
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "") if key == "delta" else c["choices"][0]["text"]
        for c in chunks
        if c["choices"]
    )
    return text, chunks


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("stop", [None, ["e"], [" t", "ou"]])
def test_streaming_and_non_streaming_give_the_same_text(
    http: httpx.Client, temperature: float, stop: list[str] | None
) -> None:
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 48,
        "temperature": temperature,
        "seed": 7,
        "stop": stop,
    }
    whole = http.post("/v1/completions", json=body).json()
    text, chunks = _stream_text(http, "/v1/completions", body)
    assert text == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    for s in stop or []:
        assert s not in text


def test_openai_client_completions_and_chat(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    kw: dict[str, Any] = {"model": model, "max_tokens": 20, "temperature": 0}
    c = client.completions.create(prompt="def main():", **kw)
    assert c.choices[0].finish_reason == "length"
    assert c.usage is not None
    assert c.usage.completion_tokens == 20
    streamed = "".join(
        ch.choices[0].text for ch in client.completions.create(prompt="def main():", stream=True, **kw)
    )
    assert streamed == c.choices[0].text

    messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    chat = client.chat.completions.create(messages=messages, **kw)
    assert chat.choices[0].message.role == "assistant"
    parts, usage = [], None
    stream = client.chat.completions.create(
        messages=messages, stream=True, stream_options={"include_usage": True}, **kw
    )
    for ch in stream:
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
        if ch.usage is not None:
            usage = ch.usage
    assert "".join(parts) == chat.choices[0].message.content
    assert usage is not None
    assert chat.usage is not None
    assert usage.completion_tokens == chat.usage.completion_tokens


def test_metrics_counters_move_by_the_response_numbers(stack: Stack, http: httpx.Client) -> None:
    url = f"{stack.edge_url}/metrics"
    before = scrape(url)
    body = {"prompt": "import os", "max_tokens": 33, "temperature": 0.8, "seed": 3}
    r = http.post("/v1/completions", json=body).json()
    after = scrape(url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    spec = r["metrics"]["speculative_decoding"]
    assert delta("draftlink_generated_tokens_total") == r["usage"]["completion_tokens"] == 33
    assert delta("draftlink_spec_decode_num_draft_tokens_total") == spec["num_draft_tokens"]
    assert delta("draftlink_spec_decode_num_accepted_tokens_total") == spec["num_accepted_draft_tokens"]
    assert delta("draftlink_spec_decode_num_drafts_total") == spec["num_drafts"]
    per_pos = [
        delta(f'draftlink_spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}}') for i in range(4)
    ]
    assert per_pos == spec["num_accepted_tokens_per_pos"]
    assert sum(per_pos) == spec["num_accepted_draft_tokens"]
    assert delta("draftlink_uplink_bytes_total") == spec["uplink_bytes"]
    assert delta("draftlink_downlink_bytes_total") == spec["downlink_bytes"]
    assert delta('draftlink_requests_total{finish_reason="length"}') == 1
    assert delta("draftlink_request_latency_seconds_count") == 1
    assert delta("draftlink_time_to_first_token_seconds_count") == 1
    assert delta("draftlink_round_seconds_count") == spec["rounds"]
    # every round yields accepted + 1 tokens: the draft/accept numbers add up to the output
    assert spec["num_accepted_draft_tokens"] + spec["rounds"] == 33
    assert spec["num_draft_tokens"] <= 4 * spec["rounds"]


def test_disconnecting_clients_free_their_cloud_sessions(stack: Stack) -> None:
    body = {"prompt": "hello", "max_tokens": 2000, "temperature": 0.9, "ignore_eos": True}
    edge_metrics, cloud_metrics = f"{stack.edge_url}/metrics", stack.cloud_metrics_url
    with (
        httpx.Client(base_url=stack.edge_url, timeout=60) as c,
        c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r,
    ):
        lines = r.iter_lines()  # keep a reference: a collected iterator closes the response
        first = next(lines)
        m = scrape(cloud_metrics)
        assert first.startswith("data: ")
        assert m["draftlink_running_sessions"] == 1, (first, m)
    wait_for(
        lambda: metric(cloud_metrics, "draftlink_running_sessions") == 0, what="cloud session freed (stream)"
    )
    wait_for(lambda: metric(edge_metrics, "draftlink_running_requests") == 0, what="edge slot freed (stream)")

    # non-streaming: the client gives up (read timeout closes the connection)
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=stack.edge_url, timeout=1.0) as c:
        c.post("/v1/completions", json=body)
    wait_for(
        lambda: metric(cloud_metrics, "draftlink_running_sessions") == 0, what="cloud session freed (json)"
    )
    wait_for(lambda: metric(edge_metrics, "draftlink_running_requests") == 0, what="edge slot freed (json)")


def test_concurrency_limit_answers_429_and_recovers(stack: Stack, http: httpx.Client) -> None:
    body = {"prompt": "x", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    url = f"{stack.edge_url}/v1/completions"
    with (
        httpx.Client(timeout=60) as c1,
        httpx.Client(timeout=60) as c2,
        c1.stream("POST", url, json=body) as r1,
        c2.stream("POST", url, json=body) as r2,
    ):
        held = [r1.iter_lines(), r2.iter_lines()]  # referenced: both streams stay open
        for lines in held:
            next(lines)
        r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "too_many_requests"
    wait_for(
        lambda: metric(f"{stack.edge_url}/metrics", "draftlink_running_requests") == 0, what="slots freed"
    )
    assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prompt": "x", "max_tokens": 0}, 400, "invalid_value"),
        ({"prompt": "x", "max_tokens": 10**6}, 400, "invalid_value"),
        ({"prompt": "x", "n": 3}, 400, "unsupported_parameter"),
        ({"prompt": "x", "model": "gpt-17"}, 404, "model_not_found"),
        ({"prompt": "tok " * 5000}, 413, "context_length_exceeded"),
        ({"prompt": "x", "draftlink": {"codec": "ksqs:k=0,ell=1"}}, 400, "invalid_value"),
        ({"prompt": "x", "draftlink": {"draft_len": 999}}, 400, "invalid_value"),
        ({"prompt": "x", "draftlink": {"mode": "telepathy"}}, 400, "invalid_value"),
        ({"prompt": 5}, 400, "invalid_type"),
    ],
)
def test_bad_inputs_then_a_good_request(
    http: httpx.Client, body: dict[str, Any], status: int, code: str
) -> None:
    r = http.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert http.post("/v1/completions", json={"prompt": "fine", "max_tokens": 3}).status_code == 200


def test_invalid_json_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
