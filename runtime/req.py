"""Req: the scheduler's record of one generation request: its status, and its KV state tracked by positions."""

from __future__ import annotations

import enum
from typing import Any

import torch

from radixgen.grammar.base import GrammarMatcher
from radixgen.radix.radix_cache import TreeNode
from radixgen.runtime.io_struct import FinishReason, ReqOutput
from radixgen.runtime.sampling_params import SamplingParams

# a request that is not streamed sends its tokens every this many (SGLang's DEFAULT_FORCE_STREAM_INTERVAL)
NON_STREAM_OUTPUT_INTERVAL = 50


class ReqStatus(enum.Enum):
    """Where a request is in its life; the scheduler's queues follow from it (``Scheduler.check_integrity``).

    WAITING: queued, holding no request row (or waiting for its grammar to compile). PREFILLING: its prompt (or
    the tokens appended by jump-forward) is being prefilled chunk by chunk; it holds a row. RUNNING: decoding, one
    token per step. RETRACTED: taken out of the running batch when the KV pool ran out; re-queued with its outputs
    kept (its KV went to the radix cache). FINISHED: ended (stop, length or abort); it holds nothing.
    """

    WAITING = "waiting"
    PREFILLING = "prefilling"
    RUNNING = "running"
    RETRACTED = "retracted"
    FINISHED = "finished"


# allowed transitions (a request that got jump-forward tokens after a step goes back to WAITING to prefill them;
# any live request may finish, e.g. on abort)
TRANSITIONS: dict[ReqStatus, frozenset[ReqStatus]] = {
    ReqStatus.WAITING: frozenset({ReqStatus.PREFILLING, ReqStatus.FINISHED}),
    ReqStatus.PREFILLING: frozenset({ReqStatus.RUNNING, ReqStatus.WAITING, ReqStatus.FINISHED}),
    ReqStatus.RUNNING: frozenset({ReqStatus.RETRACTED, ReqStatus.WAITING, ReqStatus.FINISHED}),
    ReqStatus.RETRACTED: frozenset({ReqStatus.PREFILLING, ReqStatus.FINISHED}),
    ReqStatus.FINISHED: frozenset(),
}


class Req:
    """One request inside the scheduler.

    ``status`` (a ReqStatus) says which scheduler queue holds it; ``set_status`` checks each transition.
    Positions: ``seq = origin_input_ids + output_ids``; ``kv_len`` tokens of ``seq`` have K/V
    in the pool (``req_to_token[req_pool_idx, :kv_len]``), of which the first ``prefix_len`` are the cached
    prefix matched in the radix cache and locked through ``last_node``. The next forward computes
    ``seq[kv_len:]`` (or a chunk of it). A request is decoding when ``kv_len == len(seq) - 1``.

    Input logprobs are gathered while ``input_logprob_pos < len(origin_input_ids)`` (positions from
    ``logprob_start_len``); ``finished_reason`` is None until the request ends.

    Grammar: ``grammar`` is the request's GrammarMatcher (radixgen.grammar) once its constraint is compiled; it
    has accepted exactly ``output_ids`` and survives retraction. ``jump_forward_tokens`` counts the outputs
    appended by jump-forward (no forward each); ``jump_requeues`` how often the request went back through an
    extend to prefill them.

    Speculative decoding (runtime/speculative): ``spec_verify_ct`` counts the request's decode-phase target
    forwards while speculation is on, ``spec_draft_tokens`` the draft tokens proposed to it and
    ``spec_accepted_tokens`` those accepted (each forward emits accepted + 1 tokens); ``draft_state`` is the draft
    model's KV state of the request (owned by the draft proposer), None without one.

    LoRA (runtime/lora): ``lora_name`` is the adapter the request runs under (None: the base model) and
    ``lora_uid`` that adapter's load id, the radix-cache namespace of the request's KV.

    Outputs: the deltas since the last output (``new_token_ids``, the logprob deltas) accumulate until
    ``output_due`` says they go out; ``stream`` is whether the client streams.
    """

    def __init__(
        self,
        rid: str,
        input_ids: list[int],
        sampling_params: SamplingParams,
        return_logprob: bool = False,
        logprob_start_len: int = -1,
        top_logprobs_num: int = 0,
        arrival: int = 0,
        token_ids_logprob: list[int] | None = None,
        lora_name: str | None = None,
        lora_uid: int | None = None,
        stream: bool = False,
    ) -> None:
        self.rid = rid
        self.stream = stream
        self.lora_name = lora_name
        self.lora_uid = lora_uid
        self.origin_input_ids = list(input_ids)
        self.output_ids: list[int] = []
        self.sampling_params = sampling_params
        self.return_logprob = return_logprob
        self.top_logprobs_num = top_logprobs_num if return_logprob else 0
        self.token_ids_logprob = list(token_ids_logprob or []) if return_logprob else []
        n = len(self.origin_input_ids)
        # -1 = no input logprobs; otherwise positions logprob_start_len .. n-1 get one each
        self.logprob_start_len = n if (not return_logprob or logprob_start_len < 0) else min(logprob_start_len, n)
        self.input_logprob_pos = self.logprob_start_len
        self.arrival = arrival

        self.req_pool_idx: int | None = None
        self.status = ReqStatus.WAITING
        self.kv_len = 0
        self.prefix_len = 0
        self.last_node: TreeNode | None = None
        self.cached_tokens = 0
        self.retracted_count = 0

        self.generator: torch.Generator | None = None
        if sampling_params.seed is not None:
            self.generator = torch.Generator().manual_seed(sampling_params.seed)

        self.finished_reason: FinishReason | None = None
        self.grammar: GrammarMatcher | None = None
        self.jump_forward_tokens = 0
        self.jump_requeues = 0
        self.spec_verify_ct = 0
        self.spec_draft_tokens = 0
        self.spec_accepted_tokens = 0
        self.draft_state: Any = None
        self.stop_tail = ""  # detokenized tail used for stop-string matching
        self.stop_text = ""  # the whole detokenized output, for stop regexes (kept only when there are some)
        self.stop_detok: Any = None

        # per-step deltas, emitted and cleared by the scheduler
        self.new_token_ids: list[int] = []
        self.delta_input_logprobs: list[list[Any]] = []
        self.delta_input_top: list[list[list[Any]]] = []
        self.delta_output_logprobs: list[list[Any]] = []
        self.delta_output_top: list[list[list[Any]]] = []
        self.delta_input_ids_lp: list[list[list[Any]]] = []  # [logprob, id] of token_ids_logprob per position
        self.delta_output_ids_lp: list[list[list[Any]]] = []

    def set_status(self, status: ReqStatus) -> None:
        """Move to ``status``.

        Raises:
            RuntimeError: the transition is not in ``TRANSITIONS`` (a scheduler bug).
        """
        if status is not self.status and status not in TRANSITIONS[self.status]:
            raise RuntimeError(f"{self.rid}: illegal status transition {self.status.value} -> {status.value}")
        self.status = status

    @property
    def seq_len(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    def seq(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    @property
    def remaining_new_tokens(self) -> int:
        return max(self.sampling_params.max_new_tokens - len(self.output_ids), 0)

    def output_due(self, stream_interval: int) -> bool:
        """Whether the deltas go out after this step (SGLang's ``stream_output`` rule, counted in tokens not yet
        sent): at the end; with the first output token (time to first token); then every ``stream_interval`` new
        tokens for a streamed request (its own ``sampling_params.stream_interval`` first) and every
        ``NON_STREAM_OUTPUT_INTERVAL`` for one that is not (incremental detokenization, live metrics), so a
        non-streamed request costs the detokenizer and the HTTP process one message per 50 tokens, not one per
        token."""
        if self.finished:
            return True
        pending = len(self.new_token_ids)
        if pending == len(self.output_ids):  # nothing sent yet: the first token, or input logprobs of a chunk
            return pending > 0 or bool(self.delta_input_logprobs)
        if not self.stream:
            return pending >= NON_STREAM_OUTPUT_INTERVAL
        return pending >= (self.sampling_params.stream_interval or stream_interval)

    def take_output(self) -> ReqOutput:
        """This step's output message: the new tokens and logprob entries since the last output (taken: the
        deltas are reset), finish reason and token counts."""
        out = ReqOutput(
            rid=self.rid,
            new_token_ids=self.new_token_ids,
            finish_reason=self.finished_reason,
            prompt_tokens=len(self.origin_input_ids),
            completion_tokens=len(self.output_ids),
            cached_tokens=self.cached_tokens,
            jump_forward_tokens=self.jump_forward_tokens,
            spec_verify_ct=self.spec_verify_ct,
            spec_accepted_tokens=self.spec_accepted_tokens,
        )
        if self.return_logprob:
            out.input_token_logprobs = self.delta_input_logprobs
            out.input_top_logprobs = self.delta_input_top
            out.output_token_logprobs = self.delta_output_logprobs
            out.output_top_logprobs = self.delta_output_top
            if self.token_ids_logprob:
                out.input_token_ids_logprobs = self.delta_input_ids_lp
                out.output_token_ids_logprobs = self.delta_output_ids_lp
                self.delta_input_ids_lp, self.delta_output_ids_lp = [], []
            self.delta_input_logprobs, self.delta_input_top = [], []
            self.delta_output_logprobs, self.delta_output_top = [], []
        self.new_token_ids = []
        return out

    def __repr__(self) -> str:
        return (
            f"Req(rid={self.rid!r}, prompt={len(self.origin_input_ids)}, out={len(self.output_ids)}, "
            f"kv_len={self.kv_len}, prefix_len={self.prefix_len}, row={self.req_pool_idx}, {self.status.value})"
        )
