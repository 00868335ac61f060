"""Cloud service plumbing: health, reflection, metrics, drain, and no leaks across 1,000 sessions."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.codec import make_codec
from common.metrics import start_metrics_server
from common.rpc import convert as cv
from common.rpc import pb
from common.types import SamplingParams
from tests.support.cloud import ReferenceDrafter, ServerThread, SyncSession, run_session, tiny_config

PROMPT = (11, 305, 42, 7, 1500, 99)
HEALTHY = health_pb2.HealthCheckResponse


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(tiny_config(max_sessions=4)) as srv:
        yield srv


def _open(
    server: ServerThread, channel: grpc.Channel, max_new: int = 50, spec: str = "qs:ell=240"
) -> SyncSession:
    session = SyncSession(channel)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new)
    session.open(cv.OpenRequest(PROMPT, params, spec, server.lm.fingerprint))
    return session


def _health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


@pytest.mark.parametrize("service", ["", "draftlink.v1.Verifier"])
def test_health_serving(channel: grpc.Channel, service: str) -> None:
    assert _health(channel, service) == HEALTHY.SERVING


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=5)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"draftlink.v1.Verifier", "grpc.health.v1.Health"} <= names


def test_metrics_move_by_the_right_amounts(channel: grpc.Channel, server: ServerThread) -> None:
    m = server.server.metrics
    names = [
        "draftlink_spec_decode_num_drafts_total",
        "draftlink_spec_decode_num_draft_tokens_total",
        "draftlink_spec_decode_num_accepted_tokens_total",
        "draftlink_spec_decode_num_resampled_total",
        "draftlink_uplink_bytes_total",
        "draftlink_downlink_bytes_total",
        "draftlink_verify_seconds_count",
        "draftlink_generate_tokens_total",
    ]
    before = {n: m.value(n) for n in names}
    pos0 = m.value("draftlink_spec_decode_num_accepted_tokens_per_pos_total", {"position": "0"})
    finished = m.value("draftlink_sessions_total", {"outcome": "finished"})
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    far = ReferenceDrafter(server.lm, make_codec("ksqs:k=16,ell=100", server.lm.vocab_size), params)
    run = run_session(channel, server.lm, far, PROMPT, draft_len=3)  # exact drafter: all accepted
    rounds = len(run.verdicts)
    delta = {n: m.value(n) - before[n] for n in names}
    assert delta["draftlink_spec_decode_num_drafts_total"] == rounds
    assert delta["draftlink_spec_decode_num_draft_tokens_total"] == 3 * rounds
    assert delta["draftlink_spec_decode_num_accepted_tokens_total"] == 3 * rounds  # raw acceptance
    assert delta["draftlink_spec_decode_num_resampled_total"] == sum(v.resampled for v in run.verdicts)
    assert delta["draftlink_uplink_bytes_total"] == run.payload_bytes
    assert delta["draftlink_downlink_bytes_total"] > 0
    assert delta["draftlink_verify_seconds_count"] == rounds
    assert (
        m.value("draftlink_spec_decode_num_accepted_tokens_per_pos_total", {"position": "0"}) == pos0 + rounds
    )
    assert m.value("draftlink_sessions_total", {"outcome": "finished"}) == finished + 1
    assert server.wait_live(0)
    assert m.value("draftlink_running_sessions") == 0
    gen = pb.GenerateRequest(prompt_token_ids=PROMPT, sampling=pb.SamplingParams(max_new_tokens=5))
    list(cv.verifier_stub(channel).Generate(gen, timeout=10))
    assert m.value("draftlink_generate_tokens_total") - before["draftlink_generate_tokens_total"] == 5


def test_running_gauge_and_error_counter(channel: grpc.Channel, server: ServerThread) -> None:
    m = server.server.metrics
    errors = m.value("draftlink_rpc_errors_total", {"code": "INVALID_ARGUMENT"})
    session = _open(server, channel)
    assert m.value("draftlink_running_sessions") == 1
    session.send(cv.Block(0, b"\x01\x03"))  # truncated header
    with pytest.raises(grpc.RpcError):
        session.recv()
    assert server.wait_live(0)
    assert m.value("draftlink_rpc_errors_total", {"code": "INVALID_ARGUMENT"}) == errors + 1
    assert m.value("draftlink_sessions_total", {"outcome": "error"}) >= 1


def test_metrics_http_endpoint(server: ServerThread) -> None:
    ms = start_metrics_server(0, server.server.metrics.registry)
    try:
        body = urllib.request.urlopen(ms.url, timeout=5).read().decode()
    finally:
        ms.close()
    for name in (
        "draftlink_build_info{",
        "draftlink_spec_decode_num_accepted_tokens_per_pos_total",
        "draftlink_verify_seconds_bucket",
        "draftlink_running_sessions",
        'draftlink_sessions_total{outcome="idle_timeout"}',
    ):
        assert name in body


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_memory_bounded_over_1000_sessions(channel: grpc.Channel, server: ServerThread) -> None:
    """1,000 sequential sessions (mixed endings): the live count returns to 0 and RSS stays flat."""
    codec = make_codec("ksqs:k=16,ell=100", server.lm.vocab_size)
    payload = codec.encode([codec.compress(_peaked(server.lm.vocab_size, i), _rng(i)) for i in range(4)])

    def one(i: int) -> None:
        session = _open(server, channel, max_new=3 if i % 3 else 50, spec=codec.spec)
        session.round(0, payload)
        if i % 3 == 1:
            session.send(cv.Close())
        elif i % 3 == 2:
            session.cancel()
            return
        session.finish()

    for i in range(150):  # warm-up: allocator pools, gRPC buffers, lazy imports
        one(i)
    assert server.wait_live(0)
    start = _rss_kib()
    for i in range(850):
        one(i)
    assert server.wait_live(0)
    growth_mib = (_rss_kib() - start) / 1024
    assert server.server.state.manager.live == 0
    assert growth_mib < 40, f"RSS grew by {growth_mib:.1f} MiB over 850 sessions"


def _peaked(v: int, i: int) -> np.ndarray:
    q = np.full(v, 1.0 / v)  # [V]
    q[(7 * i) % v] += 1.0
    return np.asarray(q / q.sum())


def _rng(i: int) -> np.random.Generator:
    return np.random.default_rng(i)


def test_drain_lets_live_sessions_finish() -> None:
    """drain(): NOT_SERVING and no new sessions at once; a live session still completes its rounds."""
    with ServerThread(tiny_config()) as srv, grpc.insecure_channel(srv.address) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == HEALTHY.SERVING
        live = _open(srv, ch, max_new=8)
        codec = make_codec("qs:ell=240", srv.lm.vocab_size)
        assert live.round(0, codec.encode([])).next_token is not None
        done = asyncio.run_coroutine_threadsafe(srv.server.drain(grace=20), srv.loop)
        assert next(watch).status == HEALTHY.NOT_SERVING  # health flips first
        with pytest.raises(grpc.RpcError) as info:
            _open(srv, ch)  # a new stream is refused
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        for r in range(1, 8):  # the in-flight session keeps going within the grace period
            v = live.round(r, codec.encode([]))
        assert v.finished
        assert live.finish() == grpc.StatusCode.OK
        done.result(timeout=20)  # and the drain ends as soon as the last stream did
        watch.cancel()


def test_not_serving_until_the_model_is_loaded() -> None:
    srv = ServerThread(tiny_config()).start(load=False)
    try:
        with grpc.insecure_channel(srv.address) as ch:
            for service in ("", "draftlink.v1.Verifier"):
                assert _health(ch, service) == HEALTHY.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                cv.verifier_stub(ch).Info(pb.InfoRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                _open(srv, ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in (info.value.details() or "")
            srv.load()
            assert _health(ch, "draftlink.v1.Verifier") == HEALTHY.SERVING
            assert _open(srv, ch).finish() == grpc.StatusCode.OK
    finally:
        srv.stop()
