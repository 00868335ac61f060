"""Many concurrent requests through real processes (one edge, one cloud): batched, and each exact."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import httpx
import pytest

from common.models import LoadedModel, load_model
from common.models.agreement import greedy_continuation
from launcher.stack import Stack
from tests.integration.stack import scrape, start_stack

pytestmark = pytest.mark.integration

N = 6
PROMPTS = [
    [5, 17, 300, 42, 7],
    [1000, 3, 3, 3, 3, 3, 9],
    list(range(100, 140)),
    [77],
    [8, 9, 10, 11],
    [600] * 12,
]


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(
        request,
        tmp_path_factory.mktemp("stack"),
        edge_args=("--max-concurrency", str(N)),
        cloud_args=("--batch-wait-ms", "5"),  # a short gather window: rounds of N sessions meet
    )


@cache
def target() -> LoadedModel:
    return load_model("builtin:tiny-target")


def _complete(stack: Stack, prompt: list[int], draftlink: dict[str, Any]) -> list[int]:
    body = {"prompt": prompt, "max_tokens": 32, "temperature": 0, "return_token_ids": True}
    r = httpx.post(f"{stack.base_url}/completions", json={**body, "draftlink": draftlink}, timeout=120)
    assert r.status_code == 200, r.text
    return list(r.json()["choices"][0]["token_ids"])


@pytest.mark.parametrize(
    "draftlink",
    [
        {"codec": "ksqs:k=16,ell=100"},
        {"codec": "csqs:alpha=0.05,eta=0.02,ell=240", "draft_len": 6},
        {"codec": "qs:ell=240", "draft_len": 2},
        {"codec": "dense:fp16", "draft_len": 5},
        {"codec": "dense:fp32", "draft_len": 3},
        {"pipeline": True},
        {"mode": "cloud-only"},
    ],
    ids=["ksqs", "csqs", "qs", "dense16", "dense32", "streamed", "cloud-only"],
)
def test_concurrent_greedy_requests_each_equal_their_target(stack: Stack, draftlink: dict[str, Any]) -> None:
    before = scrape(stack.cloud_metrics_url)
    with ThreadPoolExecutor(N) as pool:
        outs = list(pool.map(lambda p: _complete(stack, p, draftlink), PROMPTS))
    lm = target()
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out == greedy_continuation(lm, prompt, 32, lm.eos_token_ids)
    after = scrape(stack.cloud_metrics_url)
    steps = after["draftlink_batch_sessions_count"] - before.get("draftlink_batch_sessions_count", 0.0)
    sessions = after["draftlink_batch_sessions_sum"] - before.get("draftlink_batch_sessions_sum", 0.0)
    assert steps > 0
    assert sessions / steps > 1.0  # some forwards carried several sessions' work
