"""TLS, mutual TLS and a token on the gRPC hop, through real processes (certificates made here).

The stack runs edge → link → cloud with mutual TLS (the link relays the encrypted bytes) and a
shared token. Refusals are checked with the edge's own client code (edge.client.CloudClient)
against the real cloud process, and once with a real edge process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.rpc import pb, pb_grpc
from common.tls import load_client_tls
from deploy.tools import inventory as inv
from edge.client import CloudClient, CloudSettings, StartupError
from launcher.procs import ManagedProcess, python_module_argv
from launcher.stack import Stack, StackTLS
from tests.integration.stack import TEST_ENV, start_stack
from tests.support.certs import PKI

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: PKI
) -> Iterator[Stack]:
    tls = StackTLS(
        ca=pki.ca,
        server_cert=pki.cloud_cert,
        server_key=pki.cloud_key,
        client_ca=pki.ca,
        client_cert=pki.edge_cert,
        client_key=pki.edge_key,
    )
    yield from start_stack(
        request, tmp_path_factory.mktemp("tls"), tls=tls, auth_token=TOKEN, ready_timeout=300.0
    )


def test_request_end_to_end_over_mutual_tls(stack: Stack) -> None:
    body = {"prompt": "hello", "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert not any('"error"' in ln for ln in lines)
    assert "mutual TLS, token required" in stack.cloud.logs()
    assert TOKEN not in stack.cloud.logs() + stack.edge.logs()  # masked in the resolved config


async def _refusal(
    stack: Stack, tls_files: tuple[str | None, str | None, str | None] | None, token: str | None
) -> str:
    tls = None if tls_files is None else load_client_tls(*tls_files)
    client = CloudClient(CloudSettings(stack.edge_upstream, tls, None, token))
    try:
        with pytest.raises(StartupError) as refused:
            await client.wait_info(timeout_s=20)
    finally:
        await client.close()
    return str(refused.value)


async def test_plaintext_is_refused(stack: Stack) -> None:
    message = await _refusal(stack, None, TOKEN)
    assert "speaks TLS on this port" in message
    async with grpc.aio.insecure_channel(stack.cloud_address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            await pb_grpc.VerifierStub(channel).Info(pb.InfoRequest(), timeout=5)  # type: ignore[no-untyped-call]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_edge_without_a_client_certificate_is_refused(stack: Stack, pki: PKI) -> None:
    message = await _refusal(stack, (pki.ca, None, None), TOKEN)
    assert "requires a client certificate" in message


async def test_client_certificate_of_another_ca_is_refused(stack: Stack, pki: PKI, other: PKI) -> None:
    message = await _refusal(stack, (pki.ca, other.edge_cert, other.edge_key), TOKEN)
    assert "refused our client certificate" in message


async def test_edge_trusting_the_wrong_ca_refuses_the_cloud(stack: Stack, pki: PKI, other: PKI) -> None:
    message = await _refusal(stack, (other.ca, pki.edge_cert, pki.edge_key), TOKEN)
    assert "certificate does not verify" in message


@pytest.mark.parametrize("token", ["wrong-token", None])
async def test_wrong_or_missing_token_is_unauthenticated(stack: Stack, pki: PKI, token: str | None) -> None:
    message = await _refusal(stack, (pki.ca, pki.edge_cert, pki.edge_key), token)
    assert "refused our credentials: UNAUTHENTICATED" in message


async def test_health_port_serves_health_only_in_plaintext(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(f"{stack.cfg.host}:{stack.health_port}") as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            await pb_grpc.VerifierStub(channel).Info(pb.InfoRequest(), timeout=5)  # type: ignore[no-untyped-call]
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_edge_process_with_a_wrong_token_exits_2(stack: Stack, pki: PKI, tmp_path: Path) -> None:
    argv = python_module_argv(
        "edge",
        *("--model", "builtin:tiny-draft", "--cloud", stack.edge_upstream, "--port", "0"),
        *("--tls-ca", pki.ca, "--tls-cert", pki.edge_cert, "--tls-key", pki.edge_key),
        *("--threads", "1", "--startup-timeout", "60"),
    )
    env = {**TEST_ENV, "DRAFTLINK_EDGE_CLOUD_TOKEN": "not-the-token"}
    edge = ManagedProcess("edge-bad-token", argv, env, tmp_path).start()
    assert edge.proc is not None
    code = edge.proc.wait(180)
    log = edge.logs()
    assert code == 2, log
    assert "cannot start: the cloud at" in log
    assert "refused our credentials: UNAUTHENTICATED" in log
    assert "Traceback" not in log


def test_image_healthcheck_uses_the_health_port_when_tls_is_on(stack: Stack) -> None:
    """The cloud image's HEALTHCHECK one-liner passes on the health port; the TLS port refuses it."""
    instructions = inv.dockerfile_instructions(inv.DEPLOY / "docker" / "cloud.Dockerfile")
    argv = inv.healthcheck_argv(next(i.args for i in instructions if i.keyword == "HEALTHCHECK"))
    cmd = [sys.executable, *argv[1:]]
    env = {"DRAFTLINK_CLOUD_PORT": str(stack.cloud_port)}
    ok = subprocess.run(
        cmd,
        env={**env, "DRAFTLINK_CLOUD_HEALTH_PORT": str(stack.health_port)},
        capture_output=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode != 0
