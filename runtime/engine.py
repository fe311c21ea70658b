"""The offline Engine: the Scheduler run in-process, with its I/O swapped for direct calls.

Same scheduling code path as the server (DESIGN.md, "Processes and messages"); responses have the shape of the
native /generate API.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

from transformers import AutoTokenizer

from radixgen.runtime.io_struct import AbortReq, TokenizedGenerateReq
from radixgen.runtime.model_runner import ModelRunner
from radixgen.runtime.request_state import RequestState
from radixgen.runtime.sampling_params import SamplingParams
from radixgen.runtime.scheduler import Scheduler
from radixgen.runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

Prompt = str | list[str] | None
InputIds = list[int] | list[list[int]] | None
Params = dict[str, Any] | list[dict[str, Any]] | None


class Engine:
    """Generate with a local model, no server.

    ``Engine(model_path, **server_args)`` takes any ServerArgs field as a keyword (e.g. ``max_total_tokens``,
    ``chunked_prefill_size``, ``disable_radix_cache``, ``schedule_policy``, ``load_format="dummy"``).

    Raises:
        ValueError: an invalid server argument or model directory, naming it.
    """

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.server_args = ServerArgs.from_kwargs(model_path, **kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(self.server_args.resolved_tokenizer_path)
        self.model_runner = ModelRunner(self.server_args)
        self.scheduler = Scheduler(
            self.server_args, self.model_runner, self.model_runner.model_config.eos_token_ids, self.tokenizer
        )
        self._states: dict[str, RequestState] = {}

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        prompt: Prompt = None,
        sampling_params: Params = None,
        input_ids: InputIds = None,
        return_logprob: bool = False,
        logprob_start_len: int = -1,
        top_logprobs_num: int = 0,
        return_text_in_logprobs: bool = False,
        rid: str | list[str] | None = None,
        stream: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]] | Iterator[dict[str, Any]]:
        """Generate for one prompt (→ a dict) or a batch (a list of prompts or of token-id lists → a list).

        ``sampling_params`` is a dict of SamplingParams fields, or a list with one per prompt. With ``n > 1``
        a single prompt returns a list of ``n`` dicts. ``stream=True`` (single prompt, n=1) returns an
        iterator of dicts whose ``text`` is the cumulative text so far; the last one has a finish_reason.

        Raises:
            ValueError: no prompt, an empty prompt, a prompt longer than the context, an invalid sampling
                value, ... — the message names the field. Nothing is queued then; the engine keeps working.
        """
        reqs, single = self._make_requests(
            prompt,
            sampling_params,
            input_ids,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            return_text_in_logprobs,
            rid,
        )
        if stream:
            if len(reqs) != 1:
                raise ValueError("stream: streaming takes a single prompt with n=1")
            return self._stream(reqs[0])
        for msg, state in reqs:
            self.scheduler.add_request(msg)
            self._states[msg.rid] = state
        self._run_until_done({msg.rid for msg, _ in reqs})
        results = [self._states.pop(msg.rid).response() for msg, _ in reqs]
        return results[0] if single else results

    def abort(self, rid: str) -> bool:
        """Abort a queued or running request (for use from a streaming consumer)."""
        return self.scheduler.abort_request(AbortReq(rid))

    def flush_cache(self) -> bool:
        """Drop the radix cache; False while requests are in flight."""
        return self.scheduler.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        """Server args plus KV pool capacity and usage (tokens), and ``step_timing``: per forward mode ("decode",
        "extend"), milliseconds per step and share of each scheduler phase and the host-overhead share (see
        runtime/step_timing.py; reset with ``reset_step_timing``)."""
        runner, sched = self.model_runner, self.scheduler
        return {
            **{k: v for k, v in vars(self.server_args).items()},
            "max_total_tokens": runner.max_total_tokens,
            "context_len": runner.context_len,
            "kv_free_tokens": runner.allocator.available_size(),
            "kv_cached_tokens": sched.tree_cache.total_size(),
            "kv_evictable_tokens": sched.tree_cache.evictable_size(),
            "num_retractions": sched.num_retractions,
            "step_timing": sched.step_timer.summary(),
        }

    def reset_step_timing(self) -> None:
        """Zero the per-phase step timers reported as ``get_server_info()["step_timing"]``."""
        self.scheduler.step_timer.reset()

    def shutdown(self) -> None:
        """Abort everything still queued or running and release the KV pools."""
        for rid in list(self._states):
            self.scheduler.abort_request(AbortReq(rid))
        self._states.clear()
        self.scheduler.step()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ internals
    def _make_requests(
        self,
        prompt: Prompt,
        sampling_params: Params,
        input_ids: InputIds,
        return_logprob: bool,
        logprob_start_len: int,
        top_logprobs_num: int,
        return_text_in_logprobs: bool,
        rid: str | list[str] | None,
    ) -> tuple[list[tuple[TokenizedGenerateReq, RequestState]], bool]:
        if (prompt is None) == (input_ids is None):
            raise ValueError("prompt/input_ids: give exactly one of them")
        if prompt is not None:
            single = isinstance(prompt, str)
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not texts or not all(isinstance(t, str) for t in texts):
                raise ValueError("prompt: must be a string or a non-empty list of strings")
            for t in texts:
                if t == "":
                    raise ValueError("prompt: the prompt is empty")
            id_lists = [self.tokenizer.encode(t) for t in texts]
        else:
            assert input_ids is not None
            single = bool(input_ids) and all(isinstance(t, int) for t in input_ids)
            id_lists = [list(input_ids)] if single else [list(x) for x in input_ids]  # type: ignore[arg-type]
            if not id_lists:
                raise ValueError("input_ids: the batch is empty")
            for ids in id_lists:
                if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                    raise ValueError("input_ids: must be a list of integer token ids or a list of such lists")
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(id_lists):
                raise ValueError("sampling_params: a list must have one entry per prompt")
            param_list = [SamplingParams.from_dict(p) for p in sampling_params]
        else:
            param_list = [SamplingParams.from_dict(sampling_params)] * len(id_lists)
        if not isinstance(logprob_start_len, int) or logprob_start_len < -1:
            raise ValueError("logprob_start_len: must be an integer >= -1")
        if not isinstance(top_logprobs_num, int) or top_logprobs_num < 0:
            raise ValueError("top_logprobs_num: must be an integer >= 0")
        rids = [rid] if isinstance(rid, str) else (list(rid) if rid is not None else None)
        if rids is not None and len(rids) != len(id_lists):
            raise ValueError("rid: give one rid per prompt")
        out: list[tuple[TokenizedGenerateReq, RequestState]] = []
        for i, (ids, params) in enumerate(zip(id_lists, param_list, strict=True)):
            self.scheduler.validate(ids, params)  # every request is checked before any is queued
            for j in range(params.n):
                base = rids[i] if rids is not None else uuid.uuid4().hex
                this_rid = base if params.n == 1 else f"{base}-{j}"
                p = params
                if params.n > 1 and params.seed is not None:
                    p = SamplingParams.from_dict({**params.to_dict(), "seed": params.seed + j})
                msg = TokenizedGenerateReq(
                    rid=this_rid,
                    input_ids=ids,
                    sampling_params=p.to_dict(),
                    return_logprob=return_logprob,
                    logprob_start_len=logprob_start_len,
                    top_logprobs_num=top_logprobs_num,
                )
                state = RequestState(this_rid, ids, p, self.tokenizer, return_logprob, return_text_in_logprobs)
                out.append((msg, state))
        return out, single and len(out) == 1

    def _dispatch(self) -> None:
        for out in self.scheduler.step():
            state = self._states.get(out.rid)
            if state is not None:
                state.apply(out)

    def _run_until_done(self, rids: set[str]) -> None:
        while any(not self._states[r].finished for r in rids):
            if not self.scheduler.has_work():
                raise RuntimeError("scheduler idle while requests are unfinished")
            self._dispatch()

    def _stream(self, item: tuple[TokenizedGenerateReq, RequestState]) -> Iterator[dict[str, Any]]:
        msg, state = item
        self.scheduler.add_request(msg)
        self._states[msg.rid] = state
        try:
            sent = -1
            while not state.finished:
                self._dispatch()
                if len(state.output_ids) != sent or state.finished:
                    sent = len(state.output_ids)
                    yield state.response()
        finally:
            if not state.finished:
                self.scheduler.abort_request(AbortReq(msg.rid))
                self._dispatch()
            self._states.pop(msg.rid, None)
