"""When does a request stop: eos ids, stop_token_ids, stop strings, max_new_tokens (min_new_tokens gates all)."""

from __future__ import annotations

from typing import Any

from radixgen.runtime.detokenizer import IncrementalDetokenizer, StopStringMatcher
from radixgen.runtime.io_struct import FinishReason
from radixgen.runtime.req import Req


class StopChecker:
    """Sets ``req.finished_reason`` after each new token.

    finish_reason: ``{"type": "stop", "matched": token_id}`` for eos / stop_token_ids,
    ``{"type": "stop", "matched": "<stop string>"}`` for a stop string (matched on the incrementally detokenized
    output text, so strings spanning several tokens are found), ``{"type": "stop", "matched": "<pattern>"}`` for a
    stop regex (searched over the whole detokenized output), ``{"type": "length", "length": n}`` at
    max_new_tokens. Before min_new_tokens outputs exist nothing but length can stop a request (eos and stop
    tokens are also suppressed in the sampler then).

    Raises:
        ValueError (from init_req): stop strings without a tokenizer.
    """

    def __init__(self, tokenizer: Any, eos_token_ids: tuple[int, ...]) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)

    def init_req(self, req: Req) -> None:
        if req.sampling_params.stop or req.sampling_params.stop_regex:
            if self.tokenizer is None:
                raise ValueError("stop: stop strings need a tokenizer")
            req.stop_detok = (
                IncrementalDetokenizer(
                    self.tokenizer,
                    prompt_ids=req.origin_input_ids,
                    skip_special_tokens=req.sampling_params.skip_special_tokens,
                    spaces_between_special_tokens=req.sampling_params.spaces_between_special_tokens,
                ),
                StopStringMatcher(req.sampling_params.stop, req.sampling_params.stop_regex),
            )

    def check(self, req: Req, token: int) -> None:
        params = req.sampling_params
        n_out = len(req.output_ids)
        if n_out >= params.min_new_tokens:
            if (not params.ignore_eos and token in self.eos_token_ids) or token in params.stop_token_ids:
                req.finished_reason = FinishReason.stopped(token)
                return
        if req.stop_detok is not None:
            detok, matcher = req.stop_detok
            delta = detok.append([token])
            if params.stop:
                # search only the tail that can contain a match ending in the new text
                req.stop_tail = (req.stop_tail + delta)[-(matcher.max_len + len(delta)) :]
            if params.stop_regex:
                req.stop_text += delta  # a regex match may start anywhere in the output
            if n_out >= params.min_new_tokens:
                found = matcher.find(req.stop_tail) if params.stop else None
                if found is None and params.stop_regex and delta:
                    hit = matcher.find_regex(req.stop_text)
                    found = None if hit is None else (hit[0], hit[1])
                if found is not None:
                    req.finished_reason = FinishReason.stopped(found[0])
                    return
        if n_out >= params.max_new_tokens:
            req.finished_reason = FinishReason.length_reached(n_out)
