"""`python -m link` as a process: resolved config logged, /metrics up, relays, SIGTERM exits 0."""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from launcher.procs import ManagedProcess, free_port, python_module_argv
from link.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def _echo_once(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def test_bad_config_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--uplink-bps", "-5"]) == 2
    assert "uplink_bps" in capsys.readouterr().err


def test_process_relays_serves_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        upstream = listener.getsockname()[1]
        echo = threading.Thread(target=_echo_once, args=(listener,), daemon=True)
        echo.start()
        listen, metrics = free_port(), free_port()
        argv = python_module_argv(
            "link",
            *("--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{upstream}"),
            *("--metrics-port", str(metrics), "--delay-ms", "1"),
        )
        env = {"PYTHONPATH": str(REPO), "DRAFTLINK_LINK_UPLINK_BPS": "4e6"}
        proc = ManagedProcess("link", argv, env=env, log_dir=tmp_path)
        url = f"http://127.0.0.1:{metrics}/metrics"
        with proc:
            proc.wait_ready(lambda: urllib.request.urlopen(url, timeout=1).status == 200, timeout=30)
            with socket.create_connection(("127.0.0.1", listen), timeout=10) as conn:
                conn.sendall(b"hello link")
                assert conn.recv(100) == b"hello link"
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            assert 'draftlink_link_rate_bps{direction="uplink"} 4e+06' in text
            assert 'draftlink_link_bytes_total{direction="uplink"} 10.0' in text
            assert proc.stop() == 0, proc.logs()
        echo.join(timeout=5)
    logs = proc.logs()
    assert '"uplink_bps": 4000000.0' in logs  # the resolved config is logged once at start
    assert "stopped" in logs
