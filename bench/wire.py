"""HTTP/2 frame anatomy of the edge–cloud connection: a counting tap relay and its report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
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
        """Close the listener and every relayed connection, stop the thread, close the loop."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

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


# ── A/B of channel settings: `python -m bench.wire` ─────────────────────────────────────────────

GRPC_DEFAULTS = "grpc.http2.bdp_probe=1,grpc.http2.lookahead_bytes=65535"  # gRPC's own behaviour


@dataclass(frozen=True)
class Phase:
    """One link setting and the request shape the two arms are compared on."""

    name: str
    rate_bps: float
    delay_ms: float
    method: str
    draft_len: int


PHASES = (
    Phase("sparse, 1 Mbit/s", 1e6, 10.0, "ksqs:k=16,ell=100", 4),
    Phase("dense fp32 L=4, 100 Mbit/s", 1e8, 10.0, "dense:fp32", 4),
    Phase("dense fp32 L=16, 100 Mbit/s", 1e8, 10.0, "dense:fp32", 16),
    Phase("dense fp32 L=16, unshaped", 0.0, 0.0, "dense:fp32", 16),
)


def _arm_stack(args: argparse.Namespace, grpc_args: str, tap: TapRelay, link_port: int) -> Any:
    from launcher.stack import Stack, StackConfig

    cfg = StackConfig(
        models=args.models,
        link=True,
        link_port=link_port,
        uplink_bps=0.0,
        delay_ms=0.0,
        edge_args=("--threads", "1", "--cloud", f"127.0.0.1:{tap.port}", "--grpc-args", grpc_args),
        cloud_args=("--grpc-args", grpc_args),
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        ready_timeout=600.0,
    )
    return Stack(cfg)


def run_ab(args: argparse.Namespace) -> dict[str, Any]:
    """Both arms up at once, requests alternating between them per prompt (paired, interleaved)."""
    import httpx

    from bench.runner import complete, load_prompts
    from bench.stats import paired_ratio
    from launcher.procs import free_port

    arms = {"lean": args.lean_args, "grpc-defaults": GRPC_DEFAULTS}
    phases = [ph for i, ph in enumerate(PHASES) if not args.phases or str(i) in args.phases.split(",")]
    prompts = load_prompts(("bench/prompts/code.jsonl", "bench/prompts/english.jsonl"), args.prompts)
    out: dict[str, Any] = {"arms": arms, "phases": []}
    ports = {a: free_port() for a in arms}
    taps = {a: TapRelay(("127.0.0.1", ports[a])).start() for a in arms}
    stacks = {a: _arm_stack(args, g, taps[a], ports[a]).start() for a, g in arms.items()}
    try:
        with httpx.Client() as http:
            for ph in phases:
                for st in stacks.values():
                    st.restart_link(ph.rate_bps, ph.delay_ms)
                out["phases"].append(
                    _phase(http, ph, prompts, stacks, taps, args.max_tokens, complete, paired_ratio)
                )
                print(json.dumps(out["phases"][-1]["summary"]), flush=True)
    finally:
        for st in stacks.values():
            st.stop()
        for tap in taps.values():
            tap.stop()
    return out


def _phase(
    http: Any, ph: Phase, prompts: Any, stacks: Any, taps: Any, max_tokens: int, complete: Any, paired: Any
) -> dict[str, Any]:
    per: dict[str, dict[int, tuple[float, float]]] = {a: {} for a in stacks}
    anat: dict[str, FrameCounts] = {a: FrameCounts() for a in stacks}
    totals = {a: {"wire": 0, "payload": 0, "open": 0, "blocks": 0} for a in stacks}
    for p in prompts:
        order = list(stacks.items())
        for arm, st in order if p.index % 2 == 0 else order[::-1]:  # alternate which arm goes first
            body = {
                "prompt": p.text,
                "max_tokens": max_tokens,
                "temperature": 0.4,
                "seed": p.index,
                "ignore_eos": True,
                "draftlink": {"codec": ph.method, "draft_len": ph.draft_len},
            }
            up0, _ = taps[arm].snapshot()
            r = complete(http, st.edge_url, body, st.link_metrics_url, 600.0)
            time.sleep(0.2)  # the last frames of the stream (trailers' acknowledgements) pass the tap
            up1, _ = taps[arm].snapshot()
            if r.error:
                continue
            d = up1.minus(up0)
            for k, v in d.bytes.items():
                anat[arm].bytes[k] = anat[arm].bytes.get(k, 0) + v
                anat[arm].frames[k] = anat[arm].frames.get(k, 0) + d.frames[k]
            per[arm][p.index] = (float(r.completion_tokens), r.seconds)
            t = totals[arm]
            t["wire"] += r.wire_up
            t["payload"] += r.spec.get("payload_bytes") or 0
            t["open"] += r.spec.get("open_bytes") or 0
            t["blocks"] += r.spec.get("blocks_sent") or 0
    ratio = paired(per["lean"], per["grpc-defaults"])
    summary = {"phase": ph.name, "lean_over_defaults_tokens_per_s": ratio.as_list(), "n": len(per["lean"])}
    for arm, t in totals.items():
        summary[f"{arm}_overhead_per_block"] = (t["wire"] - t["payload"] - t["open"]) / max(t["blocks"], 1)
        summary[f"{arm}_tokens_per_s"] = sum(v[0] for v in per[arm].values()) / max(
            sum(v[1] for v in per[arm].values()), 1e-9
        )
    return {"summary": summary, "anatomy": {a: anatomy(anat[a], totals[a]["blocks"]) for a in stacks}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.wire", description="Frame anatomy and A/B of gRPC settings."
    )
    p.add_argument("--models", default="tiny", choices=("tiny", "qwen"))
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default="docs/bench/wire/results.json")
    p.add_argument("--lean-args", default="", help="gRPC args over the built-in lean ones for the first arm")
    p.add_argument("--phases", default="", help="comma-separated phase indexes to run (default: all)")
    args = p.parse_args(argv)
    result = run_ab(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
