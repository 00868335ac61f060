"""Unusable TLS settings stop cloud and edge at start-up: exit 2 and one line naming the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.certs import PKI


def _run(module: str, *args: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", module, "--port", "0", *args], capture_output=True, text=True, timeout=120
    )
    return out.returncode, out.stderr + out.stdout


def _one_line_error(text: str, *needles: str) -> None:
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], text


def test_cloud_with_a_missing_certificate(tmp_path: Path, pki: PKI) -> None:
    missing = str(tmp_path / "missing.crt")
    code, text = _run("cloud", "--tls-cert", missing, "--tls-key", pki.cloud_key)
    assert code == 2
    _one_line_error(text, "draftlink-cloud: config error:", f"tls_cert {missing}: no such file")


def test_cloud_with_the_key_of_another_certificate(pki: PKI, other: PKI) -> None:
    code, text = _run("cloud", "--tls-cert", pki.cloud_cert, "--tls-key", other.cloud_key)
    assert code == 2
    _one_line_error(text, "does not match the certificate")


def test_cloud_mutual_tls_without_a_certificate() -> None:
    code, text = _run("cloud", "--tls-client-ca", "/some/ca.crt")
    assert code == 2
    _one_line_error(text, "tls_client_ca (mutual TLS) needs tls_cert and tls_key")


def test_edge_with_a_missing_ca(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.crt")
    code, text = _run("edge", "--tls-ca", missing)
    assert code == 2
    _one_line_error(text, "draftlink-edge: config error:", f"tls_ca {missing}: no such file")


def test_edge_with_a_key_that_is_not_pem(tmp_path: Path, pki: PKI) -> None:
    key = tmp_path / "edge.key"
    key.write_text("not a key\n")
    code, text = _run("edge", "--tls-ca", pki.ca, "--tls-cert", pki.edge_cert, "--tls-key", str(key))
    assert code == 2
    _one_line_error(text, f"tls_key {key}: not a PEM file")
