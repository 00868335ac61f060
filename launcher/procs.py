"""Start, watch and stop draftlink processes (used by `make run`, integration tests and bench)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType


class ProcessFailedError(RuntimeError):
    """A managed process exited early or never became ready; the message holds its log tail."""


class ManagedProcess:
    """One child process with its combined stdout/stderr captured to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="draftlink-"))
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Spawn the process in its own session so signals reach only it."""
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def logs(self, tail_lines: int = 200) -> str:
        """The last lines of the process's log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail_lines:])

    def wait_ready(self, check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> None:
        """Poll `check` until it returns True; raise ProcessFailedError with logs if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise ProcessFailedError(f"{self.name} exited with {self.returncode}:\n{self.logs()}")
            try:
                if check():
                    return
            except Exception:
                pass
            time.sleep(interval)
        raise ProcessFailedError(f"{self.name} not ready after {timeout:.0f}s:\n{self.logs()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for a graceful exit, then SIGKILL; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on host (tests and `make run`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
