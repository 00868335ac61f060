"""TLS material checks (common.tls) and the cloud token check (cloud.auth): one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cloud.auth import token_ok
from common.errors import ConfigError
from common.tls import load_client_tls, load_server_tls, read_pem
from tests.support.certs import PKI


def test_valid_material_loads(pki: PKI) -> None:
    server = load_server_tls(pki.cloud_cert, pki.cloud_key, pki.ca)
    assert server is not None
    assert server.client_ca is not None
    assert b"BEGIN CERTIFICATE" in server.cert_chain
    client = load_client_tls(pki.ca, pki.edge_cert, pki.edge_key)
    assert client is not None
    assert client.paths == (pki.ca, pki.edge_cert, pki.edge_key)
    assert load_server_tls(None, None, None) is None
    assert load_client_tls(None, None, None) is None


def test_missing_unreadable_and_non_pem_files(tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(ConfigError, match=r"^tls_cert /nope/cloud.crt: no such file$"):
        load_server_tls("/nope/cloud.crt", pki.cloud_key, None)
    with pytest.raises(ConfigError, match="is a directory"):
        read_pem(str(tmp_path), "tls_ca")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM file"):
        load_client_tls(str(junk), None, None)


def test_unreadable_file(tmp_path: Path, pki: PKI) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    locked = tmp_path / "locked.key"
    locked.write_bytes(Path(pki.cloud_key).read_bytes())
    locked.chmod(0)
    with pytest.raises(ConfigError, match="permission denied"):
        read_pem(str(locked), "tls_key")


def test_key_of_another_certificate_is_refused(pki: PKI, other: PKI) -> None:
    with pytest.raises(ConfigError, match="does not match the certificate"):
        load_server_tls(pki.cloud_cert, other.cloud_key, None)
    with pytest.raises(ConfigError, match="does not match the certificate"):
        load_client_tls(pki.ca, pki.edge_cert, other.edge_key)


def test_encrypted_key_is_refused_without_a_prompt(tmp_path: Path, pki: PKI) -> None:
    key = tmp_path / "enc.key"
    subprocess.run(
        ["openssl", "pkey", "-in", pki.cloud_key, "-aes256", "-passout", "pass:secret", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(ConfigError, match="encrypted"):
        load_server_tls(pki.cloud_cert, str(key), None)


def test_a_certificate_is_not_a_ca_bundle_when_it_holds_a_key(tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(ConfigError, match="tls_client_ca"):
        load_server_tls(pki.cloud_cert, pki.cloud_key, pki.cloud_key)


def test_option_combinations() -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_server_tls("a.crt", None, None)
    with pytest.raises(ConfigError, match="mutual TLS is TLS first"):
        load_server_tls(None, None, "ca.crt")
    with pytest.raises(ConfigError, match="need tls_ca"):
        load_client_tls(None, "edge.crt", "edge.key")


@pytest.mark.parametrize(
    ("metadata", "ok"),
    [
        ((("authorization", "Bearer s3cret"),), True),
        ((("Authorization", "bearer s3cret "),), True),
        ((("x-other", "1"), ("authorization", "Bearer s3cret")), True),
        ((("authorization", "Bearer s3cret2"),), False),
        ((("authorization", "Basic s3cret"),), False),
        ((("authorization", "s3cret"),), False),
        ((("authorization-bin", b"Bearer s3cret"),), False),
        ((), False),
        (None, False),
    ],
)
def test_token_check(metadata: tuple[tuple[str, object], ...] | None, ok: bool) -> None:
    assert token_ok(metadata, "s3cret") is ok
