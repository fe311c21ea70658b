"""``Runtime``: start a local radixgen server subprocess and use it as a ``RuntimeEndpoint`` (SGLang's
``sgl.Runtime``).

The server runs as ``python -P -m radixgen.runtime.launch_server`` with the same interpreter, from the temporary
directory (started from the repository root, its top-level folders would shadow installed packages), with its
output in a log file. ``close()`` (also at interpreter exit and on leaving a ``with`` block) stops it.

This module imports nothing of ``radixgen.runtime``: keyword arguments become CLI flags by a naming rule, and the
server's own argument parser validates them (a usage error makes it exit at once; ``Runtime`` raises it).
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
from typing import Any

import httpx

from radixgen.backends.runtime_endpoint import RuntimeEndpoint

_USAGE_ERROR = 2  # argparse's exit status for a bad command line


def _free_port(host: str) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _flag(name: str) -> str:
    """The server flag for keyword ``name``: ``foo_bar`` -> ``--foo-bar``."""
    return "--" + name.replace("_", "-")


def server_cli_args(model_path: str, **server_args: Any) -> list[str]:
    """The ``launch_server`` flags for ``model_path`` and keyword ``server_args``, spelled generically.

    ``foo_bar=3`` becomes ``--foo-bar 3``, ``foo_bar=True`` becomes ``--foo-bar`` (bools are ``store_true``
    flags), False and None are omitted (the server's default); a non-empty list/tuple of strings gives the flag its
    items, as the server's multi-value flags (its ``tuple[str, ...]`` settings) take them
    (``lora_paths=["a=/x", "b=/y"]`` -> ``--lora-paths a=/x b=/y``), a dict of strings its ``key=value`` pairs
    (``lora_paths={"a": "/x"}`` -> ``--lora-paths a=/x``). ``model_path`` becomes ``--model-path`` (the server
    accepts it as well as ``--model``; likewise ``--tokenizer-path``). Nothing else is validated here: the server's
    argument parser rejects unknown flags and invalid values (see ``Runtime``).

    Raises:
        TypeError: a value with no CLI spelling — not a str, int, float, bool, or a non-empty list/tuple/dict of
            strings (the keyword is named).
    """
    argv = [_flag("model_path"), model_path]
    for name, value in server_args.items():
        if value is None or value is False:
            continue
        flag = _flag(name)
        if isinstance(value, dict) and all(isinstance(x, str) for kv in value.items() for x in kv):
            value = [f"{k}={v}" for k, v in value.items()]
        if value is True:
            argv.append(flag)
        elif isinstance(value, str | int | float):
            argv += [flag, str(value)]
        elif isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            argv += [flag, *value]
        else:
            raise TypeError(
                f"{name}: a server argument must be a str, int, float, bool or a non-empty list/dict of strings, "
                f"got {value!r}"
            )
    return argv


class Runtime(RuntimeEndpoint):
    """A radixgen server started for this process, used through its native API.

    Args:
        model_path: the model directory. host / port: where the server listens (``port=None``: a free port).
        log_file: where the server's stdout/stderr go (default: a new temporary file; see ``log_path``).
        startup_timeout: seconds to wait for ``/health`` to answer 200 (``launch_timeout``, SGLang's name, if given,
            takes its place).
        chat_template: a built-in name, Jinja file or inline Jinja, passed to the server (``--chat-template``)
            and used by the frontend to render roles.
        lora_paths: LoRA adapters to serve (``--lora-paths``): ``{name: dir}`` or a list of ``"name=dir"`` / ``dir``
            (relative directories are made absolute); calls pick one with ``rg.gen(..., lora=name)`` or
            ``program.run(..., lora=name)``.
        **server_args: any other server setting, as the keyword form of its ``launch_server`` flag (e.g.
            ``max_total_tokens=4096``, ``api_key="k"``, ``enable_metrics=True``; see ``server_cli_args``). They
            are validated by the server process's argument parser, which exits at once on a bad one.

    Attributes:
        model_path: the model directory (made absolute). server_args: every setting passed as a flag (host, port,
            chat_template and ``**server_args``). log_path: the server log. process: the server process (None once
            closed).

    Raises:
        TypeError: an unknown keyword (named; the server reported "unrecognized arguments").
        ValueError: an invalid value or model path (the server's usage error, which names the flag or field).
        RuntimeError: the server exited otherwise, or was not ready within ``startup_timeout``.
        Every error includes the server's log tail, and the process has been stopped.
    """

    def __init__(
        self,
        model_path: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_file: str | None = None,
        startup_timeout: float = 180.0,
        launch_timeout: float | None = None,
        chat_template: str | None = None,
        **server_args: Any,
    ) -> None:
        startup_timeout = startup_timeout if launch_timeout is None else launch_timeout
        port = _free_port(host) if port is None else port
        # the server runs in a temporary directory: paths given relative to ours must be made absolute
        self.model_path = _absolute_if_exists(model_path)
        if isinstance(server_args.get("tokenizer_path"), str):
            server_args["tokenizer_path"] = _absolute_if_exists(server_args["tokenizer_path"])
        if server_args.get("lora_paths") is not None:
            server_args["lora_paths"] = _absolute_lora_paths(server_args["lora_paths"])
        if chat_template is not None:
            chat_template = _absolute_if_exists(chat_template)
        self.server_args = {"host": host, "port": port, "chat_template": chat_template, **server_args}
        argv = server_cli_args(self.model_path, **self.server_args)
        api_key = server_args.get("api_key")
        super().__init__(f"http://{host}:{port}", api_key=api_key, chat_template=chat_template)
        self.process: subprocess.Popen[bytes] | None = None
        if log_file is None:
            fd, log_file = tempfile.mkstemp(prefix="radixgen-runtime-", suffix=".log")
            os.close(fd)
        self.log_path = log_file
        self._log_start = os.path.getsize(log_file) if os.path.exists(log_file) else 0
        self._start([sys.executable, "-P", "-m", "radixgen.runtime.launch_server", *argv], startup_timeout)

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:40123``."""
        return self.base_url

    @property
    def endpoint(self) -> Runtime:
        """The backend that talks to the server: this object itself (SGLang's ``Runtime.endpoint``)."""
        return self

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
                raise self._exit_error(code)
            try:
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"radixgen server not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def _exit_error(self, code: int) -> Exception:
        """The error for a server that exited with status ``code`` before it was ready (see the class docstring)."""
        tail = self.log_tail()
        usage = [line for line in tail.splitlines() if ": error: " in line]
        if code != _USAGE_ERROR or not usage:
            return RuntimeError(f"radixgen server exited with status {code} before ready:\n{tail}")
        message = usage[-1].split(": error: ", 1)[1]
        if message.startswith("unrecognized arguments:"):
            flags = set(message.split(":", 1)[1].split())
            names = [n for n in self.server_args if _flag(n) in flags]
            return TypeError(f"Runtime: unknown server argument(s) {', '.join(names) or '?'} ({message}):\n{tail}")
        return ValueError(f"Runtime: the server rejected its arguments: {message}\n{tail}")

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of what this server wrote to its log (for error messages)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(self._log_start, f.tell() - max_chars))
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

    def shutdown(self) -> None:
        """Stop the server (SGLang's name for ``close``)."""
        self.close()

    def __enter__(self) -> Runtime:
        return self

    def __repr__(self) -> str:
        state = "running" if self.process is not None and self.process.poll() is None else "stopped"
        return f"Runtime({self.model_path!r}, url={self.base_url!r}, {state})"


def _absolute_if_exists(path: str) -> str:
    """``path`` made absolute when it names an existing file or directory (a Hub id or template name is kept)."""
    return os.path.abspath(path) if os.path.exists(path) else path


def _absolute_lora_paths(value: Any) -> Any:
    """``lora_paths`` (a dict ``{name: dir}``, a ``"name=dir"`` / ``"dir"`` string or a list of them) as a list of
    ``"name=dir"`` with existing directories made absolute; a bare ``dir`` keeps its name (the server names it by
    itself). Anything else is returned unchanged for ``server_cli_args`` / the server to reject."""
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    elif isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return value
    out = []
    for spec in value:
        name, sep, path = spec.partition("=")
        path = path if sep else spec
        out.append(f"{name}={_absolute_if_exists(path)}" if name and path else spec)
    return out
