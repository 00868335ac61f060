"""Hostile requests through the real processes: over ONE keep-alive connection, never a 5xx nor a reset."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from launcher.stack import Stack
from tests.httpcheck import assert_health_fast, local_port, one_connection
from tests.integration.stack import scrape, start_stack

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
LONE = "\\ud800"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(request, tmp_path_factory.mktemp("hostile"))


def big_chunks(total: int) -> Iterator[bytes]:
    yield b'{"prompt": "'
    for _ in range(total // 65536):
        yield b"z" * 65536
    yield b'"}'


def hostile() -> list[tuple[str, str, Any]]:
    """(method, path, body): bytes are sent as they are, dicts as JSON, generators chunked."""
    small = {"max_tokens": 4, "ignore_eos": True}
    out: list[tuple[str, str, Any]] = [
        ("POST", "/v1/completions", {"prompt": "a", **small, "temperature": 1e-45}),
        (
            "POST",
            "/v1/completions",
            {"prompt": "a", **small, "temperature": 1e-45, "draftlink": {"mode": "cloud-only"}},
        ),
        (
            "POST",
            "/v1/completions",
            {"prompt": "a", **small, "top_p": 5e-324, "draftlink": {"mode": "cloud-only"}},
        ),
        ("POST", "/v1/completions", f'{{"prompt": "{LONE}", "max_tokens": 4}}'.encode()),
        (
            "POST",
            "/v1/chat/completions",
            f'{{"messages": [{{"role": "user", "content": "{LONE}"}}]}}'.encode(),
        ),
        ("POST", "/v1/completions", f'{{"prompt": "a", "stop": ["{LONE}"], "stream": true}}'.encode()),
        ("POST", "/v1/completions", f'{{"prompt": "a", "draftlink": {{"codec": "{LONE}"}}}}'.encode()),
        ("POST", "/v1/completions", b'{"prompt": "a", "temperature": NaN}'),
        ("POST", "/v1/completions", b'{"prompt": "a", "top_p": 1e999}'),
        ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}"),
        ("POST", "/v1/completions", b'{"prompt": "a", "seed": 18446744073709551616}'),
        ("POST", "/v1/completions", b"[" * 60_000),
        ("POST", "/v1/completions", b'{"prompt": "\xff\xfe"}'),
        ("POST", "/v1/completions", b"null"),
        ("POST", "/v1/completions", b""),
        ("POST", "/v1/completions", {"prompt": [0, -1, 2**63]}),
        ("POST", "/v1/completions", {"prompt": "a", "stop": ["s"] * 17}),
        ("POST", "/v1/completions", {"prompt": "a", "draftlink": {"draft_len": 2**64, "codec": "ksqs:k=0"}}),
        (
            "POST",
            "/v1/completions",
            {"prompt": "a", **small, "draftlink": {"codec": "qs:ell=1"}, "stream": True},
        ),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "assistant"}] * 3, **small}),
        ("POST", "/v1/completions", json.dumps({"prompt": "x" * 1_000_000}).encode()),  # Content-Length
        ("POST", "/v1/completions", big_chunks(1_000_000)),  # chunked: no Content-Length
        ("GET", "/v1/completions", None),
        ("POST", "/v1/nothing", b"{}"),
    ]
    return out


def test_hostile_batch_on_one_keep_alive_connection(stack: Stack) -> None:
    with one_connection(stack.edge_url) as http:
        port = local_port(http.get("/health"))
        for method, path, body in hostile():
            if isinstance(body, dict):
                r = http.request(method, path, json=body)
            else:
                r = http.request(method, path, content=body, headers=JSON)
            label = f"{method} {path} {repr(body)[:80]}"
            assert r.status_code < 500, f"{label}: {r.status_code} {r.text[:300]}"
            assert local_port(r) == port, f"{label}: the connection was dropped"
            assert '"internal_error"' not in r.text, label  # an in-band SSE error too
            assert '"bad_gateway"' not in r.text, label
        ok = http.post("/v1/completions", json={"prompt": "def add(a, b):", "max_tokens": 4})
        assert (ok.status_code, local_port(ok)) == (200, port)
    errors = {k: v for k, v in scrape(f"{stack.edge_url}/metrics").items() if "request_errors_total" in k}
    assert not any(v for k, v in errors.items() if 'code="5' in k), errors


def test_health_stays_fast_while_the_largest_body_is_tokenized(stack: Stack) -> None:
    """The edge's own process: /health within 50 ms while a prompt just under the body limit is tokenized."""
    rng = random.Random(0)
    text = "".join(rng.choice(string.ascii_letters + " ") for _ in range(190_000))
    body = json.dumps({"prompt": text}).encode()

    def check(r: httpx.Response) -> None:
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"

    with one_connection(stack.edge_url) as c:
        assert_health_fast(
            stack.edge_url, partial(c.post, "/v1/completions", content=body, headers=JSON), check
        )
