"""The detokenizer process: token-id deltas in, text deltas out (torch-free).

For each request (announced by a DetokRegister) it keeps an IncrementalDetokenizer and, when the request has
stop strings, holds back text that could still become a stop string, so the text deltas it sends are
append-only and never contain a stop string (unless ``no_stop_trim``). When the request finishes on a stop
string the final delta is cut there, exactly as ``RequestState`` does in the offline Engine. Messages other than
BatchTokenOut (ready, errors, replies) are forwarded unchanged, keeping their order with the outputs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import zmq

from radixgen.runtime.detokenizer import IncrementalDetokenizer, StopStringMatcher, text_token_ids, trim_stop
from radixgen.runtime.io_struct import BatchStrOut, BatchTokenOut, DetokRegister, ReqOutput, SchedulerOutput
from radixgen.runtime.ipc import ENCODER, IDLE_POLL_MS, IpcEndpoints, parent_alive, pull_socket, push_socket
from radixgen.runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)


class DetokState:
    """Incremental text of one request.

    Args:
        reg: the request's detokenization options.
        tokenizer: anything with a Hugging Face-style ``decode``.
    """

    def __init__(self, reg: DetokRegister, tokenizer: Any) -> None:
        self.detok = IncrementalDetokenizer(
            tokenizer,
            prompt_ids=reg.prompt_tail,
            skip_special_tokens=reg.skip_special_tokens,
            spaces_between_special_tokens=reg.spaces_between_special_tokens,
        )
        self.matcher = StopStringMatcher(reg.stop) if reg.stop else None
        self.no_stop_trim = reg.no_stop_trim
        self.pending = ""  # decoded text not sent yet (it may still turn into a stop string)

    def step(self, out: ReqOutput) -> str:
        """The text delta to send for one output."""
        text = self.pending + self.detok.append(
            text_token_ids(out.new_token_ids, out.finish_reason, self.no_stop_trim)
        )
        if out.finish_reason is not None:
            text += self.detok.finish()
            self.pending = ""
            matched = out.finish_reason.get("matched")
            # nothing sent so far contains a stop string, so the first one is in this final text
            return trim_stop(text, matched, self.no_stop_trim) if isinstance(matched, str) and matched else text
        if self.matcher is None:
            return text
        safe = self.matcher.safe_prefix_len(text)
        self.pending = text[safe:]
        return text[:safe]


class Detokenizer:
    """Per-request detokenization state and the message handlers (separate from the sockets, for tests)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, DetokState] = {}

    def register(self, reg: DetokRegister) -> None:
        self.states[reg.rid] = DetokState(reg, self.tokenizer)

    def process(self, batch: BatchTokenOut) -> BatchStrOut:
        """Text deltas for one scheduler step; finished requests are forgotten."""
        texts: list[str] = []
        for out in batch.outputs:
            st = self.states.get(out.rid)
            if st is None:  # not registered (should not happen): decode without context or stop strings
                st = self.states[out.rid] = DetokState(DetokRegister(out.rid, []), self.tokenizer)
            texts.append(st.step(out))
            if out.finish_reason is not None:
                del self.states[out.rid]
        return BatchStrOut(batch.outputs, texts, batch.stats)


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
        while parent_alive(parent_pid):
            if not recv.poll(IDLE_POLL_MS):
                continue
            raw = recv.recv(copy=False)
            msg = decoder.decode(raw.buffer)
            if isinstance(msg, BatchTokenOut):
                send.send(ENCODER.encode(detok.process(msg)), copy=False)
            elif isinstance(msg, DetokRegister):
                detok.register(msg)
            else:
                send.send(raw, copy=False)  # ready / error / reply: forward as is
        logger.info("detokenizer: the HTTP process is gone; exiting")
    except Exception:  # noqa: BLE001 - log whatever killed the detokenizer, then exit non-zero
        logger.exception("detokenizer process failed")
        sys.exit(1)
    finally:
        ctx.destroy(linger=0)
