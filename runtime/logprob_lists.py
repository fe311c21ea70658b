"""Accumulates a request's logprob deltas and renders them in the native API's meta_info shape (torch-free).

Shared by the offline Engine's RequestState and the server's ServerReqState.
"""

from __future__ import annotations

from typing import Any

from radixgen.runtime.io_struct import ReqOutput

LOGPROB_KEYS = ("input_token_logprobs", "input_top_logprobs", "output_token_logprobs", "output_top_logprobs")


class LogprobAccumulator:
    """Per-position ``[logprob, token_id]`` entries (and top-k lists of them) gathered from ``ReqOutput`` deltas.

    ``meta()`` renders each entry as ``[logprob, token_id, text or None]`` — the token's text (decoded alone) when
    ``return_text_in_logprobs``, as SGLang's native API does.
    """

    def __init__(self, tokenizer: Any, return_text_in_logprobs: bool) -> None:
        self.tokenizer = tokenizer
        self.with_text = return_text_in_logprobs
        self.lists: dict[str, list[Any]] = {k: [] for k in LOGPROB_KEYS}

    def extend(self, out: ReqOutput) -> None:
        """Fold in one output's logprob deltas."""
        for key in LOGPROB_KEYS:
            delta = getattr(out, key)
            if delta:
                self.lists[key].extend(delta)

    def _entries(self, entries: list[list[Any]]) -> list[list[Any]]:
        if not self.with_text:
            return [[lp, tid, None] for lp, tid in entries]
        return [[lp, tid, self.tokenizer.decode([tid])] for lp, tid in entries]

    def meta(self) -> dict[str, list[Any]]:
        """The four meta_info logprob lists."""
        return {
            "input_token_logprobs": self._entries(self.lists["input_token_logprobs"]),
            "output_token_logprobs": self._entries(self.lists["output_token_logprobs"]),
            "input_top_logprobs": [self._entries(t) for t in self.lists["input_top_logprobs"]],
            "output_top_logprobs": [self._entries(t) for t in self.lists["output_top_logprobs"]],
        }
