"""TokenizerManager: the HTTP process's side of the runtime (asyncio; no torch).

It tokenizes and validates requests, sends them to the scheduler process over ZeroMQ, and wakes each request's
waiter when the detokenizer process sends its text (DESIGN.md, "Processes and messages"). The event loop watches
the detokenizer's socket itself (no polling, no sleeps) and dispatches each message by type.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import zmq

from radixgen.runtime.dp_dispatch import DataParallelDispatcher, combine_stats
from radixgen.runtime.errors import InvalidRequestError, RequestFailedError, ServerUnavailableError
from radixgen.runtime.fast_tokenizer import load_tokenizer
from radixgen.runtime.generate_request import GenerateReqInput, PlannedReq, max_prompt_chars, plan_requests
from radixgen.runtime.io_struct import (
    AbortReq,
    BatchStrOut,
    DetokenizerOutput,
    ErrorOut,
    FlushCacheOut,
    FlushCacheReq,
    GetInfoReq,
    InfoOut,
    LoadLoRAAdapterReq,
    LoRAUpdateOut,
    ProfileOut,
    ProfileReq,
    SchedulerReady,
    SchedulerStats,
    UnloadLoRAAdapterReq,
)
from radixgen.runtime.ipc import IpcEndpoints, has_message, pull_socket
from radixgen.runtime.metrics import ServerMetrics
from radixgen.runtime.request_state import RequestState
from radixgen.runtime.server_args import ServerArgs

__all__ = ["GenerateReqInput", "RequestFailedError", "ServerUnavailableError", "TokenizerManager"]

logger = logging.getLogger(__name__)

# prompts with more characters than this (in all) are tokenized on a worker thread, off the event loop
_INLINE_TOKENIZE_CHARS = 32_768
# seconds to wait for the scheduler's answer to a control request (flush_cache, server info)
_CONTROL_TIMEOUT = 30.0


class TokenizerManager:
    """Tracks every request of the server and talks to the scheduler and detokenizer processes.

    Args:
        server_args: the server configuration.
        ipc: the socket addresses; this object binds ``ipc.tokenizer`` and connects to ``ipc.scheduler``.

    Attributes:
        tokenizer: the model's tokenizer (a FastTokenizer: encode/decode/apply_chat_template/chat_template — the
            tokenizer's own template; ``--chat-template`` is resolved by the OpenAI routes).
        context_len / vocab_size / max_total_tokens / eos_token_ids: from the scheduler's ready message; valid
            once ``is_ready``.
        metrics: the Prometheus metrics (``None`` without ``--enable-metrics``).
        child_pids: ``{"scheduler": pid, "detokenizer": pid}``, filled by the launcher.
    """

    def __init__(self, server_args: ServerArgs, ipc: IpcEndpoints) -> None:
        self.server_args = server_args
        self.tokenizer = load_tokenizer(server_args.resolved_tokenizer_path)
        self.context_len = 0
        self.max_prompt_chars: int | None = None  # set when ready (needs the context length)
        self.vocab_size = 0
        self.max_total_tokens = 0
        self.memory_report: dict[str, Any] = {}
        self.eos_token_ids: list[int] = []
        self.lora_adapters: dict[str, str] | None = None  # loaded LoRA adapters (name → path); None: LoRA off
        self.is_ready = False
        self.dead_reason: str | None = None
        self.metrics = ServerMetrics() if server_args.enable_metrics else None
        self.child_pids: dict[str, int] = {}
        self.charge_tokens: Any = None  # api_keys.KeyLimiter.charge_tokens when API keys have token quotas
        self._states: dict[str, RequestState] = {}
        self._sync_ctx: zmq.Context[Any] = zmq.Context()
        # the scheduler replicas (one without --dp-size): requests are routed, control messages go to all
        self.dp = DataParallelDispatcher(
            self._sync_ctx, ipc.scheduler_inputs(server_args.dp_size), server_args.load_balance_method
        )
        self._ready_ranks: set[int] = set()
        self._stats: dict[int, SchedulerStats] = {}
        self._recv_sock = pull_socket(self._sync_ctx, ipc.tokenizer)
        self._recv_fd: int = self._recv_sock.get(zmq.FD)
        self._decoder = msgspec.msgpack.Decoder(DetokenizerOutput)
        self._ready_event = asyncio.Event()
        # one control request of each reply type at a time: FlushCacheOut, ProfileOut, LoRAUpdateOut
        self._control_locks: dict[type, asyncio.Lock] = {
            FlushCacheOut: asyncio.Lock(), ProfileOut: asyncio.Lock(), LoRAUpdateOut: asyncio.Lock()
        }
        self._control_futures: dict[type, asyncio.Future[Any]] = {}
        self._info_futures: dict[str, asyncio.Future[list[SchedulerStats]]] = {}
        self._control_replies: dict[type, list[Any]] = {}  # replies gathered so far, one per scheduler replica
        self._info_replies: dict[str, list[SchedulerStats]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's event loop, once started
        self._handlers: dict[type, Any] = {
            SchedulerReady: self._on_ready,
            BatchStrOut: self._on_batch,
            ErrorOut: self._on_error,
            FlushCacheOut: self._on_control_reply,
            ProfileOut: self._on_control_reply,
            LoRAUpdateOut: self._on_control_reply,
            InfoOut: self._on_info,
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start receiving (call from the server's event loop): the loop watches the socket's file descriptor
        (``add_reader``) and drains the socket when it signals: one callback per message, without zmq.asyncio's
        receive futures (benchmarks/bench_server_path.py reports this process's CPU per streamed token)."""
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self._recv_fd, self._drain)
        self._drain()  # what arrived before the reader was added

    async def stop(self) -> None:
        """Stop receiving and close the sockets."""
        if self.loop is not None:
            self.loop.remove_reader(self._recv_fd)
        self._recv_sock.close(0)
        self.dp.close()
        self._sync_ctx.term()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the model is loaded; False on timeout (seconds)."""
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def mark_dead(self, reason: str) -> None:
        """A server process died: refuse new requests and fail every pending one (HTTP 503)."""
        self.dead_reason = reason
        self.is_ready = False
        for st in list(self._states.values()):
            st.fail(503, f"server unavailable: {reason}")
        self._states.clear()
        for fut in [*self._control_futures.values(), *self._info_futures.values()]:
            if fut is not None and not fut.done():
                fut.set_exception(ServerUnavailableError(reason))

    def check_available(self) -> None:
        """Raises ServerUnavailableError unless the model is loaded and every process is alive."""
        if self.dead_reason is not None:
            raise ServerUnavailableError(f"server unavailable: {self.dead_reason}")
        if not self.is_ready:
            raise ServerUnavailableError("server not ready: the model is still loading")

    # ------------------------------------------------------------------ requests
    async def generate_request(
        self, obj: GenerateReqInput, incremental: bool | None = None, owner: Any = None
    ) -> AsyncIterator[dict[str, Any] | list[dict[str, Any]]]:
        """Run a native generate request.

        Validates first (nothing is sent if any item is invalid). With ``obj.stream`` it yields one dict per
        update (cumulative ``text`` and ``output_ids``, or only the new ones when ``incremental`` — by default
        ``--incremental-streaming-output``; ``owner``, the API key's policy (api_keys.KeyPolicy) that sent it, is
        charged its tokens and alone (or an admin) may abort it; the last one of each request has
        ``meta_info.finish_reason``; batch / n>1 items carry ``"index"``); otherwise one final item: a dict, or
        a list for a batch or n>1. Closing the iterator early (client disconnect) aborts the unfinished
        requests, whose KV then returns to the pool.

        Raises:
            InvalidRequestError: invalid input (HTTP 400), naming the field — also when the scheduler rejects it.
            ServerUnavailableError: not ready, or a server process died (HTTP 503).
            RequestFailedError: any other failure, with its HTTP status.
        """
        self.check_available()
        if incremental is None:
            incremental = self.server_args.incremental_streaming_output
        planned, single = await self.plan(obj)
        for p in planned:
            if p.rid in self._states:
                raise InvalidRequestError("rid", f"rid: {p.rid!r} is already in use")
        event = asyncio.Event()
        states = [self._new_state(p, event) for p in planned]
        for st in states:
            st.owner = owner
        try:
            for p in planned:
                self.dp.send_request(p.rid, p.req.input_ids, p.req)
            if obj.stream:
                multi = len(states) > 1
                while True:
                    await event.wait()
                    event.clear()
                    done = all(st.finished for st in states)  # before yielding: later updates re-set the event
                    for st in states:
                        self._raise_if_failed(st)
                        if st.updated:
                            yield st.response(with_index=multi, incremental=incremental)
                    if done:
                        return
            else:
                while not all(st.finished for st in states):
                    await event.wait()
                    event.clear()
                for st in states:
                    self._raise_if_failed(st)
                results = [st.response() for st in states]
                yield results[0] if single else results
        finally:
            for st in states:
                rid = st.rid
                if st.finished:
                    if self._states.get(rid) is st:
                        del self._states[rid]
                elif self.dead_reason is None:
                    # the state stays registered until the scheduler's abort output arrives (logged, counted)
                    self.dp.broadcast(AbortReq(rid))  # synchronous: safe inside a cancelled task

    async def plan(self, obj: GenerateReqInput, text_field: str = "text") -> tuple[list[PlannedReq], bool]:
        """``plan_requests`` with the server's limits; a large request is tokenized on a worker thread, so the event
        loop (every other client, /health) never waits for it.

        Raises:
            InvalidRequestError: as ``plan_requests``.
        """
        args = (obj, self.tokenizer, self.context_len, self.vocab_size, text_field)
        limits = {
            "max_prompt_chars": self.max_prompt_chars,
            "max_prompts": self.server_args.max_prompts_per_request,
            "lora_adapters": self.lora_adapters,
        }
        texts = [obj.text] if isinstance(obj.text, str) else obj.text if isinstance(obj.text, list) else []
        if sum(len(t) for t in texts if isinstance(t, str)) > _INLINE_TOKENIZE_CHARS:
            return await asyncio.to_thread(plan_requests, *args, **limits)
        return plan_requests(*args, **limits)

    async def abort_request(self, rid: str, abort_all: bool = False, owner: Any = None) -> bool:
        """Abort a running request by its rid (or every sample of an n>1 request by the rid it was given), or with
        ``abort_all`` every request; an aborted request finishes with ``finish_reason.type == "abort"``.

        With API keys, ``owner`` (the caller's KeyPolicy) aborts only the requests it sent, unless it is an admin;
        ``abort_all`` is an admin's. Returns False when no such request (of the caller's) is in flight.
        """
        admin = owner is None or owner.admin
        if abort_all:
            if not admin:
                return False
            self.dp.broadcast(AbortReq("", abort_all=True))
            return True
        targets = [
            st for st in self._states.values() if (st.rid == rid or st.group == rid) and (admin or st.owner is owner)
        ]
        for st in targets:
            self.dp.broadcast(AbortReq(st.rid))
        return bool(targets)

    async def flush_cache(self) -> bool:
        """Drop the radix cache; False while requests are queued or running.

        Raises:
            ServerUnavailableError: not ready / a process died. TimeoutError: no answer in 30 s.
        """
        reply = await self._control(FlushCacheReq(), FlushCacheOut)
        return bool(reply.success)

    async def profile(self, req: ProfileReq) -> ProfileOut:
        """Start or stop the scheduler's torch profiler (``/start_profile``, ``/stop_profile``).

        Raises:
            ServerUnavailableError: not ready / a process died. TimeoutError: no answer in 30 s.
        """
        reply = await self._control(req, ProfileOut)
        assert isinstance(reply, ProfileOut)
        return reply

    async def update_lora(self, msg: LoadLoRAAdapterReq | UnloadLoRAAdapterReq) -> LoRAUpdateOut:
        """Load or unload a LoRA adapter (``/load_lora_adapter``, ``/unload_lora_adapter``); one update at a time.

        An unloaded name is refused to new requests at once; the reply comes when the adapter's last running request
        has finished (no time limit). The reply's ``loaded_adapters`` becomes ``lora_adapters``.

        Raises:
            ServerUnavailableError: not ready / a process died. TimeoutError: a load not answered in 30 s.
        """
        if isinstance(msg, UnloadLoRAAdapterReq) and self.lora_adapters is not None:
            self.lora_adapters.pop(msg.lora_name, None)
        timeout = _CONTROL_TIMEOUT if isinstance(msg, LoadLoRAAdapterReq) else None
        reply = await self._control(msg, LoRAUpdateOut, timeout)
        assert isinstance(reply, LoRAUpdateOut)
        if self.lora_adapters is not None:
            self.lora_adapters = dict(reply.loaded_adapters)
        return reply

    async def _control(self, msg: msgspec.Struct, reply_type: type, timeout: float | None = _CONTROL_TIMEOUT) -> Any:
        """Send a control request to every scheduler replica and wait (``timeout`` seconds; None: no limit) for
        their replies of ``reply_type`` (one request at a time per type). Returns the first reply that failed
        (``success`` False), else the first one."""
        self.check_available()
        async with self._control_locks[reply_type]:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._control_futures[reply_type] = fut
            self._control_replies[reply_type] = []
            self.dp.broadcast(msg)
            replies = await asyncio.wait_for(fut, timeout)
            return next((r for r in replies if not getattr(r, "success", True)), replies[0])

    async def get_scheduler_stats(self) -> list[SchedulerStats]:
        """Each scheduler replica's current load and KV usage (asked now, not the last piggybacked value), by
        ``dp_rank``.

        Raises:
            ServerUnavailableError: not ready / a process died. TimeoutError: no answer in 30 s.
        """
        self.check_available()
        req_id = uuid.uuid4().hex
        fut: asyncio.Future[list[SchedulerStats]] = asyncio.get_running_loop().create_future()
        self._info_futures[req_id] = fut
        self._info_replies[req_id] = []
        try:
            self.dp.broadcast(GetInfoReq(req_id))
            stats = await asyncio.wait_for(fut, _CONTROL_TIMEOUT)
            return sorted(stats, key=lambda s: s.dp_rank)
        finally:
            self._info_futures.pop(req_id, None)
            self._info_replies.pop(req_id, None)

    # ------------------------------------------------------------------ internals
    def _new_state(self, p: PlannedReq, event: asyncio.Event) -> RequestState:
        st = self._states[p.rid] = RequestState(p, self.tokenizer, event)
        return st

    @staticmethod
    def _raise_if_failed(st: RequestState) -> None:
        if st.error is None:
            return
        status, message, param = st.error
        if status == 400:
            raise InvalidRequestError(param, message)
        if status == 503:
            raise ServerUnavailableError(message)
        raise RequestFailedError(status, message)

    def _drain(self) -> None:
        """Handle every message queued on the receive socket; never blocks. ZeroMQ's descriptor only signals that
        the socket's state may have changed, and reading ``ZMQ_EVENTS`` re-arms it: messages are read while
        ``ZMQ_EVENTS`` says one is queued."""
        sock = self._recv_sock
        while has_message(sock):
            raw = sock.recv(zmq.NOBLOCK, copy=False)
            try:
                msg = self._decoder.decode(raw.buffer)
                self._handlers[type(msg)](msg)
            except Exception:  # noqa: BLE001 - one bad message must not stop the server
                logger.exception("tokenizer manager: failed to handle a message")

    def _on_ready(self, msg: SchedulerReady) -> None:
        """A scheduler replica has loaded the model; the server is ready when all have."""
        self._ready_ranks.add(msg.dp_rank)
        self.max_total_tokens += msg.max_total_tokens  # summed over the replicas
        if len(self._ready_ranks) < self.dp.size:
            return
        self.context_len = msg.context_len
        self.vocab_size = msg.vocab_size
        self.memory_report = msg.memory
        self.eos_token_ids = list(msg.eos_token_ids)
        self.lora_adapters = None if msg.lora_adapters is None else dict(msg.lora_adapters)
        self.max_prompt_chars = max_prompt_chars(self.tokenizer, msg.context_len)
        self.is_ready = self.dead_reason is None
        self._ready_event.set()
        logger.info(
            "server ready: context %d, vocab %d, KV pool %d tokens", msg.context_len, msg.vocab_size,
            msg.max_total_tokens,
        )

    def _on_batch(self, msg: BatchStrOut) -> None:
        if msg.stats is not None:
            self._on_stats(msg.stats)
        for out, text in zip(msg.outputs, msg.texts, strict=True):
            st = self._states.get(out.rid)
            if st is None:
                continue  # aborted by its consumer, or a late output
            st.apply(out, text)
            if st.finish_reason is not None:
                del self._states[out.rid]
                self.dp.finished(out.rid)
                self._log_finished(st)

    def _on_error(self, msg: ErrorOut) -> None:
        st = self._states.pop(msg.rid, None)
        self.dp.finished(msg.rid)
        if st is not None:
            st.fail(msg.status, msg.message, msg.param)
            self._log_finished(st)

    def _on_control_reply(self, msg: FlushCacheOut | ProfileOut | LoRAUpdateOut) -> None:
        fut = self._control_futures.get(type(msg))
        replies = self._control_replies.get(type(msg))
        if fut is None or fut.done() or replies is None:
            return
        replies.append(msg)
        if len(replies) == self.dp.size:
            fut.set_result(replies)

    def _on_info(self, msg: InfoOut) -> None:
        self._on_stats(msg.stats)
        fut = self._info_futures.get(msg.req_id)
        replies = self._info_replies.get(msg.req_id)
        if fut is None or fut.done() or replies is None:
            return
        replies.append(msg.stats)
        if len(replies) == self.dp.size:
            fut.set_result(replies)

    def _on_stats(self, stats: SchedulerStats) -> None:
        self._stats[stats.dp_rank] = stats
        if self.metrics is not None:
            self.metrics.observe_stats(combine_stats(list(self._stats.values())))

    def _log_finished(self, st: RequestState) -> None:
        """Charge the request's tokens to its API key; one structured (JSON) log line and its metrics (unless
        ``log_metrics`` is off)."""
        if st.owner is not None and self.charge_tokens is not None:
            self.charge_tokens(st.owner, st.prompt_tokens + st.completion_tokens)
        if not st.log_metrics:
            return
        ttft = None if st.first_token_time is None else st.first_token_time - st.created
        e2e = st.e2e_latency()
        finish = "error" if st.error is not None or st.finish_reason is None else st.finish_reason.type
        record = {
            "rid": st.rid,
            **({"session_id": st.session_id} if st.session_id is not None else {}),
            "finish_reason": finish,
            "prompt_tokens": st.prompt_tokens,
            "completion_tokens": st.completion_tokens,
            "cached_tokens": st.cached_tokens,
            "ttft_s": None if ttft is None else round(ttft, 6),
            "e2e_s": round(e2e, 6),
        }
        logger.info("request finished %s", json.dumps(record))
        if self.metrics is not None:
            self.metrics.observe_finished(finish, st.prompt_tokens, st.completion_tokens, st.cached_tokens, ttft, e2e)
