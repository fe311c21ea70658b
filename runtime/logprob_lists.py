"""Accumulates a request's logprob deltas and renders them in the native API's meta_info shape (torch-free).

Used by the one output accumulator, ``request_state.RequestState``.
"""

from __future__ import annotations

from typing import Any

from radixgen.runtime.io_struct import ReqOutput

LOGPROB_KEYS = ("input_token_logprobs", "input_top_logprobs", "output_token_logprobs", "output_top_logprobs")
#: SGLang's ``token_ids_logprob`` lists: per position, ``[logprob, id]`` of each asked id
IDS_LOGPROB_KEYS = ("input_token_ids_logprobs", "output_token_ids_logprobs")
#: the per-output-position lists (sliced to the new positions in incremental streaming, as SGLang does)
OUTPUT_LOGPROB_KEYS = ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")


class LogprobAccumulator:
    """Per-position ``[logprob, token_id]`` entries (and top-k lists of them) gathered from ``ReqOutput`` deltas.

    Entries are rendered once, as they arrive, as ``[logprob, token_id, text or None]`` — the token's text (decoded
    alone) when ``return_text_in_logprobs``, as SGLang's native API does — so a streamed request costs O(new
    positions) per update.
    """

    def __init__(self, tokenizer: Any, return_text_in_logprobs: bool, token_ids_logprob: bool = False) -> None:
        self.tokenizer = tokenizer
        self.with_text = return_text_in_logprobs
        keys = LOGPROB_KEYS + (IDS_LOGPROB_KEYS if token_ids_logprob else ())
        self.lists: dict[str, list[Any]] = {k: [] for k in keys}

    def extend(self, out: ReqOutput) -> None:
        """Fold in one output's logprob deltas."""
        for key in self.lists:
            delta = getattr(out, key)
            if delta:
                top = not key.endswith("token_logprobs")  # a list of entries per position
                self.lists[key].extend([self._entries(t) for t in delta] if top else self._entries(delta))

    def _entries(self, entries: list[list[Any]]) -> list[list[Any]]:
        if not self.with_text:
            return [[lp, tid, None] for lp, tid in entries]
        return [[lp, tid, self.tokenizer.decode([tid])] for lp, tid in entries]

    def meta(self, output_from: int = 0) -> dict[str, Any]:
        """The meta_info logprob lists (copies), the output ones from position ``output_from`` on, and
        ``output_token_logprobs_length`` (how many output positions have logprobs in all)."""
        out: dict[str, Any] = {
            k: v[output_from:] if k in OUTPUT_LOGPROB_KEYS else list(v) for k, v in self.lists.items()
        }
        out["output_token_logprobs_length"] = len(self.lists["output_token_logprobs"])
        return out
