"""RequestState: the one output accumulator, used by the offline Engine and the server's TokenizerManager.

It folds a request's output deltas (``ReqOutput``: new token ids, counts, logprobs, finish reason) and their text
deltas (from ``detokenizer.Detokenizer``, which holds back text that may still become a stop string and trims
the matched one) into the native ``/generate`` response, and keeps the timestamps for metrics. Torch-free.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from radixgen.runtime.generate_request import PlannedReq
from radixgen.runtime.io_struct import FinishReason, ReqOutput
from radixgen.runtime.logprob_lists import LogprobAccumulator


class RequestState:
    """One request's accumulated output.

    Args:
        planned: the planned request (rid, index in its batch / n>1 list, the rid the client gave, options).
        tokenizer: decodes single tokens for ``return_text_in_logprobs``.
        event: set whenever this request gets an update (the server's waiter; None in the offline Engine).

    Attributes:
        text / output_ids: cumulative output (``text`` never contains a text that may still become a stop string).
        finish_reason: None while running. error: ``(http_status, message, param)`` if the request failed.
        updated: True when an output arrived since the last ``response()`` (the scheduler spaces a request's
            outputs by ``stream_interval``: ``Req.output_due``), or the request failed.
        created / first_token_time / finished_time: ``time.perf_counter()`` seconds.
    """

    def __init__(self, planned: PlannedReq, tokenizer: Any, event: asyncio.Event | None = None) -> None:
        self.rid = planned.rid
        self.group = planned.base_rid
        self.session_id = planned.session_id
        self.log_metrics = planned.log_metrics
        self.owner: Any = None  # the API key policy that sent it (server with keys)
        self.index = planned.index
        self.event = event
        self.return_logprob = planned.req.return_logprob
        self.text = ""
        self.output_ids: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.prompt_tokens = len(planned.req.input_ids)
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.jump_forward_tokens = 0
        self.spec_verify_ct = 0
        self.spec_accepted_tokens = 0
        self.error: tuple[int, str, str | None] | None = None
        self.updated = False
        self._sent_ids = self._sent_text = 0  # what the last response() covered (for incremental deltas)
        self.created = time.perf_counter()
        self.first_token_time: float | None = None
        self.finished_time: float | None = None
        self.logprobs = LogprobAccumulator(
            tokenizer, planned.return_text_in_logprobs, bool(planned.req.token_ids_logprob)
        )

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
        self.spec_verify_ct = out.spec_verify_ct
        self.spec_accepted_tokens = out.spec_accepted_tokens
        if self.return_logprob:
            self.logprobs.extend(out)
        if out.finish_reason is not None:
            self.finish_reason = out.finish_reason
            self.finished_time = now
        self._updated()

    def fail(self, status: int, message: str, param: str | None = None) -> None:
        """Mark the request failed (rejected by the scheduler: ``param`` names the field; or the server is going
        down)."""
        if self.error is None and self.finish_reason is None:
            self.error = (status, message, param)
            self.finished_time = time.perf_counter()
        self._updated()

    def _updated(self) -> None:
        self.updated = True
        if self.event is not None:
            self.event.set()

    def e2e_latency(self) -> float:
        """Seconds from arrival to finish (or to now while running)."""
        return (self.finished_time or time.perf_counter()) - self.created

    def response(self, with_index: bool = False, incremental: bool = False) -> dict[str, Any]:
        """The native response ``{"text", "output_ids", "meta_info"}`` (plus ``"index"`` if asked).

        meta_info: ``id``, ``finish_reason`` (``FinishReason.to_json()`` or None), ``prompt_tokens``,
        ``completion_tokens``, ``cached_tokens``, ``jump_forward_tokens`` (outputs appended by grammar
        jump-forward without a forward each), ``e2e_latency`` (seconds), with speculative decoding ``spec_verify_ct``
        and ``spec_accept_length`` (tokens emitted per decode-phase target forward), and the logprob lists (entries
        ``[logprob, token_id, text or None]``) with ``output_token_logprobs_length`` when logprobs were asked for.
        With ``incremental`` (SGLang's ``--incremental-streaming-output``) ``text``, ``output_ids`` and the output
        logprob lists hold only what is new since the previous response.
        """
        ids_from, text_from = (self._sent_ids, self._sent_text) if incremental else (0, 0)
        self._sent_ids, self._sent_text = len(self.output_ids), len(self.text)
        self.updated = False
        meta: dict[str, Any] = {
            "id": self.rid,
            "finish_reason": None if self.finish_reason is None else self.finish_reason.to_json(),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "jump_forward_tokens": self.jump_forward_tokens,
            "e2e_latency": self.e2e_latency(),
        }
        if self.spec_verify_ct:  # speculative decoding (SGLang's fields): tokens per decode-phase target forward
            meta["spec_verify_ct"] = self.spec_verify_ct
            meta["spec_accept_length"] = (self.spec_verify_ct + self.spec_accepted_tokens) / self.spec_verify_ct
        if self.return_logprob:
            meta.update(self.logprobs.meta(ids_from))
        out: dict[str, Any] = {
            "text": self.text[text_from:],
            "output_ids": self.output_ids[ids_from:],
            "meta_info": meta,
        }
        if with_index:
            out["index"] = self.index
        return out
