"""The prefill server's side of disaggregation: compute fetched prompts' KV and stream it to decode servers.

``PrefillKVSender`` binds a ROUTER socket at ``tcp://<host>:<disaggregation_bootstrap_port>`` and is polled by the
scheduler process's loop. A ``KVFetch`` becomes an ordinary scheduler request for the fetched ids with
``max_new_tokens = 0`` (an extend and nothing else; its outputs never leave this process). When it finishes, its KV
is in this server's radix cache: the sender locks that prefix (so it cannot be evicted while it is read), sends it
one ``PAGE_TOKENS`` page per loop iteration, then ``KVDone``, and unlocks it on the decode side's ``KVAck``. The
prefix stays in the radix cache afterwards (evictable: a later fetch or request with the same prefix reuses it).

Failure (DistServe / Splitwise leave it to the transport; SGLang's senders time out): a send to a decode server
that has gone away fails at once (``ROUTER_MANDATORY``: EHOSTUNREACH), and a decode server that stops answering is
given up after ``disaggregation_transfer_timeout`` seconds without its ack. Either way the prefix is unlocked, the
request's KV is back in the cache (evictable) and the server keeps serving.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import zmq

from radixgen.runtime.disaggregation.transfer import (
    ENCODER,
    PAGE_TOKENS,
    TO_PREFILL,
    KVAccepted,
    KVAck,
    KVDone,
    KVError,
    KVFetch,
    KVLayout,
    KVPage,
    read_page,
)
from radixgen.runtime.errors import InvalidRequestError
from radixgen.runtime.io_struct import AbortReq, ReqOutput, TokenizedGenerateReq
from radixgen.runtime.ipc import BUSY_POLL_MS, IDLE_POLL_MS
from radixgen.runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

# test hook: seconds between two pages of a transfer (exercises a decode server dying mid-transfer)
PAGE_DELAY_ENV = "RADIXGEN_TEST_PD_PAGE_DELAY"


@dataclass
class _Outgoing:
    """One fetch: computing (``node`` None), then sending pages from ``next_offset``, then awaiting the ack."""

    identity: bytes
    fetch: KVFetch
    rid: str
    deadline: float
    node: Any = None  # the locked radix node of the computed prefix
    slots: Any = None  # int64 [len(input_ids)]: the prefix's KV slots
    next_offset: int = 0
    next_page_at: float = 0.0
    done_sent: bool = False
    started: float = field(default_factory=time.monotonic)


class PrefillKVSender:
    """Serves ``KVFetch`` requests from decode servers (see the module docstring).

    Args:
        scheduler: the process's Scheduler (its requests, radix cache and KV pool are used).
        server_args: ``host``, ``disaggregation_bootstrap_port`` and ``disaggregation_transfer_timeout`` are read.
        ctx: the process's ZeroMQ context.

    Raises:
        zmq.ZMQError: the bootstrap port cannot be bound (the scheduler process then fails to start).
    """

    def __init__(self, scheduler: Any, server_args: Any, ctx: zmq.Context[Any]) -> None:
        self.scheduler = scheduler
        self.pool = scheduler.runner.token_to_kv_pool
        self.layout = KVLayout.of(self.pool)
        self.timeout = float(server_args.disaggregation_transfer_timeout)
        self.page_delay = float(os.environ.get(PAGE_DELAY_ENV, "0") or 0)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a peer that has gone away raises EHOSTUNREACH
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://{server_args.host}:{server_args.disaggregation_bootstrap_port}")
        self.transfers: dict[tuple[bytes, int], _Outgoing] = {}
        self.by_rid: dict[str, _Outgoing] = {}  # transfers whose request is computing
        self.own: set[str] = set()  # rids of this sender's live scheduler requests (their outputs are dropped)
        self.num_transfers = 0  # completed (acked) transfers
        logger.info("disaggregation: prefill server, KV bootstrap port %d", server_args.disaggregation_bootstrap_port)

    def idle_ms(self) -> int:
        """How long the loop may block on its sockets when the scheduler has no work: 0 while a page is due,
        ``BUSY_POLL_MS`` while transfers wait (on their extend, a test page delay or an ack), else ``IDLE_POLL_MS``."""
        if not self.transfers:
            return IDLE_POLL_MS
        now = time.monotonic()
        due = any(t.node is not None and not t.done_sent and now >= t.next_page_at for t in self.transfers.values())
        return 0 if due else BUSY_POLL_MS

    def poll(self) -> None:
        """Handle every queued fetch / ack, send the next page of each transfer, give up on timed-out ones."""
        while True:
            try:
                identity, raw = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = TO_PREFILL.decode(raw)
            except Exception:  # noqa: BLE001 - a malformed message must not stop the server
                logger.warning("disaggregation: dropped a malformed message from a decode server")
                continue
            if isinstance(msg, KVFetch):
                self._on_fetch(identity, msg)
            else:
                self._on_ack(identity, msg)
        now = time.monotonic()
        for t in list(self.transfers.values()):
            if t.node is None:
                continue  # computing: the decode side's own timeout (its KVAck(ok=False)) bounds the wait
            if not t.done_sent and now >= t.next_page_at:
                self._send_page(t, now)
            elif now > t.deadline:
                self._end(t, f"no answer from the decode server for {self.timeout:g} s")

    def take_outputs(self, outputs: list[ReqOutput]) -> list[ReqOutput]:
        """Remove the outputs of this sender's requests from a scheduler step's ``outputs`` (they go to no client);
        a finished one starts sending its pages. Returns the others."""
        rest = []
        for out in outputs:
            if out.rid not in self.own:
                rest.append(out)
                continue
            if out.finish_reason is None:
                continue
            self.own.discard(out.rid)
            t = self.by_rid.pop(out.rid, None)
            if t is not None:
                self._computed(t, out)
        return rest

    # ------------------------------------------------------------------ internals
    def _on_fetch(self, identity: bytes, fetch: KVFetch) -> None:
        key = (identity, fetch.room)
        ids = fetch.input_ids
        runner = self.scheduler.runner
        error = None
        if key in self.transfers:
            error = f"room {fetch.room} is already in use"
        elif not ids or len(ids) >= runner.context_len or not 0 <= fetch.start < len(ids):
            error = f"bad fetch: {len(ids)} ids (context {runner.context_len}), start {fetch.start}"
        elif min(ids) < 0 or max(ids) >= runner.vocab_size:
            error = f"bad fetch: token ids must be in [0, {runner.vocab_size})"
        rid = f"pd-prefill-{fetch.room}-{uuid.uuid4().hex[:8]}"
        if error is None:
            try:
                params = SamplingParams(max_new_tokens=0)
                self.scheduler.add_request(TokenizedGenerateReq(rid, list(ids), params))
            except InvalidRequestError as e:
                error = e.message
        if error is not None:
            self._send(identity, KVError(fetch.room, error))
            return
        t = _Outgoing(identity, fetch, rid, deadline=time.monotonic() + self.timeout, next_offset=fetch.start)
        self.transfers[key] = self.by_rid[rid] = t
        self.own.add(rid)
        if not self._send(identity, KVAccepted(fetch.room, self.layout)):
            self._end(t, "the decode server has gone away")

    def _computed(self, t: _Outgoing, out: ReqOutput) -> None:
        """The fetch's extend finished: lock its prefix in the radix cache and start sending."""
        reason = out.finish_reason
        if reason is None or reason.type == "abort":
            self._end(t, f"prefill failed: {reason.message if reason else 'no result'}", notify=True)
            return
        match = self.scheduler.tree_cache.match_prefix(t.fetch.input_ids)
        if int(match.indices.numel()) != len(t.fetch.input_ids):  # cannot happen: nothing ran since the insert
            self._end(t, "the computed prefix is not in the radix cache", notify=True)
            return
        self.scheduler.tree_cache.inc_lock_ref(match.last_node)
        t.node, t.slots = match.last_node, match.indices
        t.deadline = time.monotonic() + self.timeout

    def _send_page(self, t: _Outgoing, now: float) -> None:
        n = min(PAGE_TOKENS, len(t.fetch.input_ids) - t.next_offset)
        room = t.fetch.room
        if n > 0:
            frames = read_page(self.pool, t.slots[t.next_offset : t.next_offset + n])
            ok = self._send(t.identity, KVPage(room, t.next_offset, n), frames)
            t.next_offset += n
        else:
            ok = self._send(t.identity, KVDone(room))
            t.done_sent = True
        if not ok:
            self._end(t, "the decode server has gone away")
            return
        t.next_page_at = now + self.page_delay
        t.deadline = now + self.timeout

    def _on_ack(self, identity: bytes, ack: KVAck) -> None:
        t = self.transfers.get((identity, ack.room))
        if t is None:
            return
        if ack.ok:
            self.num_transfers += 1
            elapsed = time.monotonic() - t.started
            logger.info("disaggregation: sent room %d (%d tokens) in %.3f s", ack.room, len(t.fetch.input_ids), elapsed)
            self._end(t, None)
        else:
            self._end(t, "the decode server abandoned the transfer")

    def _end(self, t: _Outgoing, failure: str | None, notify: bool = False) -> None:
        """Forget a transfer: unlock its prefix (or abort its request while it computes); log a failure."""
        self.transfers.pop((t.identity, t.fetch.room), None)
        if t.node is not None:
            self.scheduler.tree_cache.dec_lock_ref(t.node)
            t.node = None
        elif self.by_rid.pop(t.rid, None) is not None:
            self.scheduler.abort_request(AbortReq(t.rid))  # its abort output is dropped by take_outputs
        if failure is not None:
            logger.warning("disaggregation: transfer of room %d failed: %s", t.fetch.room, failure)
            if notify:
                self._send(t.identity, KVError(t.fetch.room, failure))

    def _send(self, identity: bytes, header: Any, frames: list[Any] | None = None) -> bool:
        """Send a header (and frames) to a decode server; False if it has gone away."""
        try:
            self.sock.send_multipart([identity, ENCODER.encode(header), *(frames or [])], copy=False)
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            return False
        return True
