"""Throwaway PKIs for TLS tests, made by deploy/tools/make-certs.sh (the openssl recipe deploy/ documents)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "tools" / "make-certs.sh"


@dataclass(frozen=True)
class PKI:
    """One CA with a cloud (server) and an edge (client) certificate, as file paths."""

    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    @property
    def cloud_cert(self) -> str:
        return self.path("cloud.crt")

    @property
    def cloud_key(self) -> str:
        return self.path("cloud.key")

    @property
    def edge_cert(self) -> str:
        return self.path("edge.crt")

    @property
    def edge_key(self) -> str:
        return self.path("edge.key")


def make_pki(directory: Path, sans: str = "DNS:localhost,IP:127.0.0.1", days: int = 2) -> PKI:
    """Run the deploy script into `directory` (openssl must be installed)."""
    subprocess.run(["sh", str(SCRIPT), str(directory), sans, str(days)], check=True, capture_output=True)
    return PKI(directory)
