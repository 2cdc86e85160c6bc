"""Running ``omama serve`` in a child process for the tests (Ray starts there, never in the
pytest process): :class:`Service` and :func:`free_port`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A running ``omama serve`` process and what it printed."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "YOLO_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from omama_train.cli import main; main()", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True,  # its Ray processes are cleaned up with its group
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not any("Ctrl-C to stop" in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"omama serve did not start:\n{self.output()[-3000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
