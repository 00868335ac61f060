"""Edge resilience, real processes: the cloud dies and stays away past the resume window (503 / SSE
error saying cloud_unavailable), then returns and the edge recovers. Resumes that succeed: test_resume.py."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from launcher.procs import ManagedProcess, free_port, python_module_argv
from launcher.stack import Stack
from tests.integration.stack import TEST_ENV, metric, start_stack, wait_for

pytestmark = pytest.mark.integration

LONG = {"prompt": "hello", "max_tokens": 2000, "temperature": 0.8, "ignore_eos": True}


RESUME_WINDOW_S = 2.0  # short: these tests are about the cloud *not* coming back in time
EDGE_GRACE_S = 300.0  # long: only a second signal can end the edge's drain in time


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    edge_args = (
        *("--resume-timeout", str(RESUME_WINDOW_S), "--grace-period", str(EDGE_GRACE_S)),
        *("--max-concurrency", "8"),  # eight streams at once below
    )
    yield from start_stack(request, tmp_path_factory.mktemp("stack"), edge_args=edge_args)


def health(stack: Stack) -> int:
    return httpx.get(f"{stack.edge_url}/health", timeout=5).status_code


def running(stack: Stack) -> float:
    return metric(f"{stack.edge_url}/metrics", "draftlink_running_requests")


def kill_cloud(stack: Stack) -> None:
    assert stack.cloud.proc is not None
    stack.cloud.proc.kill()  # SIGKILL: no drain, connections reset
    stack.cloud.proc.wait(10)


def test_cloud_dies_mid_stream_then_recovers(stack: Stack) -> None:
    with (
        httpx.Client(base_url=stack.edge_url, timeout=60) as c,
        c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r,
    ):
        assert r.status_code == 200
        lines = (ln for ln in r.iter_lines() if ln)
        assert "error" not in json.loads(next(lines).removeprefix("data: "))
        kill_cloud(stack)
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    err = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert err["type"] == "service_unavailable"
    assert err["code"] == "cloud_unavailable"
    assert f"within {RESUME_WINDOW_S:.1f}s" in err["message"]

    r = httpx.post(f"{stack.edge_url}/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=30)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "cloud_unavailable"
    assert r.headers["retry-after"]
    wait_for(lambda: health(stack) == 503, what="edge /health 503 while the cloud is down")
    assert running(stack) == 0

    stack.restart_cloud()
    wait_for(lambda: health(stack) == 200, timeout=30, what="edge /health 200 after the cloud restarted")
    r = httpx.post(f"{stack.edge_url}/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=30)
    assert r.status_code == 200, r.text


def _stream_to_the_end(url: str, body: dict[str, object], started: threading.Event, out: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line:
                started.set()
                out.append(line)


def test_link_dies_under_eight_streams_all_end_with_cloud_unavailable(stack: Stack) -> None:
    """Every stream cut by a dead relay ends with one cloud_unavailable event and [DONE] (never an
    internal error from writing to an ended call), serial and streamed rounds alike."""
    wait_for(lambda: health(stack) == 200, timeout=30, what="healthy stack")
    assert stack.link is not None
    assert stack.link.proc is not None
    outs: list[list[str]] = [[] for _ in range(8)]
    started = [threading.Event() for _ in range(8)]
    threads = [
        threading.Thread(
            target=_stream_to_the_end,
            args=(
                stack.edge_url,
                {**LONG, "stream": True, "draftlink": {"pipeline": i % 2 == 1}},
                started[i],
                outs[i],
            ),
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for e in started:
        assert e.wait(60)
    stack.link.proc.kill()
    stack.link.proc.wait(10)
    try:
        for t in threads:
            t.join(60)
        for out in outs:
            assert out[-1] == "data: [DONE]"
            err = json.loads(out[-2].removeprefix("data: "))["error"]
            assert err["code"] == "cloud_unavailable", err
    finally:  # the later tests need the link whatever happened here
        stack.restart_link(uplink_bps=0.0, delay_ms=0.0)


def test_cloud_dies_during_a_non_streaming_request(stack: Stack) -> None:
    wait_for(lambda: health(stack) == 200, timeout=30, what="healthy stack")
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(f"{stack.edge_url}/v1/completions", json=LONG, timeout=60)

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: running(stack) == 1, what="request in flight")
    kill_cloud(stack)
    t.join(30)
    assert result["r"].status_code == 503
    assert result["r"].json()["error"]["type"] == "service_unavailable"
    stack.restart_cloud()
    wait_for(lambda: health(stack) == 200, timeout=30, what="edge /health 200 after the second restart")
    r = httpx.post(f"{stack.edge_url}/v1/completions", json={"prompt": "y", "max_tokens": 3}, timeout=30)
    assert r.status_code == 200


def test_edge_drains_on_sigterm_and_a_second_signal_forces(stack: Stack) -> None:
    """First SIGTERM: the live stream keeps streaming (drain); second: the edge exits 0 at once."""
    wait_for(lambda: health(stack) == 200, timeout=30, what="healthy stack")
    assert stack.edge.proc is not None
    with (
        httpx.Client(base_url=stack.edge_url, timeout=60) as c,
        c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r,
    ):
        lines = (ln for ln in r.iter_lines() if ln)
        assert "error" not in json.loads(next(lines).removeprefix("data: "))
        stack.edge.proc.send_signal(signal.SIGTERM)
        for _ in range(5):  # draining: the stream goes on
            assert "error" not in json.loads(next(lines).removeprefix("data: "))
        stack.edge.proc.send_signal(signal.SIGTERM)
        assert stack.edge.proc.wait(EDGE_GRACE_S / 2) == 0, stack.edge.logs()
    log = stack.edge.logs()
    assert "draining" in log
    assert "second SIGTERM: cancelling what is left now" in log


def test_sigterm_stops_all_three_cleanly(stack: Stack) -> None:
    assert stack.link is not None
    names = {"edge", stack.link.name, stack.cloud.name}  # restarted processes carry their own names
    codes = stack.stop()
    assert codes == dict.fromkeys(names, 0)


def test_edge_refuses_to_start_without_a_cloud(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    argv = python_module_argv(
        "edge", "--model", "builtin:tiny-draft", "--cloud", nowhere, "--port", "0", "--startup-timeout", "1"
    )
    proc = ManagedProcess("edge-alone", argv, TEST_ENV, tmp_path).start()
    assert proc.proc is not None
    assert proc.proc.wait(120) == 2
    assert f"cloud at {nowhere} did not answer Info" in proc.logs()


def _other_tokenizer_model(path: Path) -> str:
    """An hf: model dir like the tiny target but with one extra token (a different fingerprint)."""
    from common.models import tiny

    tok = tiny.tiny_tokenizer()
    tok.add_tokens(["<|not-in-the-drafter|>"])
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    tiny.build_tiny(tiny.TinySpec(), len(tok), eos).save_pretrained(path)
    tok.save_pretrained(path)
    return f"hf:{path}"


def test_edge_refuses_a_cloud_with_another_tokenizer(tmp_path: Path) -> None:
    spec = _other_tokenizer_model(tmp_path / "other")
    port, metrics_port = free_port(), free_port()
    cloud_argv = python_module_argv(
        "cloud", "--model", spec, "--port", str(port), "--metrics-port", str(metrics_port)
    )
    edge_argv = python_module_argv(
        "edge", "--model", "builtin:tiny-draft", "--cloud", f"127.0.0.1:{port}", "--port", "0"
    )
    with ManagedProcess("cloud-other", cloud_argv, TEST_ENV, tmp_path) as cloud:
        edge = ManagedProcess("edge-mismatch", edge_argv, TEST_ENV, tmp_path).start()
        assert edge.proc is not None
        code = edge.proc.wait(120)
        log = edge.logs()
        assert code == 2, log + cloud.logs()
    assert "tokenizer mismatch" in log
    assert "builtin:tiny-draft" in log
    assert spec in log
    fingerprints = [w for w in log.replace(";", " ").replace("]", " ").split() if len(w) == 64]
    assert len(set(fingerprints)) == 2, log
