"""RequestState: accumulates a request's output deltas into the native /generate response shape.

Torch-free: used in-process by the offline Engine and, in the server, on the tokenizer-manager side.
"""

from __future__ import annotations

import time
from typing import Any

from radixgen.runtime.detokenizer import IncrementalDetokenizer, text_token_ids, trim_stop
from radixgen.runtime.io_struct import ReqOutput
from radixgen.runtime.logprob_lists import LogprobAccumulator
from radixgen.runtime.sampling_params import SamplingParams


class RequestState:
    """Collects ``ReqOutput`` deltas for one request.

    ``text`` is detokenized incrementally; when the request stops on a stop string the text is cut there, and
    a stop token's (eos or stop_token_ids) text is left out (both unless ``no_stop_trim``). ``response()``
    gives ``{"text", "output_ids", "meta_info"}`` with meta_info
    ``{"id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "e2e_latency",
    "jump_forward_tokens"}`` (outputs appended by grammar jump-forward without a forward each) plus the
    logprob lists (entries ``[logprob, token_id, text or None]``) when logprobs were asked for.
    """

    def __init__(
        self,
        rid: str,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: Any,
        return_logprob: bool = False,
        return_text_in_logprobs: bool = False,
    ) -> None:
        self.rid = rid
        self.params = params
        self.tokenizer = tokenizer
        self.return_logprob = return_logprob
        self.return_text_in_logprobs = return_text_in_logprobs
        self.detok = IncrementalDetokenizer(
            tokenizer,
            prompt_ids=prompt_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )
        self.output_ids: list[int] = []
        self.text = ""
        self.finish_reason: dict[str, Any] | None = None
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.jump_forward_tokens = 0
        self.start = time.perf_counter()
        self.first_token_time: float | None = None
        self.end: float | None = None
        self.logprobs = LogprobAccumulator(tokenizer, return_text_in_logprobs)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def apply(self, out: ReqOutput) -> None:
        """Fold one delta in."""
        if out.new_token_ids:
            if self.first_token_time is None:
                self.first_token_time = time.perf_counter()
            self.output_ids.extend(out.new_token_ids)
            self.text += self.detok.append(
                text_token_ids(out.new_token_ids, out.finish_reason, self.params.no_stop_trim)
            )
        self.completion_tokens = out.completion_tokens
        self.cached_tokens = out.cached_tokens
        self.jump_forward_tokens = out.jump_forward_tokens
        if self.return_logprob:
            self.logprobs.extend(out)
        if out.finish_reason is not None:
            self.finish_reason = out.finish_reason
            self.end = time.perf_counter()
            self.text += self.detok.finish()
            matched = out.finish_reason.get("matched")
            if isinstance(matched, str):
                self.text = trim_stop(self.text, matched, self.params.no_stop_trim)

    def response(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": self.rid,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "e2e_latency": (self.end or time.perf_counter()) - self.start,
            "jump_forward_tokens": self.jump_forward_tokens,
        }
        if self.return_logprob:
            meta.update(self.logprobs.meta())
        return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": meta}
