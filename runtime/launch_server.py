"""Launch the server: this (HTTP) process runs FastAPI on uvicorn with the TokenizerManager; it spawns the
scheduler process (ModelRunner + Scheduler) and the detokenizer process, linked by ZeroMQ IPC sockets in a
private temporary directory (DESIGN.md, "Processes and messages").

Lifecycle:
- ``/health`` answers 503 until the scheduler reports the model loaded, 200 after.
- SIGINT / SIGTERM: uvicorn stops accepting, open requests get up to 3 s, then the children are terminated
  (SIGTERM, SIGKILL after 5 s) and the socket directory removed; exit status 0.
- A child that dies is noticed at once by a watchdog thread (blocked on the children's sentinels): the server
  logs which process died and how, fails pending requests with 503, stops the other child and exits with
  status 1. Each child also exits by itself when this process disappears (no orphans).

Usage: ``python -m radixgen.runtime.launch_server --model PATH [flags]`` or ``radixgen serve --model PATH``.
Module-level imports stay light: spawned children re-import the main module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from radixgen.runtime.server_args import ServerArgs, server_args_from_cli

logger = logging.getLogger("radixgen.server")

_GRACEFUL_SHUTDOWN_S = 3
_CHILD_JOIN_S = 5.0


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the tensor-parallel rendezvous of a one-machine server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Launcher:
    """State of one server run: children, uvicorn server, exit status."""

    def __init__(self, server_args: ServerArgs) -> None:
        self.args = server_args
        self.procs: list[Any] = []
        self.server: Any = None
        self.tm: Any = None
        self.exit_code = 0
        self._stop_r, self._stop_w = os.pipe()  # wakes the watchdog on a normal shutdown

    def on_signal(self, signum: int, _frame: Any) -> None:
        """Outside uvicorn's own handler (start-up, or the re-raise after its shutdown): just stop serving."""
        if self.server is not None and not self.server.should_exit:
            logger.info("received %s; shutting down", signal.Signals(signum).name)
            self.server.should_exit = True

    def watchdog(self) -> None:
        """Block until a child dies (or shutdown starts); on a death, take the server down with status 1."""
        from multiprocessing.connection import wait

        by_sentinel = {p.sentinel: p for p in self.procs}
        ready = wait([*by_sentinel, self._stop_r])
        dead = [by_sentinel[s] for s in ready if s in by_sentinel]
        if self._stop_r in ready or not dead:
            return  # a normal shutdown
        proc = dead[0]
        proc.join(0.1)
        reason = f"the {proc.name} process (pid {proc.pid}) {_describe_exit(proc.exitcode)}"
        logger.error("%s; shutting the server down", reason)
        self.exit_code = 1
        loop = getattr(self.tm, "loop", None)
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self.tm.mark_dead, reason)
        else:
            self.tm.dead_reason = reason
        if self.server is not None:
            self.server.should_exit = True

    def _start(self, ctx: Any, children: list[tuple[str, Any, tuple[Any, ...]]], ipc: Any) -> None:
        for name, target, extra in children:
            proc = ctx.Process(target=target, args=(self.args, ipc, os.getpid(), *extra), name=name, daemon=True)
            proc.start()
            self.procs.append(proc)

    def _run_ranks(self, ctx: Any, ranks: list[tuple[str, Any, tuple[Any, ...]]], ipc: Any) -> int:
        """Node ``node_rank > 0``: run this machine's tensor-parallel ranks until rank 0 stops them (status 0) or
        one fails (status 1; the others are stopped)."""
        from multiprocessing.connection import wait

        self._start(ctx, ranks, ipc)
        started = ", ".join(f"{p.name} (pid {p.pid})" for p in self.procs)
        logger.info("node %d: started %s", self.args.node_rank, started)
        pending = list(self.procs)
        while pending:
            for sentinel in wait([p.sentinel for p in pending]):
                proc = next(p for p in pending if p.sentinel == sentinel)
                proc.join()
                pending.remove(proc)
                if proc.exitcode != 0:
                    logger.error("the %s process (pid %d) %s", proc.name, proc.pid, _describe_exit(proc.exitcode))
                    return 1
        return 0

    def stop_children(self) -> None:
        os.write(self._stop_w, b"x")
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(_CHILD_JOIN_S)
            if p.is_alive():
                logger.warning("the %s process (pid %d) ignored SIGTERM; killing it", p.name, p.pid)
                p.kill()
                p.join()

    def run(self) -> int:
        import multiprocessing as mp

        import uvicorn

        from radixgen.runtime.detokenizer_process import run_detokenizer_process
        from radixgen.runtime.http_server import create_app
        from radixgen.runtime.ipc import IpcEndpoints
        from radixgen.runtime.scheduler_process import run_scheduler_process, run_tp_follower_process
        from radixgen.runtime.tokenizer_manager import TokenizerManager

        args = self.args
        if args.tp_size > 1 and args.dist_init_addr is None:
            args = self.args = dataclasses.replace(args, dist_init_addr=f"127.0.0.1:{_free_port()}")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.on_signal)
        ipc = IpcEndpoints.create()
        per_node = args.tp_size // args.nnodes
        followers: list[tuple[str, Any, tuple[Any, ...]]] = [
            (f"tp-rank-{r}", run_tp_follower_process, (r,))
            for r in range(args.node_rank * per_node, (args.node_rank + 1) * per_node)
            if r > 0
        ]
        try:
            ctx = mp.get_context("spawn")
            if args.node_rank > 0:  # another machine's share of the ranks: no HTTP server, no scheduler
                return self._run_ranks(ctx, followers, ipc)
            self.tm = TokenizerManager(args, ipc)
            children: list[tuple[str, Any, tuple[Any, ...]]] = [
                ("scheduler" if rank == 0 else f"scheduler-{rank}", run_scheduler_process, (rank,))
                for rank in range(args.dp_size)
            ]
            children += followers
            children.append(("detokenizer", run_detokenizer_process, ()))
            self._start(ctx, children, ipc)
            self.tm.child_pids = {p.name: p.pid for p in self.procs}
            logger.info("started %s", ", ".join(f"{p.name} (pid {p.pid})" for p in self.procs))
            app = create_app(self.tm, args)
            config = uvicorn.Config(
                app,
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                log_config=None,
                access_log=args.log_level == "debug",
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            )
            self.server = _make_server(uvicorn, config, self.tm)
            threading.Thread(target=self.watchdog, name="radixgen-watchdog", daemon=True).start()
            self.server.run()
            if not self.server.started and self.exit_code == 0:
                self.exit_code = 1  # e.g. the port is in use (uvicorn logged why)
        finally:
            self.stop_children()
            ipc.cleanup()
        logger.info("server stopped (exit status %d)", self.exit_code)
        return self.exit_code


def _make_server(uvicorn: Any, config: Any, tm: Any) -> Any:
    """A uvicorn.Server whose SIGINT/SIGTERM handler also fails every pending request at once (503), so open
    streams end with an error event instead of holding the graceful shutdown until its timeout."""

    class _Server(uvicorn.Server):  # type: ignore[misc, name-defined]
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                logger.info("received %s; shutting down", signal.Signals(sig).name)
                loop = getattr(tm, "loop", None)
                if loop is not None and loop.is_running():
                    loop.call_soon_threadsafe(tm.mark_dead, "the server is shutting down")
            super().handle_exit(sig, frame)

    return _Server(config)


def launch_server(server_args: ServerArgs) -> int:
    """Run the server until SIGINT/SIGTERM (returns 0) or until a child process dies (returns 1)."""
    from radixgen.runtime.ipc import configure_logging

    configure_logging(server_args.log_level)
    return _Launcher(server_args).run()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``python -m radixgen.runtime.launch_server --model PATH [flags]``; returns the exit status."""
    return launch_server(server_args_from_cli(argv, prog=prog))


if __name__ == "__main__":
    sys.exit(main())
