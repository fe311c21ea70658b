"""The decode server's side of disaggregation: pull a request's prompt KV from a prefill server into this pool.

A request that arrives with ``bootstrap_host`` / ``bootstrap_port`` (set by the PD router) is held back from the
waiting queue while ``DecodeKVReceiver`` fetches the KV of its cacheable prompt prefix (``prefix_match_key``: all
but the last prompt token) from that prefill server: the part already in this server's radix cache is locked and
not fetched; the rest arrives in ``PAGE_TOKENS`` pages (see ``transfer``), each written into freshly allocated slots
of this pool that the request owns (``req_to_token`` row, like computed KV). On ``KVDone`` the request's KV goes
into the radix cache (``ReqKVManager.release``) and the request joins the waiting queue: its admission matches the
whole prefix, so only the last prompt token is computed here and ``cached_tokens`` reports the transferred prefix.
This is DistServe's / Splitwise's prefill → decode KV migration, with the decode side pulling (SGLang's decode
servers likewise pre-allocate the KV and let the prefill side fill it).

Failures end the request with an ``ErrorOut`` (HTTP 503) and free what it received: a ``KVError`` from the prefill
server, a prefill server that does not answer within ``disaggregation_transfer_timeout`` seconds (unreachable, or
gone mid-transfer), a KV layout that differs (another model). A pool too full for the transfer falls back to
computing the prompt here. Requests without bootstrap fields are computed here as on any server.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from radixgen.runtime.disaggregation.transfer import (
    ENCODER,
    TO_DECODE,
    KVAccepted,
    KVAck,
    KVDone,
    KVError,
    KVFetch,
    KVLayout,
    KVPage,
    write_page,
)
from radixgen.runtime.io_struct import ErrorOut
from radixgen.runtime.ipc import BUSY_POLL_MS
from radixgen.runtime.req import Req
from radixgen.runtime.schedule_policy import prefix_match_key

logger = logging.getLogger(__name__)


@dataclass
class _Incoming:
    """One fetch in flight: ``req`` holds a row whose ``[prefix_len, kv_len)`` slots are the pages received so far."""

    req: Req
    room: int
    sock: Any
    addr: str
    key: list[int]
    deadline: float
    layout: KVLayout | None = None
    started: float = field(default_factory=time.monotonic)


class DecodeKVReceiver:
    """Fetches prompt KV from prefill servers for a decode server's Scheduler (see the module docstring).

    Args:
        scheduler: the process's Scheduler; admitted requests are appended to ``scheduler.waiting``.
        server_args: ``disaggregation_transfer_timeout`` is read.
        ctx: the process's ZeroMQ context (one DEALER socket per prefill server address).

    Counters (cumulative, reported in the scheduler stats): ``num_transfers``, ``transfer_tokens`` and
    ``transfer_seconds`` (wall time from the fetch to the last page written, per transfer, summed).
    """

    def __init__(self, scheduler: Any, server_args: Any, ctx: zmq.Context[Any]) -> None:
        self.scheduler = scheduler
        self.kv = scheduler.kv
        self.pool = scheduler.runner.token_to_kv_pool
        self.layout = KVLayout.of(self.pool)
        self.timeout = float(server_args.disaggregation_transfer_timeout)
        self.ctx = ctx
        self.socks: dict[str, Any] = {}
        self.poller = zmq.Poller()
        self.pending: dict[int, _Incoming] = {}  # room → transfer
        self.rooms: dict[str, int] = {}  # rid → room
        self.errors: list[ErrorOut] = []  # failed requests, sent by the scheduler loop
        self._next_room = random.SystemRandom().getrandbits(56)  # SGLang's bootstrap_room: a random id
        self.num_transfers = 0
        self.transfer_tokens = 0
        self.transfer_seconds = 0.0

    def queued(self) -> list[Req]:
        """The requests waiting for their KV (they hold a row and the pages received so far)."""
        return [t.req for t in self.pending.values()]

    def take_errors(self) -> list[ErrorOut]:
        """The ErrorOut of every request failed since the last call."""
        errors, self.errors = self.errors, []
        return errors

    def add(self, req: Req, host: str, port: int) -> bool:
        """Start fetching ``req``'s uncached prompt prefix from the prefill server ``host:port``. False (nothing
        started) when there is nothing to fetch or no request row is free: the caller queues it as usual."""
        key = prefix_match_key(req)
        match = self.kv.tree_cache.match_prefix(key, req.lora_uid)
        if len(key) <= int(match.indices.numel()) or self.kv.req_to_token_pool.available_size() == 0:
            return False
        self.kv.lock(match)
        self.kv.assign(req, match)
        room = self._next_room
        self._next_room += 1
        addr = f"tcp://{host}:{port}"
        sock = self._socket(addr)
        sock.send(ENCODER.encode(KVFetch(room, key, req.prefix_len)))
        self.pending[room] = _Incoming(req, room, sock, addr, key, time.monotonic() + self.timeout)
        self.rooms[req.rid] = room
        return True

    def remove(self, rid: str) -> bool:
        """Stop fetching for ``rid`` (an abort; the caller releases its KV). False if it is not fetching."""
        room = self.rooms.pop(rid, None)
        if room is None:
            return False
        t = self.pending.pop(room)
        t.sock.send(ENCODER.encode(KVAck(room, False)))
        return True

    def poll(self, idle: bool) -> None:
        """Handle every message that arrived (blocking up to ``BUSY_POLL_MS`` when ``idle``: nothing else to run),
        then fail the transfers that saw no message for ``disaggregation_transfer_timeout`` seconds."""
        if not self.pending:
            return
        if idle:
            self.poller.poll(BUSY_POLL_MS)
        for sock in self.socks.values():
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_message(parts)
        now = time.monotonic()
        for t in list(self.pending.values()):
            if now > t.deadline:
                self._fail(t, f"prefill server {t.addr} did not answer for {self.timeout:g} s", tell_prefill=True)

    # ------------------------------------------------------------------ internals
    def _socket(self, addr: str) -> Any:
        sock = self.socks.get(addr)
        if sock is None:
            sock = self.socks[addr] = self.ctx.socket(zmq.DEALER)
            for opt in (zmq.SNDHWM, zmq.RCVHWM, zmq.LINGER):
                sock.setsockopt(opt, 0)
            sock.connect(addr)
            self.poller.register(sock, zmq.POLLIN)
        return sock

    def _on_message(self, parts: list[Any]) -> None:
        try:
            msg = TO_DECODE.decode(parts[0].buffer)
        except Exception:  # noqa: BLE001 - a malformed message must not stop the server
            logger.warning("disaggregation: dropped a malformed message from a prefill server")
            return
        t = self.pending.get(msg.room)
        if t is None:
            return  # a transfer already ended (aborted, timed out)
        t.deadline = time.monotonic() + self.timeout
        if isinstance(msg, KVAccepted):
            t.layout = msg.layout
            if msg.layout != self.layout:
                self._fail(t, f"the prefill server's KV layout {msg.layout} differs from ours {self.layout}", True)
        elif isinstance(msg, KVError):
            self._fail(t, f"prefill server {t.addr}: {msg.message}")
        elif isinstance(msg, KVPage):
            self._on_page(t, msg, parts[1:])
        elif isinstance(msg, KVDone):
            self._on_done(t)

    def _on_page(self, t: _Incoming, page: KVPage, frames: list[Any]) -> None:
        req = t.req
        if t.layout is None or page.offset != req.kv_len or page.offset + page.num_tokens > len(t.key):
            self._fail(t, f"unexpected KV page at {page.offset} (have {req.kv_len} of {len(t.key)})", True)
            return
        try:
            slots = self.kv.alloc_slots(page.num_tokens)
        except RuntimeError:
            logger.warning("disaggregation: KV pool full; computing %s here", req.rid)
            self._end(t, ok=False)
            self.kv.truncate(req, req.prefix_len)
            self.kv.release(req)
            self.scheduler.waiting.append(req)
            return
        self.kv.write_slots([(req, page.num_tokens)], slots)
        req.kv_len += page.num_tokens
        try:
            write_page(self.pool, t.layout, slots, [f.buffer for f in frames])
        except ValueError as e:
            self._fail(t, f"bad KV page from {t.addr}: {e}", True)

    def _on_done(self, t: _Incoming) -> None:
        req = t.req
        if req.kv_len != len(t.key):
            self._fail(t, f"transfer ended at {req.kv_len} of {len(t.key)} tokens", True)
            return
        received = req.kv_len - req.prefix_len
        elapsed = time.monotonic() - t.started
        self.num_transfers += 1
        self.transfer_tokens += received
        self.transfer_seconds += elapsed
        logger.info("disaggregation: received %d tokens of %s from %s in %.3f s", received, req.rid, t.addr, elapsed)
        self._end(t, ok=True)
        self.kv.release(req)  # the prefix goes into the radix cache; admission matches it
        self.scheduler.waiting.append(req)

    def _fail(self, t: _Incoming, message: str, tell_prefill: bool = False) -> None:
        """End the request with a 503: free the pages it received, its row and its lock."""
        logger.warning("disaggregation: request %s failed: %s", t.req.rid, message)
        self._end(t, ok=False, tell_prefill=tell_prefill)
        req = t.req
        self.kv.truncate(req, req.prefix_len)
        self.kv.release(req)
        self.scheduler._retire(req)  # the scheduler's bookkeeping of a finished request
        self.errors.append(ErrorOut(req.rid, f"disaggregation: {message}", 503))

    def _end(self, t: _Incoming, ok: bool, tell_prefill: bool = True) -> None:
        self.pending.pop(t.room, None)
        self.rooms.pop(t.req.rid, None)
        if tell_prefill:
            t.sock.send(ENCODER.encode(KVAck(t.room, ok)))
