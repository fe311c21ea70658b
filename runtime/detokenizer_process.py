"""The detokenizer process: token-id deltas in, text deltas out (torch-free).

For each request (announced by a DetokRegister) it keeps an IncrementalDetokenizer and, when the request has
stop strings, holds back text that could still become a stop string, so the text deltas it sends are
append-only and never contain a stop string (unless ``no_stop_trim``). When the request finishes on a stop
string the final delta is cut there (``detokenizer.Detokenizer``, which the offline Engine runs in-process). Messages
other than BatchTokenOut (ready, errors, replies) are forwarded unchanged, keeping their order with the outputs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import zmq

from radixgen.runtime.detokenizer import Detokenizer
from radixgen.runtime.io_struct import BatchTokenOut, DetokRegister, ErrorOut, SchedulerOutput
from radixgen.runtime.ipc import ENCODER, IDLE_POLL_MS, IpcEndpoints, parent_alive, pull_socket, push_socket
from radixgen.runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)


def run_detokenizer_process(server_args: ServerArgs, ipc: IpcEndpoints, parent_pid: int) -> None:
    """Entry point of the spawned detokenizer process; serves until the HTTP process is gone.

    Exits with status 1 (after logging the traceback) on any error.
    """
    from radixgen.runtime.fast_tokenizer import load_tokenizer
    from radixgen.runtime.ipc import setup_child_process

    setup_child_process(server_args.log_level, "detokenizer")
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        recv = pull_socket(ctx, ipc.detokenizer)
        send = push_socket(ctx, ipc.tokenizer)
        detok = Detokenizer(load_tokenizer(server_args.resolved_tokenizer_path))
        decoder = msgspec.msgpack.Decoder(SchedulerOutput)
        recv.setsockopt(zmq.RCVTIMEO, IDLE_POLL_MS)  # a blocking receive wakes at least this often (parent check)
        while parent_alive(parent_pid):
            try:
                raw = recv.recv(copy=False)  # one call per message: no poller built per message (Socket.poll)
            except zmq.Again:
                continue
            msg = decoder.decode(raw.buffer)
            if isinstance(msg, BatchTokenOut):
                send.send(ENCODER.encode(detok.process(msg)), copy=False)
            elif isinstance(msg, DetokRegister):
                detok.register(msg)
            else:
                if isinstance(msg, ErrorOut):
                    detok.states.pop(msg.rid, None)  # a request that failed after it was registered
                send.send(raw, copy=False)  # ready / error / reply: forward as is
        logger.info("detokenizer: the HTTP process is gone; exiting")
    except Exception:  # noqa: BLE001 - log whatever killed the detokenizer, then exit non-zero
        logger.exception("detokenizer process failed")
        sys.exit(1)
    finally:
        ctx.destroy(linger=0)
