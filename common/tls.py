"""TLS material for the gRPC hop: PEM files read and checked once at start-up (one-line ConfigErrors)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError


@dataclass(frozen=True)
class ServerTLS:
    """The cloud's certificate chain and key, and the CA its clients' certificates must chain to."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None  # set: mutual TLS (a client certificate is required and verified)


@dataclass(frozen=True)
class ClientTLS:
    """The CA the edge trusts for the cloud's certificate, and its own certificate (mutual TLS)."""

    ca: bytes
    cert_chain: bytes | None = None
    key: bytes | None = None
    paths: tuple[str, str | None, str | None] = field(default=("", None, None), compare=False)


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file, or a ConfigError naming the file and what is wrong with it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}: is a directory, not a PEM file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path}: not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path}: not a PEM file (no -----BEGIN line)")
    return data


def _no_password() -> bytes:
    # gRPC cannot use an encrypted key; without this OpenSSL would prompt on the terminal
    raise ConfigError("the private key is encrypted (gRPC needs an unencrypted PEM key)")


def check_key_pair(cert: str, key: str, what: str) -> None:
    """The certificate and key parse and belong together (ssl checks the key against the cert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"{what}: the key {key} does not match the certificate {cert}") from None
        raise ConfigError(f"{what}: cannot load certificate {cert} with key {key}: {reason}") from None
    except ConfigError as exc:
        raise ConfigError(f"{what} key {key}: {exc}") from None


def check_ca(path: str, what: str) -> None:
    """The CA bundle parses and holds at least one certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"{what} {path}: not a CA certificate bundle: {exc.reason or exc}") from None
    if not ctx.get_ca_certs():
        raise ConfigError(f"{what} {path}: holds no certificate")


def load_server_tls(cert: str | None, key: str | None, client_ca: str | None) -> ServerTLS | None:
    """Server TLS from the cloud's three file options (None: plaintext); ConfigError when unusable."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS first)")
        return None
    if cert is None or key is None:
        raise ConfigError("tls_cert and tls_key go together")
    chain, key_pem = read_pem(cert, "tls_cert"), read_pem(key, "tls_key")
    check_key_pair(cert, key, "tls_cert/tls_key")
    ca_pem = None
    if client_ca is not None:
        ca_pem = read_pem(client_ca, "tls_client_ca")
        check_ca(client_ca, "tls_client_ca")
    return ServerTLS(chain, key_pem, ca_pem)


def load_client_tls(ca: str | None, cert: str | None, key: str | None) -> ClientTLS | None:
    """Client TLS from the edge's three file options (None: plaintext); ConfigError when unusable."""
    if ca is None:
        if cert is not None or key is not None:
            raise ConfigError("tls_cert/tls_key need tls_ca (the CA that signed the cloud's certificate)")
        return None
    ca_pem = read_pem(ca, "tls_ca")
    check_ca(ca, "tls_ca")
    if cert is None and key is None:
        return ClientTLS(ca_pem, paths=(ca, None, None))
    if cert is None or key is None:
        raise ConfigError("tls_cert and tls_key go together")
    chain, key_pem = read_pem(cert, "tls_cert"), read_pem(key, "tls_key")
    check_key_pair(cert, key, "tls_cert/tls_key")
    return ClientTLS(ca_pem, chain, key_pem, paths=(ca, cert, key))


def probe(
    host: str, port: int, tls: ClientTLS | None, server_name: str | None, timeout: float = 3.0
) -> str | None:
    """Why a server hangs up on our gRPC connection, when TLS is the reason; None otherwise (blocking).

    gRPC reports a refused client certificate, or TLS spoken to a plaintext client, only as
    "Socket closed". A plain handshake plus one read tells: an HTTP/2 server speaks first
    (SETTINGS), while a server that refused our certificate closes right after the handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2"])  # gRPC servers refuse a session without it
    if tls is None:  # does the server speak TLS at all? (nothing is verified or sent)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ca, cert, key = tls.paths
        ctx.load_verify_locations(cafile=ca)
        if cert and key:
            ctx.load_cert_chain(cert, key)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name or host) as conn,
        ):
            first = conn.recv(1)
    except ssl.SSLCertVerificationError as exc:
        return f"the cloud's certificate does not verify: {exc.verify_message}"
    except (ssl.SSLError, OSError):
        return None  # no TLS there, or unreachable: not something TLS settings explain
    if tls is None:
        return "the cloud speaks TLS on this port: set tls_ca (and tls_cert/tls_key for mutual TLS)"
    if first:
        return None  # the session was accepted: the problem is elsewhere
    closed = "the cloud closed the session right after the TLS handshake"
    if tls.paths[1] is None:
        return f"{closed}: it requires a client certificate (set tls_cert and tls_key)"
    return f"{closed}: it refused our client certificate (it must chain to the cloud's tls_client_ca)"
