"""ZeroMQ plumbing of the multi-process server: socket addresses, the msgpack codec, liveness helpers.

Three PUSH → PULL links, each PULL end bound by its receiver on an ``ipc://`` path in a private temporary
directory (``tempfile.mkdtemp``, mode 0700):

- ``scheduler``: tokenizer manager → scheduler process (TokenizedGenerateReq, AbortReq, FlushCacheReq, ...);
- ``detokenizer``: scheduler process → detokenizer process (SchedulerReady, DetokRegister, BatchTokenOut, ...);
- ``tokenizer``: detokenizer process → tokenizer manager (BatchStrOut and forwarded replies).

Torch-free: imported by the HTTP and detokenizer processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import zmq

ENCODER = msgspec.msgpack.Encoder()
# how long an idle child process blocks on its socket before checking that its parent is still alive (ms)
IDLE_POLL_MS = 500
# how long a loop with background work in flight (e.g. a KV transfer) blocks on its sockets (ms)
BUSY_POLL_MS = 5


@dataclass(frozen=True)
class IpcEndpoints:
    """The ``ipc://`` addresses of one server instance (picklable; passed to the spawned children).

    Attributes:
        directory: the private temporary directory holding the socket files (removed by ``cleanup``).
    """

    directory: str
    scheduler: str
    detokenizer: str
    tokenizer: str

    @classmethod
    def create(cls) -> IpcEndpoints:
        """Make a fresh private directory (``tempfile.mkdtemp``) and name the three sockets in it."""
        d = tempfile.mkdtemp(prefix="radixgen-ipc-")
        return cls(d, f"ipc://{d}/scheduler", f"ipc://{d}/detokenizer", f"ipc://{d}/tokenizer")

    def scheduler_inputs(self, dp_size: int) -> list[str]:
        """The input socket of each scheduler replica (``--dp-size``): ``scheduler``, then ``scheduler-1``, ..."""
        return [self.scheduler if rank == 0 else f"{self.scheduler}-{rank}" for rank in range(dp_size)]

    def cleanup(self) -> None:
        """Remove the socket directory (ignores errors)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def push_socket(ctx: zmq.Context[Any], address: str) -> zmq.Socket[Any]:
    """A PUSH socket connected to ``address`` (no send high-water mark: senders never block or drop)."""
    sock = _unbounded_socket(ctx, zmq.PUSH, zmq.SNDHWM)
    sock.connect(address)
    return sock


def has_message(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is queued on ``sock`` (``ZMQ_EVENTS``; reading it also re-arms the socket's ``ZMQ_FD``).
    Asking first spares a receive loop the zmq.Again exception of an empty socket."""
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)


def pull_socket(ctx: zmq.Context[Any], address: str) -> zmq.Socket[Any]:
    """A PULL socket bound to ``address`` (no receive high-water mark)."""
    sock = _unbounded_socket(ctx, zmq.PULL, zmq.RCVHWM)
    sock.bind(address)
    return sock


def _unbounded_socket(ctx: zmq.Context[Any], kind: int, hwm_option: int) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.setsockopt(hwm_option, 0)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def parent_alive(parent_pid: int) -> bool:
    """True while the process that spawned us is alive (we are re-parented when it dies)."""
    return os.getppid() == parent_pid


def setup_child_process(log_level: str, name: str) -> None:
    """Common start of a spawned child: logging in the server's format, SIGINT ignored (a Ctrl-C reaches
    the whole process group; the HTTP process then stops the children with SIGTERM)."""
    configure_logging(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger(__name__).debug("%s process started (pid %d)", name, os.getpid())


def configure_logging(log_level: str) -> None:
    """Root logging for a server process: ``time level [process] logger: message`` on stderr."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s",
        force=True,
    )
