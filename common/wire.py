"""gRPC/HTTP2 settings that keep the edge–cloud link near its framing floor (docs/BENCHMARKS.md, Wire)."""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import ConfigError

GrpcArg = tuple[str, int | str]

# Measured on the tiny pair through the link (docs/BENCHMARKS.md, "Wire"): with gRPC's defaults
# each ~100-byte block also carried ~2.3 WINDOW_UPDATE frames and a share of BDP-probe PINGs on
# the uplink. A large static window and no BDP probing remove them: flow control then only
# speaks after half the window (tens of MB) has been consumed. The window must still cover the
# bandwidth-delay product of the fastest link, so it is sized for large dense blocks at 1 Gbit/s
# over 100 ms (12.5 MB in flight); BDP probing exists to grow a small window to that size.
WINDOW_BYTES = 16 << 20
MAX_FRAME_BYTES = (1 << 24) - 1  # the HTTP/2 maximum
LEAN_HTTP2: tuple[GrpcArg, ...] = (
    ("grpc.http2.bdp_probe", 0),  # no PING per burst of received data
    ("grpc.http2.lookahead_bytes", WINDOW_BYTES),  # initial stream window (SETTINGS)
    # BDP probing also raises SETTINGS_MAX_FRAME_SIZE; without it a large dense block would be cut
    # into 16 KiB frames (measured: 7 frames per 107 KB block and 0.83× the tokens/s unshaped)
    ("grpc.http2.max_frame_size", MAX_FRAME_BYTES),  # one DATA frame per message
)


def parse_grpc_args(text: str) -> list[GrpcArg]:
    """'grpc.http2.bdp_probe=1,grpc.keepalive_time_ms=60000' → [(name, int or str), ...]."""
    out: list[GrpcArg] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.startswith("grpc.") or not value:
            raise ConfigError(f"gRPC args must be grpc.<name>=<value>[,...], got {item!r}")
        try:
            out.append((name, int(value)))
        except ValueError:
            out.append((name, value))
    return out


def merge_args(*groups: Sequence[GrpcArg]) -> list[GrpcArg]:
    """Later groups override earlier ones by name (order of first appearance kept)."""
    merged: dict[str, int | str] = {}
    for group in groups:
        for name, value in group:
            merged[name] = value
    return list(merged.items())
