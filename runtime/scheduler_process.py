"""The scheduler process: ModelRunner + Scheduler driven over ZeroMQ (DESIGN.md, "The scheduler loop").

Loop: take every queued message (blocking only while idle, and then at most ``IDLE_POLL_MS`` before checking
that the HTTP process is still alive), dispatch it, run one ``scheduler.step()`` and send its outputs to the
detokenizer as a BatchTokenOut carrying the scheduler's stats. A request that ``add_request`` rejects with a
ValueError is answered with an ErrorOut for its rid. An accepted request is announced to the detokenizer with a
DetokRegister before any of its outputs (same socket, so in order). Any other exception ends the process with a
logged traceback and exit code 1; the HTTP process's watchdog then shuts the server down.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import zmq

from radixgen.runtime.errors import InvalidRequestError
from radixgen.runtime.io_struct import (
    AbortReq,
    BatchTokenOut,
    DetokRegister,
    ErrorOut,
    FlushCacheOut,
    FlushCacheReq,
    GetInfoReq,
    InfoOut,
    LoadLoRAAdapterReq,
    LoRAUpdateOut,
    ProfileReq,
    SchedulerReady,
    SchedulerStats,
    ServerSchedulerInput,
    TokenizedGenerateReq,
    UnloadLoRAAdapterReq,
)
from radixgen.runtime.ipc import (
    ENCODER,
    IDLE_POLL_MS,
    IpcEndpoints,
    has_message,
    parent_alive,
    pull_socket,
    push_socket,
)
from radixgen.runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

# test hook: seconds the scheduler waits after loading before it reports ready (exercises /health = 503)
READY_DELAY_ENV = "RADIXGEN_TEST_READY_DELAY"


class SchedulerLoop:
    """Connects a Scheduler to the server's sockets.

    Args:
        scheduler: a radixgen.runtime.scheduler.Scheduler.
        recv: PULL socket of requests from the tokenizer manager.
        send: PUSH socket to the detokenizer.
        parent_pid: pid of the HTTP process; the loop ends when it is gone.
        prefill: with ``--disaggregation-mode prefill``, the PrefillKVSender polled each iteration (its socket
            wakes the idle loop; its requests' outputs are kept from the detokenizer).
    """

    def __init__(
        self,
        scheduler: Any,
        recv: zmq.Socket[Any],
        send: zmq.Socket[Any],
        parent_pid: int,
        dp_rank: int = 0,
        prefill: Any = None,
    ) -> None:
        import msgspec

        from radixgen.runtime.profiler import SchedulerProfiler  # torch: only in the scheduler process

        self.scheduler = scheduler
        self.recv = recv
        self.send_sock = send
        self.parent_pid = parent_pid
        self.dp_rank = dp_rank
        self.prefill = prefill  # a prefill server's PrefillKVSender (runtime/disaggregation/prefill.py)
        self.decoder = msgspec.msgpack.Decoder(ServerSchedulerInput)
        self.profiler = SchedulerProfiler()
        self.handlers: dict[type, Any] = {
            TokenizedGenerateReq: self.on_generate,
            AbortReq: self.scheduler.handle,
            FlushCacheReq: self.on_flush,
            GetInfoReq: self.on_info,
            ProfileReq: self.on_profile,
            LoadLoRAAdapterReq: self.on_lora_update,
            UnloadLoRAAdapterReq: self.on_lora_update,
        }

    def send(self, msg: Any) -> None:
        self.send_sock.send(ENCODER.encode(msg), copy=False)

    def stats(self) -> SchedulerStats:
        """Load and KV usage now (kv_used_tokens = slots neither free nor evictable)."""
        s = self.scheduler
        total = s.runner.max_total_tokens
        free = s.allocator.available_size()
        evictable = s.tree_cache.evictable_size()
        return SchedulerStats(
            num_running_reqs=len(s.running) + int(s.chunked_req is not None),
            num_waiting_reqs=len(s.waiting),
            kv_used_tokens=total - free - evictable,
            kv_cached_tokens=s.tree_cache.total_size(),
            kv_evictable_tokens=evictable,
            kv_free_tokens=free,
            max_total_tokens=total,
            num_retractions=s.num_retractions,
            num_forward_steps=s.num_forward_steps,
            dp_rank=self.dp_rank,
            **(s.spec.stats.scheduler_fields() if s.spec is not None else {}),
            **self._pd_stats(),
        )

    def _pd_stats(self) -> dict[str, Any]:
        """The disaggregation counters of SchedulerStats (empty without a mode)."""
        if self.prefill is not None:
            return {"pd_transfers": self.prefill.num_transfers}
        d = self.scheduler.disagg
        if d is None:
            return {}
        return {"pd_transfers": d.num_transfers, "pd_transfer_tokens": d.transfer_tokens,
                "pd_transfer_seconds": d.transfer_seconds}  # fmt: skip

    # ------------------------------------------------------------------ handlers
    def on_generate(self, msg: TokenizedGenerateReq) -> None:
        try:
            self.scheduler.handle(msg)
        except InvalidRequestError as e:
            self.send(ErrorOut(msg.rid, e.message, e.status, e.param))
            return
        self.send(DetokRegister.for_request(msg))

    def on_flush(self, msg: FlushCacheReq) -> None:
        ok = bool(self.scheduler.handle(msg))
        logger.info("flush_cache: %s", "done" if ok else "refused (requests in flight)")
        self.send(FlushCacheOut(ok))

    def on_lora_update(self, msg: LoadLoRAAdapterReq | UnloadLoRAAdapterReq) -> None:
        """Load or unload an adapter; an unload waiting for the adapter's requests is answered after the step
        that finishes the last of them (``run``)."""
        reply: LoRAUpdateOut | None = self.scheduler.handle(msg)
        if reply is not None:
            self.send(reply)

    def on_profile(self, msg: ProfileReq) -> None:
        self.send(self.profiler.handle(msg))

    def on_info(self, msg: GetInfoReq) -> None:
        self.send(InfoOut(msg.req_id, self.stats()))

    # ------------------------------------------------------------------ loop
    def drain(self) -> None:
        """Handle every message already queued (never blocks; asks ``ZMQ_EVENTS`` first, so a step without
        messages raises no zmq.Again)."""
        while has_message(self.recv):
            raw = self.recv.recv(zmq.NOBLOCK, copy=False)
            msg = self.decoder.decode(raw.buffer)
            self.handlers[type(msg)](msg)

    def run(self) -> None:
        """Serve until the HTTP process is gone (or an exception propagates)."""
        poller = zmq.Poller()
        poller.register(self.recv, zmq.POLLIN)
        if self.prefill is not None:
            poller.register(self.prefill.sock, zmq.POLLIN)
        while parent_alive(self.parent_pid):
            if not self.scheduler.has_work():
                wait_ms = IDLE_POLL_MS if self.prefill is None else self.prefill.idle_ms()
                if not poller.poll(wait_ms) and wait_ms == IDLE_POLL_MS:
                    continue  # idle: blocked in poll, woke up only to check the parent
            self.drain()
            if self.prefill is not None:
                self.prefill.poll()
            if self.scheduler.has_work():
                outputs = self.scheduler.step()
                self.profiler.step()
                if self.prefill is not None:
                    outputs = self.prefill.take_outputs(outputs)
                if outputs:
                    self.send(BatchTokenOut(outputs, self.stats()))
                for reply in self.scheduler.lora.take_replies():
                    self.send(reply)
                if self.scheduler.disagg is not None:
                    for error in self.scheduler.disagg.take_errors():
                        self.send(error)
        logger.info("scheduler: the HTTP process is gone; exiting")


def run_scheduler_process(server_args: ServerArgs, ipc: IpcEndpoints, parent_pid: int, dp_rank: int = 0) -> None:
    """Entry point of the spawned scheduler process (replica ``dp_rank`` with ``--dp-size``): load the model, report
    ready, serve.

    Exits with status 1 (after logging the traceback) if loading or serving fails.
    """
    from radixgen.runtime.ipc import setup_child_process

    setup_child_process(server_args.log_level, "scheduler" if dp_rank == 0 else f"scheduler-{dp_rank}")
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        import torch

        # as in tests/conftest.py: settle Triton's interpreter mode before anything imports triton
        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        from radixgen.runtime.fast_tokenizer import load_hf_tokenizer
        from radixgen.runtime.model_runner import ModelRunner
        from radixgen.runtime.scheduler import Scheduler

        recv = pull_socket(ctx, ipc.scheduler_inputs(server_args.dp_size)[dp_rank])
        send = push_socket(ctx, ipc.detokenizer)
        runner = ModelRunner(server_args, join_tp_group(server_args, 0))
        tokenizer = load_hf_tokenizer(server_args.resolved_tokenizer_path)  # once: stop strings and grammars
        eos = tuple(runner.model_config.eos_token_ids)
        scheduler = Scheduler(server_args, runner, eos, tokenizer)
        loop = SchedulerLoop(scheduler, recv, send, parent_pid, dp_rank, attach_disaggregation(scheduler, ctx))
        delay = float(os.environ.get(READY_DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)
        ready = SchedulerReady(
            runner.context_len, runner.vocab_size, runner.max_total_tokens, list(eos), os.getpid(),
            runner.memory_report(),
            None if runner.lora_manager is None else runner.lora_manager.loaded(),
            dp_rank,
        )
        loop.send(ready)
        try:
            loop.run()
        finally:
            scheduler.shutdown()
            if runner.tp_channel is not None:
                runner.tp_channel.send(None)  # the follower ranks stop
    except Exception:  # noqa: BLE001 - log whatever killed the scheduler, then exit non-zero
        logger.exception("scheduler process failed")
        sys.exit(1)
    finally:
        ctx.destroy(linger=0)


def attach_disaggregation(scheduler: Any, ctx: zmq.Context[Any]) -> Any:
    """With ``--disaggregation-mode``: give a decode server's scheduler its DecodeKVReceiver, or return a prefill
    server's PrefillKVSender (bound to its bootstrap port) for the loop; None otherwise."""
    mode = scheduler.args.disaggregation_mode
    if mode == "decode":
        from radixgen.runtime.disaggregation.decode import DecodeKVReceiver

        scheduler.disagg = DecodeKVReceiver(scheduler, scheduler.args, ctx)
    elif mode == "prefill":
        from radixgen.runtime.disaggregation.prefill import PrefillKVSender

        return PrefillKVSender(scheduler, scheduler.args, ctx)
    return None


# idle follower ranks wait in a broadcast until rank 0 has work: the group's collectives must not time out meanwhile
_TP_TIMEOUT_S = 30 * 24 * 3600.0


def join_tp_group(server_args: ServerArgs, tp_rank: int) -> Any:
    """This process's ``TensorParallelGroup`` (``--tp-size`` ranks meeting at ``--dist-init-addr``; a one-rank group
    without tensor parallelism)."""
    from radixgen.runtime.distributed import TensorParallelGroup

    addr = f"tcp://{server_args.dist_init_addr}" if server_args.dist_init_addr else "tcp://127.0.0.1:0"
    return TensorParallelGroup.initialize(server_args.tp_size, tp_rank, addr, server_args.device, _TP_TIMEOUT_S)


def run_tp_follower_process(server_args: ServerArgs, _ipc: IpcEndpoints, parent_pid: int, tp_rank: int) -> None:
    """Entry point of a tensor-parallel rank > 0: load this rank's shard, then run every forward rank 0 broadcasts
    (runtime/tp_worker.py) until rank 0 stops it. Exits with status 1 (after logging the traceback) on failure."""
    from radixgen.runtime.ipc import setup_child_process

    setup_child_process(server_args.log_level, f"tp-rank-{tp_rank}")
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        from radixgen.runtime.model_runner import ModelRunner
        from radixgen.runtime.tp_worker import follow

        runner = ModelRunner(server_args, join_tp_group(server_args, tp_rank))
        assert runner.tp_channel is not None
        logger.info("tensor-parallel rank %d of %d ready (parent %d)", tp_rank, server_args.tp_size, parent_pid)
        try:
            follow(runner, runner.tp_channel)
        except RuntimeError as e:
            if "closed by peer" not in str(e):
                raise
            logger.info("tensor-parallel rank %d: rank 0 has gone away; stopping", tp_rank)  # its server stopped
            return
        logger.info("tensor-parallel rank %d: stopped by rank 0", tp_rank)
    except Exception:  # noqa: BLE001 - log whatever killed the rank, then exit non-zero
        logger.exception("tensor-parallel rank %d failed", tp_rank)
        sys.exit(1)
