"""Property-based HTTP fuzz of the edge API: no input gives a 5xx or drops the keep-alive connection."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import EdgeConfig
from tests.component.edge_server import EdgeThread
from tests.component.test_edge_app import sse_events
from tests.httpcheck import local_port, one_connection
from tests.support.cloud import ServerThread, tiny_config

# ---- values -------------------------------------------------------------------------------------
# A request is a plausible body for its endpoint (every field optional, numbers at their extremes,
# any valid text), then up to two fields replaced by any JSON value, sometimes with damaged bytes.

MAX_NEW = 16  # the cloud's limit: every accepted request generates at most this many tokens
BIG_INTS = [
    -1,
    0,
    MAX_NEW,
    MAX_NEW + 1,
    255,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
]
INTS = st.sampled_from([1, 2, 3, 4]) | st.sampled_from(BIG_INTS) | st.integers(-(10**30), 10**30)
SMALL = st.sampled_from([1, 2, 3, 4, 8, 9]) | st.sampled_from(BIG_INTS)  # counts: generation stays short
EXTREME_FLOATS = [0.0, -0.0, 5e-324, 1e-45, 1e-38, 9.99e-6, 1e-5, 1e-300, 0.5, 1.0, 1.0000001, 100.0]
FLOATS = st.sampled_from(EXTREME_FLOATS) | st.floats(0.0, 100.0) | st.floats()
SPECIAL = st.sampled_from(
    [
        *["", " ", "\x00", "\ufeff", "\uffff", "\U0010ffff", "\u0301" * 8, "\ud83d\ude00", "\r\n\t"],
        *["<|endoftext|>", "<|im_start|>", "<|im_end|>", "{{ raise_exception('x') }}", "def f(x):\n  return"],
    ]
)
SURROGATE = st.sampled_from(["\ud800", "\udfff", "a\ud83d", "\ude00b"]) | st.text(
    st.characters(categories=["Cs"]), min_size=1, max_size=3
)
VALID_TEXT = SPECIAL | st.text(max_size=24)
TEXT = st.one_of(*[VALID_TEXT] * 15, SURROGATE)  # 1 string in 16 holds a lone surrogate
LEAF = st.none() | st.booleans() | INTS | FLOATS | st.sampled_from([float("nan"), float("inf")])
HOSTILE = st.recursive(
    LEAF | TEXT | SURROGATE,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(VALID_TEXT | SURROGATE, inner, max_size=4),
    max_leaves=10,
)
CODECS = (
    st.sampled_from(
        [
            *[
                "ksqs:k=16,ell=100",
                "qs:ell=240",
                "dense:fp16",
                "dense:fp32",
                "csqs:alpha=0.05,eta=0.02,ell=240",
            ],
            *[
                "ksqs:k=0,ell=100",
                "ksqs:k=99999,ell=1",
                "qs:ell=1e9",
                "zip:9",
                "KSQS:K=4,ELL=8",
                "ksqs:k=4",
                "",
            ],
            *[
                "ksqs:k=1024,ell=1024",
                "csqs:alpha=1e-300,eta=1e6,ell=1",
                "qs:ell=1",
                "dense:fp16" + " " * 300,
            ],
        ]
    )
    | TEXT
)
DRAFTLINK = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["speculative", "cloud-only"]),
        "codec": CODECS,
        "draft_len": SMALL,
    },
)
COMMON: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["builtin:tiny-target", "nope", ""]) | TEXT,
    "max_tokens": SMALL,
    "temperature": FLOATS,
    "top_p": FLOATS,
    "seed": INTS,
    "stop": TEXT | st.lists(TEXT, max_size=17),
    "n": st.sampled_from([1, 1, 1, 0, 2]),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "user": TEXT,
    "presence_penalty": st.sampled_from([0.0, -0.0, 0.5]),
    "frequency_penalty": st.sampled_from([0.0, -0.0, 5e-324]),
    "logit_bias": st.dictionaries(TEXT, FLOATS, max_size=2),
    "return_token_ids": st.booleans(),
    "ignore_eos": st.booleans(),
    "draftlink": DRAFTLINK,
}
PART = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "user", "assistant", "developer", "tool"])},
    optional={"content": TEXT | st.none() | st.lists(PART, max_size=3), "name": TEXT},
)
PROMPT = TEXT | st.lists(st.integers(-2, 2100), max_size=8) | st.lists(TEXT, min_size=1, max_size=2)
COMPLETION = st.fixed_dictionaries(
    {"prompt": PROMPT},
    optional={
        **COMMON,
        "echo": st.booleans(),
        "logprobs": st.none() | SMALL,
        "suffix": st.none() | TEXT,
        "best_of": st.sampled_from([1, 2]),
    },
)
CHAT = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, min_size=1, max_size=3)},
    optional={
        **COMMON,
        "max_completion_tokens": SMALL,
        "logprobs": st.booleans(),
        "tools": st.lists(st.dictionaries(TEXT, LEAF, max_size=2), max_size=1),
    },
)
FIELDS = {
    False: [*COMMON, "prompt", "echo", "logprobs", "suffix", "best_of", "extra_key"],
    True: [*COMMON, "messages", "max_completion_tokens", "logprobs", "tools", "extra_key"],
}
NESTED = {  # where a hostile value can also go one level down
    "draftlink": ["mode", "codec", "draft_len", "bogus"],
    "stream_options": ["include_usage"],
}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """(path, raw body) for one of the two endpoints."""
    chat = draw(st.booleans())
    body: dict[str, Any] = draw(CHAT if chat else COMPLETION)
    for name in draw(st.lists(st.sampled_from(FIELDS[chat]), max_size=2, unique=True)):
        if name in NESTED and draw(st.booleans()):
            inner = body[name] if isinstance(body.get(name), dict) else {}
            body[name] = {**inner, draw(st.sampled_from(NESTED[name])): draw(HOSTILE)}
        elif name == "messages" and draw(st.booleans()):
            msg: dict[str, Any] = draw(MESSAGE)
            msg[draw(st.sampled_from(["role", "content", "name"]))] = draw(HOSTILE)
            body[name] = [msg]
        else:
            body[name] = draw(HOSTILE)
    raw = json.dumps(body, allow_nan=True).encode()  # NaN/Infinity literals, \udXXX escapes
    return ("/v1/chat/completions" if chat else "/v1/completions"), draw(damaged(raw))


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """Mostly `raw` unchanged; else truncated, a bad byte inserted, wrapped in an array, or BOM-led."""
    how = draw(st.sampled_from(["none"] * 12 + ["truncate", "byte", "array", "bom"]))
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    if how == "byte":
        at = draw(st.integers(0, len(raw)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"[", b"NaN"]))
        return raw[:at] + bad + raw[at:]
    if how == "array":
        return b"[" + raw + b"]"
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw


# ---- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edge() -> Iterator[EdgeThread]:
    with ServerThread(tiny_config(max_draft_len=8, max_new_tokens=MAX_NEW, max_prompt_tokens=512)) as cloud:
        cfg = EdgeConfig(
            model="builtin:tiny-draft", cloud=cloud.address, max_concurrency=2, default_max_tokens=4
        )
        with EdgeThread(cfg) as server:
            yield server


@pytest.fixture(scope="module")
def client(edge: EdgeThread) -> Iterator[httpx.Client]:
    with one_connection(edge.url) as c:
        yield c


def check_response(r: httpx.Response, port: int) -> None:
    assert r.status_code < 500, r.text
    assert local_port(r) == port, "the server dropped the keep-alive connection"
    assert "close" not in r.headers.get("connection", "").lower()
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n")
        errors = [e["error"] for e in sse_events(r.text) if isinstance(e, dict) and "error" in e]
        assert not errors or errors[0]["code"] not in SERVER_SIDE, errors  # a 5xx sent in-band
    else:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


EXAMPLES = 300
SERVER_SIDE = {"internal_error", "bad_gateway", "cloud_unavailable", "cloud_busy", "request_timeout"}
SEEN: Counter[str] = Counter()  # status/code of each answer, to check the fuzz reaches generation


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # seeded: the same examples on every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(req=requests())
def _fuzz(client: httpx.Client, req: tuple[str, bytes]) -> None:
    path, raw = req
    port = local_port(client.get("/health"))  # per example: a failure names the request that caused it
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    check_response(r, port)
    after = client.get("/health")
    assert after.status_code == 200
    assert local_port(after) == port, "the connection was closed after the response"
    SEEN[str(r.status_code) if r.status_code < 400 else f"{r.status_code} {r.json()['error']['code']}"] += 1


def test_fuzz_never_5xx_nor_a_dropped_connection(client: httpx.Client, edge: EdgeThread) -> None:
    first = client.get("/health")
    assert first.status_code == 200
    start = time.perf_counter()
    _fuzz(client)
    print(f"fuzz: {sum(SEEN.values())} requests in {time.perf_counter() - start:.1f}s")
    print(f"fuzz answers: {sorted(SEEN.items())}")
    # not vacuous: a good share of the examples got through validation to a generation
    assert SEEN["200"] >= EXAMPLES // 10, SEEN
    ok = client.post("/v1/completions", json={"prompt": "def add(a, b):", "max_tokens": 3})
    assert ok.status_code == 200, ok.text
    assert local_port(ok) == local_port(first)
    assert ok.json()["usage"]["completion_tokens"] == 3
    assert edge.service.running == 0  # every slot came back
