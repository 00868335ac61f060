"""HTTP/2 frame anatomy of the edge–cloud connection: a counting tap relay and its report."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
FRAME_TYPES = {
    0: "DATA",
    1: "HEADERS",
    2: "PRIORITY",
    3: "RST_STREAM",
    4: "SETTINGS",
    5: "PUSH_PROMISE",
    6: "PING",
    7: "GOAWAY",
    8: "WINDOW_UPDATE",
    9: "CONTINUATION",
}


@dataclass
class FrameCounts:
    """Frames seen in one direction of one or more connections: count and bytes (header included)."""

    frames: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    data_sizes: list[int] = field(default_factory=list)  # payload length of every DATA frame
    other: int = 0  # bytes outside frames (the client preface)

    def add(self, kind: str, length: int) -> None:
        self.frames[kind] = self.frames.get(kind, 0) + 1
        self.bytes[kind] = self.bytes.get(kind, 0) + FRAME_HEADER + length
        if kind == "DATA":
            self.data_sizes.append(length)

    @property
    def total(self) -> int:
        return sum(self.bytes.values()) + self.other

    def snapshot(self) -> FrameCounts:
        return FrameCounts(dict(self.frames), dict(self.bytes), list(self.data_sizes), self.other)

    def minus(self, before: FrameCounts) -> FrameCounts:
        """What was added since `before` (a snapshot of the same counter)."""
        kinds = set(self.frames) | set(before.frames)
        return FrameCounts(
            {k: self.frames.get(k, 0) - before.frames.get(k, 0) for k in kinds},
            {k: self.bytes.get(k, 0) - before.bytes.get(k, 0) for k in kinds},
            self.data_sizes[len(before.data_sizes) :],
            self.other - before.other,
        )


class FrameParser:
    """Incremental HTTP/2 frame splitter for one direction of one connection."""

    def __init__(self, counts: FrameCounts, client_side: bool) -> None:
        self.counts = counts
        self._buf = bytearray()
        self._preface = client_side  # the client sends the 24-byte preface before any frame

    def feed(self, data: bytes) -> None:
        self._buf += data
        if self._preface:
            if len(self._buf) < len(PREFACE):
                return
            if bytes(self._buf[: len(PREFACE)]) == PREFACE:
                del self._buf[: len(PREFACE)]
                self.counts.other += len(PREFACE)
            self._preface = False
        while len(self._buf) >= FRAME_HEADER:
            length = int.from_bytes(self._buf[0:3], "big")
            if len(self._buf) < FRAME_HEADER + length:
                return
            kind = FRAME_TYPES.get(self._buf[3], f"type{self._buf[3]}")
            self.counts.add(kind, length)
            del self._buf[: FRAME_HEADER + length]


class TapRelay:
    """A plain TCP relay (own thread and event loop) that counts HTTP/2 frames in each direction.

    Put it between the edge and the link: `edge --cloud <tap>`, tap → link port.
    """

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.uplink = FrameCounts()
        self.downlink = FrameCounts()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-tap", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> TapRelay:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: FrameParser) -> None:
        try:
            while data := await reader.read(65536):
                with self._lock:
                    p.feed(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
        except OSError:
            cw.close()
            return
        for w in (cw, uw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            self._pipe(cr, uw, FrameParser(self.uplink, client_side=True)),
            self._pipe(ur, cw, FrameParser(self.downlink, client_side=False)),
        )

    def snapshot(self) -> tuple[FrameCounts, FrameCounts]:
        with self._lock:
            return self.uplink.snapshot(), self.downlink.snapshot()

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(5)

    def __enter__(self) -> TapRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def per_block(counts: FrameCounts, blocks: int) -> Iterator[tuple[str, float, float]]:
    """(frame type, frames per block, bytes per block), largest byte share first."""
    n = max(blocks, 1)
    for kind in sorted(counts.bytes, key=lambda k: -counts.bytes[k]):
        if counts.frames.get(kind):
            yield kind, counts.frames[kind] / n, counts.bytes[kind] / n


def anatomy(counts: FrameCounts, blocks: int) -> dict[str, Any]:
    """JSON-friendly per-block breakdown of one direction."""
    return {
        "blocks": blocks,
        "total_bytes": counts.total,
        "frames": {
            k: {"per_block": round(f, 3), "bytes_per_block": round(b, 2)}
            for k, f, b in per_block(counts, blocks)
        },
    }
