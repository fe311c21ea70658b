"""``Runtime``: start a local radixgen server subprocess and use it as a ``RuntimeEndpoint`` (SGLang's
``sgl.Runtime``).

The server runs as ``python -m radixgen.runtime.launch_server`` with the same interpreter, from the temporary
directory (started from the repository root, its top-level folders would shadow installed packages), with its
output in a log file. ``close()`` (also at interpreter exit and on leaving a ``with`` block) stops it.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import MISSING, fields
from typing import Any

import httpx

from radixgen.backends.runtime_endpoint import RuntimeEndpoint


def _free_port(host: str) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_cli_args(server_args: Any, explicit: set[str]) -> list[str]:
    """The ``launch_server`` flags that reproduce ``server_args`` (a ``ServerArgs``) for the ``explicit`` fields.

    Follows ``radixgen.runtime.server_args.add_cli_args``: every field has a ``--field-name`` flag (``--model`` /
    ``--tokenizer`` also accept ``--model-path`` / ``--tokenizer-path``); bools are ``store_true`` flags (so a False
    bool that defaults to False is omitted), ``None`` means "default" and is omitted.

    Raises:
        ValueError: a bool field set to False whose default is True (no CLI flag can express it).
    """
    argv: list[str] = []
    for f in fields(server_args):
        if f.name not in explicit:
            continue
        value, flag = getattr(server_args, f.name), "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif f.default is not MISSING and f.default is True:
                raise ValueError(f"{f.name}: the server CLI cannot turn this setting off")
            continue
        argv += [flag, str(value)]
    return argv


class Runtime(RuntimeEndpoint):
    """A radixgen server started for this process, used through its native API.

    Args:
        model_path: the model directory. host / port: where the server listens (``port=None``: a free port).
        log_file: where the server's stdout/stderr go (default: a new temporary file; see ``log_path``).
        startup_timeout: seconds to wait for ``/health`` to answer 200.
        chat_template: a built-in name, Jinja file or inline Jinja, passed to the server (``--chat-template``)
            and used by the frontend to render roles.
        **server_args: any other ``radixgen.runtime.server_args.ServerArgs`` field (e.g. ``max_total_tokens``,
            ``api_key``, ``enable_metrics``); validated before anything starts.

    Raises:
        TypeError: an unknown keyword (named). ValueError: an invalid value (the field is named).
        RuntimeError: the server exited or was not ready within ``startup_timeout`` (the log tail is included; the
            process has been killed).
    """

    def __init__(
        self,
        model_path: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_file: str | None = None,
        startup_timeout: float = 180.0,
        chat_template: str | None = None,
        **server_args: Any,
    ) -> None:
        from radixgen.runtime.server_args import ServerArgs  # torch-free

        known = {f.name for f in fields(ServerArgs)} - {"model_path", "host", "port", "chat_template"}
        unknown = sorted(set(server_args) - known)
        if unknown:
            raise TypeError(f"Runtime: unknown server argument(s) {', '.join(unknown)}; known: {sorted(known)}")
        port = _free_port(host) if port is None else port
        # the server runs in a temporary directory: paths given relative to ours must be made absolute
        model_path = _absolute_if_exists(model_path)
        for key in ("tokenizer_path",):
            if isinstance(server_args.get(key), str):
                server_args[key] = _absolute_if_exists(server_args[key])
        if chat_template is not None:
            chat_template = _absolute_if_exists(chat_template)
        extra = {"chat_template": chat_template} if chat_template is not None else {}
        args = ServerArgs(model_path=model_path, host=host, port=port, **extra, **server_args)
        argv = server_cli_args(args, {"model_path", "host", "port", *extra, *server_args})
        super().__init__(f"http://{host}:{port}", api_key=args.api_key, chat_template=chat_template)
        self.server_args = args
        self.process: subprocess.Popen[bytes] | None = None
        if log_file is None:
            fd, log_file = tempfile.mkstemp(prefix="radixgen-runtime-", suffix=".log")
            os.close(fd)
        self.log_path = log_file
        self._start([sys.executable, "-P", "-m", "radixgen.runtime.launch_server", *argv], startup_timeout)

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:40123``."""
        return self.base_url

    def _start(self, cmd: list[str], timeout: float) -> None:
        env, cwd = {**os.environ, "PYTHONUNBUFFERED": "1"}, tempfile.gettempdir()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        atexit.register(self.close)
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self.close()
                raise RuntimeError(f"radixgen server exited with status {code} before ready:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"radixgen server not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the server log (for error messages)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_chars))
                return f.read().decode(errors="replace")
        except OSError as e:
            return f"<log unavailable: {e}>"

    def close(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, wait ``timeout`` seconds, then SIGKILL; close the HTTP clients. Idempotent."""
        proc, self.process = getattr(self, "process", None), None
        if proc is not None:
            atexit.unregister(self.close)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        super().close()

    def __enter__(self) -> Runtime:
        return self

    def __repr__(self) -> str:
        state = "running" if self.process is not None and self.process.poll() is None else "stopped"
        return f"Runtime({self.server_args.model_path!r}, url={self.base_url!r}, {state})"


def _absolute_if_exists(path: str) -> str:
    """``path`` made absolute when it names an existing file or directory (a Hub id or template name is kept)."""
    return os.path.abspath(path) if os.path.exists(path) else path
