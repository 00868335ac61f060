"""The relay on loopback: measured rate and delay, stream integrity, counters, /metrics, gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from launcher.procs import free_port
from link.config import LinkConfig
from link.metrics import LinkMetrics
from link.relay import LinkRelay

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def running_relay(upstream_port: int, **kw: Any) -> AsyncIterator[LinkRelay]:
    cfg = LinkConfig(listen="127.0.0.1:0", upstream=f"127.0.0.1:{upstream_port}", metrics_port=0, **kw)
    cfg.validate()
    relay = LinkRelay(cfg, LinkMetrics())
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close(grace=2.0)


def sample(relay: LinkRelay, name: str, **labels: str) -> float:
    value = relay.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


class Sink:
    """Reads to EOF, timestamping the first and last chunk (the receiver's view of the rate)."""

    def __init__(self) -> None:
        self.total = 0
        self.first_len = 0
        self.first_t = self.last_t = 0.0
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while data := await reader.read(65536):
            if not self.total:
                self.first_t, self.first_len = loop.time(), len(data)
            self.total += len(data)
            self.last_t = loop.time()
        writer.close()
        self.done.set()


async def test_throughput_matches_configured_rate() -> None:
    sink = Sink()
    async with tcp_server(sink.handle) as port, running_relay(port, uplink_bps=2e6) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(os.urandom(300_000))  # 1.2 s at 2 Mbit/s
        writer.write_eof()
        await asyncio.wait_for(sink.done.wait(), 15)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the sink's close came back through
        writer.close()
        assert sample(relay, "draftlink_link_rate_bps", direction="uplink") == 2e6
    measured = (sink.total - sink.first_len) * 8 / (sink.last_t - sink.first_t)
    print(f"relay throughput {measured / 1e6:.3f} Mbit/s at 2.000 configured")
    assert measured == pytest.approx(2e6, rel=0.10)
    assert sink.total == 300_000
    assert sample(relay, "draftlink_link_bytes_total", direction="uplink") == 300_000
    assert sample(relay, "draftlink_link_bytes_total", direction="downlink") == 0
    assert sample(relay, "draftlink_link_connections") == 0


async def test_markov_schedule_drives_the_rate() -> None:
    # Forced alternation (p=1) every 0.25 s between 4 and 1 Mbit/s: 2.5 Mbit/s on average, and
    # 312.5 kB is exactly two good+bad cycles.
    sink = Sink()
    spec = "markov:good=4e6,bad=1e6,p_gb=1,p_bg=1,step=0.25"
    async with tcp_server(sink.handle) as port, running_relay(port, schedule=spec) as relay:
        _reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(os.urandom(312_500))
        writer.write_eof()
        await asyncio.wait_for(sink.done.wait(), 15)
        writer.close()
    measured = (sink.total - sink.first_len) * 8 / (sink.last_t - sink.first_t)
    print(f"markov relay throughput {measured / 1e6:.3f} Mbit/s, 2.500 expected")
    assert measured == pytest.approx(2.5e6, rel=0.10)
    assert sample(relay, "draftlink_link_rate_bps", direction="uplink") in (4e6, 1e6)
    assert sample(relay, "draftlink_link_rate_bps", direction="downlink") == 0  # unlimited


async def test_delay_adds_one_way_latency_to_each_direction() -> None:
    async with tcp_server(echo) as port, running_relay(port, delay_ms=25.0) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        loop = asyncio.get_running_loop()
        rtts = []
        for k in range(8):
            start = loop.time()
            writer.write(bytes([k]) * 16)
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(16), 5) == bytes([k]) * 16
            rtts.append(loop.time() - start)
        assert sample(relay, "draftlink_link_connections") == 1
        writer.close()
        await writer.wait_closed()
    print(f"ping-pong RTTs through a 25 ms link: {[round(r * 1e3, 1) for r in rtts]} ms")
    assert min(rtts) >= 0.050 - 0.002  # timers may round to the millisecond
    assert statistics.median(rtts) <= 0.050 + 0.030  # generous: two busy shared cores
    assert sample(relay, "draftlink_link_bytes_total", direction="uplink") == 8 * 16
    assert sample(relay, "draftlink_link_bytes_total", direction="downlink") == 8 * 16
    assert sample(relay, "draftlink_link_queue_delay_seconds_count", direction="uplink") == 8
    assert sample(relay, "draftlink_link_connections") == 0


async def test_jitter_never_corrupts_or_reorders_the_stream() -> None:
    payload = os.urandom(256 * 1024)
    async with (
        tcp_server(echo) as port,
        running_relay(port, uplink_bps=2e7, delay_ms=2.0, jitter_ms=10.0, seed=1) as relay,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)

        async def send() -> None:
            for i in range(0, len(payload), 3000):  # many small writes -> many jittered chunks
                writer.write(payload[i : i + 3000])
                await writer.drain()
            writer.write_eof()

        # Read while writing: echo back-pressure would otherwise deadlock both sides.
        _, echoed = await asyncio.wait_for(asyncio.gather(send(), reader.read()), 20)
        writer.close()
    assert echoed == payload


async def test_metrics_endpoint_serves_the_counters() -> None:
    async with tcp_server(echo) as port, running_relay(port, downlink_bps=1e6) as relay:
        metrics_port = relay.metrics.serve("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"x" * 1000)
            assert await asyncio.wait_for(reader.readexactly(1000), 5) == b"x" * 1000
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            text = (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())).decode()
            writer.close()
        finally:
            relay.metrics.close()
    assert 'draftlink_link_bytes_total{direction="uplink"} 1000.0' in text
    assert 'draftlink_link_bytes_total{direction="downlink"} 1000.0' in text
    assert 'draftlink_link_rate_bps{direction="downlink"} 1e+06' in text
    assert 'draftlink_link_rate_bps{direction="uplink"} 0.0' in text
    assert "draftlink_link_connections 1.0" in text
    assert "draftlink_link_queue_delay_seconds_bucket" in text


async def test_unreachable_upstream_closes_the_client() -> None:
    async with running_relay(free_port()) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()
    assert sample(relay, "draftlink_link_connections") == 0


async def test_close_cancels_open_connections() -> None:
    async with tcp_server(echo) as port, running_relay(port) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        await relay.close(grace=0.0)  # the client never hangs up: close must not wait for it
        assert relay.open_connections == 0
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_reply_after_half_close_gets_through() -> None:
    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # to EOF: the relay forwarded the client's half-close
        writer.write(b"got %d" % len(request))
        await writer.drain()
        writer.close()

    async with tcp_server(reply_after_eof) as port, running_relay(port, delay_ms=5.0) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"q" * 5000)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"got 5000"
        writer.close()


async def test_half_open_connection_is_closed_once_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("link.relay.HALF_CLOSE_IDLE_S", 0.2)
    release = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        await release.wait()  # keeps its side open and silent after the client's EOF
        writer.close()

    async with tcp_server(never_answers) as port, running_relay(port) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"bye")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the relay, not the server
        writer.close()
        release.set()
    assert sample(relay, "draftlink_link_connections") == 0


async def test_grpc_health_check_through_a_shaped_link() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        link = {"uplink_bps": 1e6, "downlink_bps": 1e6, "delay_ms": 5.0, "jitter_ms": 2.0}
        async with running_relay(port, **link) as relay:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for _ in range(3):
                    request = health_pb2.HealthCheckRequest(service="")
                    reply = await stub.Check(request, timeout=10)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert sample(relay, "draftlink_link_bytes_total", direction="uplink") > 0
            assert sample(relay, "draftlink_link_bytes_total", direction="downlink") > 0
    finally:
        await server.stop(None)
