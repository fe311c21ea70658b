"""Start a real radixgen server subprocess for HTTP tests.

``start_server(extra_args)`` launches ``python -m radixgen.runtime.launch_server --model <stories260K>`` on
127.0.0.1 and a free port, waits until ``GET /health`` answers 200 (the model is loaded) and returns a
``ServerHandle``. The ``server`` fixture is a module-scoped server with metrics enabled. Server output goes to a
log file (``handle.logs()``), so a full pipe never blocks it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from shared_paths import STORIES

# small pool and one intra-op thread: the test model is tiny and the box has 2 cores
DEFAULT_ARGS = ["--max-total-tokens", "8192", "--max-running-requests", "64", "--num-threads", "1"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerHandle:
    """A running server subprocess.

    Attributes:
        proc: the ``python -m radixgen.runtime.launch_server`` process (the HTTP process; its children are the
            scheduler and detokenizer processes).
        base_url: ``http://127.0.0.1:<port>``.
        log_path: file with the server's stdout and stderr.
        api_key: the key the server was started with, if any (sent by ``headers()``).
    """

    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    api_key: str | None = None
    _log_file: object = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        """Authorization header for the server's api key ({} without one)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs: object) -> httpx.Client:
        """A synchronous httpx client bound to the server (60 s timeout, api key header set)."""
        return httpx.Client(base_url=self.base_url, headers=self.headers(), timeout=60.0, **kwargs)  # type: ignore[arg-type]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/health`` until 200. Raises RuntimeError (with the server log) if the process exits or the
        timeout (seconds) passes."""
        if not wait_healthy(self.proc, self.base_url, timeout, self.log_path):
            self.stop()
            raise RuntimeError(f"server not ready after {timeout} s:\n{self.logs()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the server and wait (SIGKILL after ``timeout`` seconds); returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
        return int(self.proc.returncode)


def wait_healthy(proc: subprocess.Popen[bytes], base_url: str, timeout: float, log: Path | None = None) -> bool:
    """Poll ``<base_url>/health`` until it answers 200 (True) or ``timeout`` seconds pass (False).

    Raises:
        RuntimeError: ``proc`` exited first (the message holds the text of ``log``, its output file, if given).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log is not None else ""
            raise RuntimeError(f"process exited with {proc.returncode} before ready:\n{text}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def start_server(
    extra_args: list[str] | None = None,
    *,
    wait: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> ServerHandle:
    """Launch a stories260K server on 127.0.0.1 and a free port.

    Args:
        extra_args: more CLI flags (e.g. ``["--enable-metrics"]``, ``["--api-key", "k"]``).
        wait: wait until ``/health`` answers 200.
        env: extra environment variables for the server.
        timeout: seconds to wait for readiness.

    Raises:
        RuntimeError: the server exited or did not become ready in time (the message holds its log).
    """
    extra = list(extra_args or [])
    port = free_port()
    cmd = [sys.executable, "-P", "-m", "radixgen.runtime.launch_server", "--model", str(STORIES), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *DEFAULT_ARGS, *extra]
    api_key = extra[extra.index("--api-key") + 1] if "--api-key" in extra else None
    log_fd, log_name = tempfile.mkstemp(prefix="radixgen-server-", suffix=".log")
    log_file = os.fdopen(log_fd, "wb")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # run outside the repository root so that its top-level folders (e.g. kernels/) do not shadow packages
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=tempfile.gettempdir())
    handle = ServerHandle(proc, f"http://127.0.0.1:{port}", Path(log_name), api_key, log_file)
    if wait:
        handle.wait_ready(timeout)
    return handle


def sse_events(resp: httpx.Response) -> list[Any]:
    """The decoded ``data:`` payloads of an SSE response (``"[DONE]"`` kept as the string)."""
    events: list[Any] = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    """A module-scoped stories260K server with ``--enable-metrics``."""
    handle = start_server(["--enable-metrics"])
    yield handle
    handle.stop()
