"""The real `python -m cloud` process: --help, health SERVING, a session, metrics, SIGTERM → exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.codec import make_codec
from common.rpc import convert as cv
from common.rpc import pb
from common.types import SamplingParams
from launcher.procs import ManagedProcess, free_port, python_module_argv
from tests.support.cloud import SyncSession

pytestmark = pytest.mark.integration


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        req = health_pb2.HealthCheckRequest(service="draftlink.v1.Verifier")
        reply = health_pb2_grpc.HealthStub(ch).Check(req, timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cloud", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for flag in ("--model", "--metrics-port", "--max-draft-len", "--session-idle-timeout", "--grace-period"):
        assert flag in out.stdout


def test_bad_config_exits_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cloud"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"DRAFTLINK_CLOUD_NO_SUCH_KEY": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2
    assert "DRAFTLINK_CLOUD_NO_SUCH_KEY" in out.stderr


def test_serve_then_sigterm_exits_0() -> None:
    port, mport = free_port(), free_port()
    argv = python_module_argv(
        "cloud", "--model", "builtin:tiny-target", "--port", str(port), "--metrics-port", str(mport)
    )
    proc = ManagedProcess("cloud", argv, env={"DRAFTLINK_CLOUD_GRACE_PERIOD": "5"})
    with proc:
        try:
            proc.wait_ready(lambda: _serving(port), timeout=90)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                info = cv.verifier_stub(ch).Info(pb.InfoRequest(), timeout=5)
                codec = make_codec("ksqs:k=16,ell=100", info.vocab_size)
                session = SyncSession(ch)
                params = SamplingParams(temperature=0.0, max_new_tokens=2)
                session.open(cv.OpenRequest((5, 6, 7), params, codec.spec, info.tokenizer_fingerprint))
                assert session.round(0, codec.encode([])).next_token is not None
                assert session.round(1, codec.encode([])).finished
                assert session.finish() == grpc.StatusCode.OK
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
            assert 'draftlink_sessions_total{outcome="finished"} 1.0' in metrics
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            assert proc.proc.wait(30) == 0, proc.logs()
        except BaseException:
            print(proc.logs())
            raise
    logs = proc.logs()
    assert "fingerprint" in logs
    assert "config {" in logs
    assert "stopped" in logs
