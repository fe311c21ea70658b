"""ServerReqState: the tokenizer manager's record of one request in flight.

It folds the detokenizer's outputs (token-id deltas with their already detokenized, stop-trimmed text deltas)
into the native /generate response — the same shape as ``RequestState.response()`` of the offline Engine —
and keeps the timestamps for metrics. Torch-free; no detokenization of the output text happens here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from radixgen.runtime.io_struct import ReqOutput
from radixgen.runtime.logprob_lists import LogprobAccumulator


class ServerReqState:
    """One request's accumulated output.

    Args:
        rid: request id. index: position in its batch / n>1 result list. group: the rid the client gave (an
            n>1 request's samples share it).
        prompt_len: prompt length in tokens. return_logprob / return_text_in_logprobs: as requested.
        event: set whenever this request (or another of the same generate call) gets an update.
        tokenizer: decodes single tokens for ``return_text_in_logprobs``.

    Attributes:
        error: ``(http_status, message)`` if the scheduler rejected the request or the server failed.
        updated: True since the last ``response()`` when new output arrived.
        created / first_token_time / finished_time: ``time.perf_counter()`` seconds.
    """

    def __init__(
        self,
        rid: str,
        index: int,
        prompt_len: int,
        event: asyncio.Event,
        tokenizer: Any,
        return_logprob: bool = False,
        return_text_in_logprobs: bool = False,
        group: str | None = None,
    ) -> None:
        self.rid = rid
        self.group = group or rid
        self.index = index
        self.event = event
        self.tokenizer = tokenizer
        self.return_logprob = return_logprob
        self.return_text_in_logprobs = return_text_in_logprobs
        self.text = ""
        self.output_ids: list[int] = []
        self.finish_reason: dict[str, Any] | None = None
        self.prompt_tokens = prompt_len
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.jump_forward_tokens = 0
        self.error: tuple[int, str] | None = None
        self.updated = False
        self.created = time.perf_counter()
        self.first_token_time: float | None = None
        self.finished_time: float | None = None
        self.logprobs = LogprobAccumulator(tokenizer, return_text_in_logprobs)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def apply(self, out: ReqOutput, text_delta: str) -> None:
        """Fold one output delta (and its text delta) in and wake the waiter."""
        now = time.perf_counter()
        if out.new_token_ids:
            if self.first_token_time is None:
                self.first_token_time = now
            self.output_ids.extend(out.new_token_ids)
        self.text += text_delta
        self.prompt_tokens = out.prompt_tokens
        self.completion_tokens = out.completion_tokens
        self.cached_tokens = out.cached_tokens
        self.jump_forward_tokens = out.jump_forward_tokens
        if self.return_logprob:
            self.logprobs.extend(out)
        if out.finish_reason is not None:
            self.finish_reason = out.finish_reason
            self.finished_time = now
        self.updated = True
        self.event.set()

    def fail(self, status: int, message: str) -> None:
        """Mark the request failed (rejected by the scheduler, or the server is going down)."""
        if self.error is None and self.finish_reason is None:
            self.error = (status, message)
            self.finished_time = time.perf_counter()
        self.updated = True
        self.event.set()

    def e2e_latency(self) -> float:
        """Seconds from arrival to finish (or to now while running)."""
        return (self.finished_time or time.perf_counter()) - self.created

    def response(self, with_index: bool = False) -> dict[str, Any]:
        """The native response: ``{"text", "output_ids", "meta_info"}`` (plus ``"index"`` if asked)."""
        self.updated = False
        meta: dict[str, Any] = {
            "id": self.rid,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "jump_forward_tokens": self.jump_forward_tokens,
            "e2e_latency": self.e2e_latency(),
        }
        if self.return_logprob:
            meta.update(self.logprobs.meta())
        out: dict[str, Any] = {"text": self.text, "output_ids": list(self.output_ids), "meta_info": meta}
        if with_index:
            out["index"] = self.index
        return out
