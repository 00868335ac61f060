"""Asyncio TCP relay that applies the shaping model to each direction (a byte relay, not a proxy).

Timing resolution is the event loop's timer resolution (about 1 ms on uvloop, whose clock is
cached per iteration), so a chunk may leave up to ~1 ms early or a scheduling hiccup late. Rates
stay exact over the long run because every departure comes from the model's absolute timeline,
never from accumulated sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import socket
from dataclasses import dataclass
from typing import Any

from link.config import LinkConfig, build_shapers
from link.metrics import LinkMetrics
from link.shaping import Shaper

log = logging.getLogger("draftlink.link")

READ_SIZE = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
# After one direction ends cleanly (EOF forwarded as a half-close) the other may still carry a
# reply; once it has been idle this long both sides are closed, so half-open peers cannot leak
# connections while a long reply after a half-close still gets through.
HALF_CLOSE_IDLE_S = 10.0
# Queue budget: twice the bandwidth-delay product so a long delay does not cap throughput,
# bounded so a slow link turns into TCP back-pressure instead of unbounded memory.
_QUEUE_MIN_BYTES = 64 * 1024
_QUEUE_MAX_BYTES = 16 * 1024 * 1024
_UNLIMITED_SIZING_BPS = 1e9  # an unlimited direction is sized as if it were 1 Gbit/s


@dataclass(frozen=True)
class _Chunk:
    arrival: float
    depart: float
    data: bytes


class _Activity:
    """Loop time of the last delivered chunk on a connection (either direction)."""

    __slots__ = ("last",)

    def __init__(self, now: float) -> None:
        self.last = now


class _ByteQueue:
    """FIFO of chunks bounded by total bytes (one oversize chunk is admitted when empty)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: collections.deque[_Chunk | None] = collections.deque()
        self._bytes = 0
        self._cond = asyncio.Condition()

    async def put(self, item: _Chunk | None) -> None:
        n = 0 if item is None else len(item.data)
        async with self._cond:
            await self._cond.wait_for(lambda: self._bytes == 0 or self._bytes + n <= self.limit)
            self._items.append(item)
            self._bytes += n
            self._cond.notify_all()

    async def get(self) -> _Chunk | None:
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._items))
            item = self._items.popleft()
            self._bytes -= 0 if item is None else len(item.data)
            self._cond.notify_all()
            return item


def queue_limit(shaper: Shaper, burst_bytes: int) -> int:
    """Per-connection, per-direction queue budget in bytes for this shaper."""
    peak = shaper.schedule.peak()
    rate = _UNLIMITED_SIZING_BPS if math.isinf(peak) else peak
    bdp = rate / 8.0 * (shaper.delay + shaper.jitter + 0.05)
    return int(min(_QUEUE_MAX_BYTES, max(_QUEUE_MIN_BYTES, 2 * bdp + burst_bytes)))


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    # The shaper already decides when bytes leave; Nagle would add up to 40 ms on small chunks.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LinkRelay:
    """Accepts connections and relays each to the upstream through the per-direction shapers."""

    def __init__(self, cfg: LinkConfig, metrics: LinkMetrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics if metrics is not None else LinkMetrics()
        self.shapers: dict[str, Shaper] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound listen port (useful with --listen host:0)."""
        assert self._server is not None, "relay not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections being relayed right now."""
        return len(self._conns)

    async def start(self) -> None:
        """Build the shapers on the loop clock and start listening."""
        loop = asyncio.get_running_loop()
        self.shapers = build_shapers(self.cfg, origin=loop.time())
        host, port = self.cfg.listen_addr
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        self._ticker = asyncio.create_task(self._publish_rates())
        log.info(
            "link listening on %s:%d -> %s; uplink %s, downlink %s",
            host,
            self.port,
            self.cfg.upstream,
            self.shapers["uplink"].schedule.describe(),
            self.shapers["downlink"].schedule.describe(),
        )

    async def close(self, grace: float = 1.0) -> None:
        """Stop accepting, give open connections `grace` seconds to end, then cancel them."""
        if self._server is not None:
            self._server.close()
        if self._conns:
            await asyncio.wait(set(self._conns), timeout=grace)
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        for task in list(self._conns):  # accepted while we were cancelling: one more sweep
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _publish_rates(self) -> None:
        """Keep the rate gauges current: set them now and again at each schedule change."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            wake = math.inf
            for direction, shaper in self.shapers.items():
                self.metrics.set_rate(direction, shaper.rate_at(now))
                wake = min(wake, shaper.origin + shaper.schedule.next_change(now - shaper.origin))
            if math.isinf(wake):
                return
            await asyncio.sleep(max(0.0, wake - loop.time()) + 1e-3)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """One accepted connection: dial the upstream, relay both ways, close both."""
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.metrics.connections.inc()
        peer = client_w.get_extra_info("peername")
        server_w: asyncio.StreamWriter | None = None
        try:
            try:
                server_r, upstream_w = await asyncio.wait_for(
                    asyncio.open_connection(*self.cfg.upstream_addr), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                log.warning("connection from %s: upstream %s unreachable: %s", peer, self.cfg.upstream, exc)
                return
            server_w = upstream_w
            _set_nodelay(client_w)
            _set_nodelay(upstream_w)
            log.debug("connection from %s relayed to %s", peer, self.cfg.upstream)
            await self._relay(client_r, client_w, server_r, upstream_w)
        finally:
            for w in (client_w, server_w):
                if w is not None:
                    w.close()
            for w in (client_w, server_w):
                if w is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.wait_closed(), 1.0)
            self.metrics.connections.dec()
            self._conns.discard(task)
            log.debug("connection from %s closed", peer)

    async def _relay(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        """Run both directions; a clean EOF waits for the other side while it is active."""
        loop = asyncio.get_running_loop()
        activity = _Activity(loop.time())
        up = asyncio.create_task(self._pump("uplink", client_r, server_w, activity))
        down = asyncio.create_task(self._pump("downlink", server_r, client_w, activity))
        try:
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            clean = all(not t.cancelled() and t.exception() is None for t in done)
            activity.last = loop.time()  # the idle clock starts at the half-close, not before
            while pending and clean:
                idle_left = activity.last + HALF_CLOSE_IDLE_S - loop.time()
                if idle_left <= 0:
                    break
                more, pending = await asyncio.wait(pending, timeout=idle_left)
                done |= more
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.debug("relay direction ended with %r", t.exception())
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _pump(
        self, direction: str, src: asyncio.StreamReader, dst: asyncio.StreamWriter, activity: _Activity
    ) -> None:
        """One direction: ingest (shape and enqueue) and deliver (wait, write) run concurrently."""
        shaper = self.shapers[direction]
        queue = _ByteQueue(queue_limit(shaper, self.cfg.burst_bytes))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._ingest(shaper, src, queue))
            tg.create_task(self._deliver(direction, queue, dst, activity))

    @staticmethod
    async def _ingest(shaper: Shaper, src: asyncio.StreamReader, queue: _ByteQueue) -> None:
        """Read, split into chunks of a few ms of serialisation, stamp departures, enqueue."""
        loop = asyncio.get_running_loop()
        # Never hold more than the queue budget in hand either, so the budget really bounds memory.
        read_size = min(READ_SIZE, queue.limit)
        while data := await src.read(read_size):
            offset = 0
            while offset < len(data):
                now = loop.time()
                n = min(len(data) - offset, shaper.chunk_limit(now))
                piece = data[offset : offset + n]
                offset += n
                # put() blocks while the queue is full: we stop reading and TCP pushes back.
                await queue.put(_Chunk(now, shaper.departure(now, n), piece))
        await queue.put(None)

    async def _deliver(
        self, direction: str, queue: _ByteQueue, dst: asyncio.StreamWriter, activity: _Activity
    ) -> None:
        """Write each chunk at its departure time; forward EOF as a half-close."""
        loop = asyncio.get_running_loop()
        counter = self.metrics.bytes_total.labels(direction=direction)
        delay_hist = self.metrics.queue_delay.labels(direction=direction)
        while (chunk := await queue.get()) is not None:
            wait = chunk.depart - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            dst.write(chunk.data)
            activity.last = loop.time()
            counter.inc(len(chunk.data))
            delay_hist.observe(chunk.depart - chunk.arrival)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
