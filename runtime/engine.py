"""The offline Engine: the Scheduler run in-process, with its I/O swapped for direct calls.

Same scheduling code path as the server (DESIGN.md, "Processes and messages"); responses have the shape of the
native /generate API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from radixgen.runtime.detokenizer import Detokenizer
from radixgen.runtime.errors import InvalidRequestError, LoRAError
from radixgen.runtime.fast_tokenizer import load_hf_tokenizer
from radixgen.runtime.generate_request import GenerateReqInput, PlannedReq, max_prompt_chars, plan_requests
from radixgen.runtime.io_struct import (
    AbortReq,
    BatchTokenOut,
    DetokRegister,
    LoadLoRAAdapterReq,
    LoRAUpdateOut,
    UnloadLoRAAdapterReq,
)
from radixgen.runtime.model_runner import ModelRunner
from radixgen.runtime.request_state import RequestState
from radixgen.runtime.scheduler import Scheduler
from radixgen.runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

Prompt = str | list[str] | None
InputIds = list[int] | list[list[int]] | None
Params = dict[str, Any] | list[dict[str, Any]] | None


class Engine:
    """Generate with a local model, no server.

    ``Engine(model_path, **server_args)`` takes any ServerArgs field as a keyword (e.g. ``max_total_tokens``,
    ``chunked_prefill_size``, ``disable_radix_cache``, ``schedule_policy``, ``load_format="dummy"``), speculative
    decoding included (``speculative_algorithm="ngram"`` or ``"draft"`` with ``speculative_draft_model_path``,
    ``speculative_num_draft_tokens``; responses then carry ``spec_verify_ct`` / ``spec_accept_length``).

    Raises:
        ValueError: an invalid server argument or model directory, naming it.
    """

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.server_args = ServerArgs.from_kwargs(model_path, **kwargs)
        if self.server_args.dp_size != 1:
            raise ValueError("dp_size: the offline Engine runs one scheduler; data parallelism is the server's")
        self.tokenizer = load_hf_tokenizer(self.server_args.resolved_tokenizer_path)
        self.model_runner = ModelRunner(self.server_args)
        self.scheduler = Scheduler(
            self.server_args, self.model_runner, self.model_runner.model_config.eos_token_ids, self.tokenizer
        )
        self.detokenizer = Detokenizer(self.tokenizer)
        self._max_prompt_chars = max_prompt_chars(self.tokenizer, self.model_runner.context_len)
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
        token_ids_logprob: list[int] | list[list[int]] | None = None,
        stream: bool = False,
        lora_path: str | list[str | None] | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]] | Iterator[dict[str, Any]]:
        """Generate for one prompt (→ a dict) or a batch (a list of prompts or of token-id lists → a list).

        ``sampling_params`` is a dict of SamplingParams fields, or a list with one per prompt. With ``n > 1``
        a single prompt returns a list of ``n`` dicts. ``stream=True`` (single prompt, n=1) returns an
        iterator of dicts whose ``text`` is the cumulative text so far; the last one has a finish_reason.
        ``lora_path`` names a loaded LoRA adapter (or one per prompt; None: the base model).

        Raises:
            InvalidRequestError (a ValueError): no prompt, an empty prompt, a prompt longer than the context, an
                invalid sampling value, ... — ``param`` names the field. Nothing is queued then; the engine keeps
                working.
        """
        obj = GenerateReqInput(
            text=prompt,
            input_ids=input_ids,
            sampling_params=sampling_params,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            return_text_in_logprobs=return_text_in_logprobs,
            token_ids_logprob=token_ids_logprob,
            stream=stream,
            rid=rid,
            lora_path=lora_path,
        )
        runner = self.model_runner
        lora = runner.lora_manager
        limits = {
            "max_prompt_chars": self._max_prompt_chars,
            "max_prompts": self.server_args.max_prompts_per_request,
            "lora_adapters": None if lora is None else lora.loaded(),
        }
        planned, single = plan_requests(obj, self.tokenizer, runner.context_len, runner.vocab_size, "prompt", **limits)
        if stream and len(planned) != 1:
            raise InvalidRequestError("stream", "stream: streaming takes a single prompt with n=1")
        for p in planned:  # every request is checked before any is queued
            self.scheduler.validate_grammar(p.req)
        states = [self._submit(p) for p in planned]
        if stream:
            return self._stream(states[0])
        self._run_until_done(states)
        results = [self._states.pop(st.rid).response() for st in states]
        return results[0] if single else results

    def abort(self, rid: str) -> bool:
        """Abort a queued or running request (for use from a streaming consumer)."""
        return self.scheduler.abort_request(AbortReq(rid))

    def flush_cache(self) -> bool:
        """Drop the radix cache; False while requests are in flight."""
        return self.scheduler.flush_cache()

    def load_lora_adapter(self, lora_name: str, lora_path: str) -> dict[str, str]:
        """Load a PEFT adapter under ``lora_name``; returns the loaded adapters (name → path).

        Raises:
            LoRAError (a ValueError): LoRA is off, the name is taken, or the adapter is bad — naming the field.
        """
        return self._lora_result(self.scheduler.handle(LoadLoRAAdapterReq(lora_name, lora_path)))

    def unload_lora_adapter(self, lora_name: str) -> dict[str, str]:
        """Unload an adapter (refused to new requests at once; it goes when its running requests finish, which this
        call waits for); returns the loaded adapters.

        Raises:
            LoRAError: LoRA is off, or no adapter of that name is loaded (status 404).
        """
        reply = self.scheduler.handle(UnloadLoRAAdapterReq(lora_name))
        while reply is None:  # waits for the adapter's running requests
            self._dispatch()
            replies = self.scheduler.lora.take_replies()
            reply = replies[0] if replies else None
        return self._lora_result(reply)

    @staticmethod
    def _lora_result(reply: LoRAUpdateOut) -> dict[str, str]:
        if not reply.success:
            raise LoRAError(reply.param, reply.error_message, reply.status)
        return dict(reply.loaded_adapters)

    def get_server_info(self) -> dict[str, Any]:
        """Server args plus KV pool capacity and usage (tokens), and ``step_timing``: per forward mode ("decode",
        "extend"), milliseconds per step and share of each scheduler phase and the host-overhead share (see
        runtime/step_timing.py; reset with ``reset_step_timing``)."""
        runner, sched = self.model_runner, self.scheduler
        return {
            **{k: v for k, v in vars(self.server_args).items()},
            "max_total_tokens": runner.max_total_tokens,
            "context_len": runner.context_len,
            **runner.memory_report(),
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
        """Abort everything still queued or running, release the KV pools and stop the grammar compile threads."""
        for rid in list(self._states):
            self.scheduler.abort_request(AbortReq(rid))
        self._states.clear()
        self.scheduler.step()
        self.scheduler.shutdown()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ internals
    def _submit(self, planned: PlannedReq) -> RequestState:
        """Queue a planned request and start accumulating its output."""
        self.scheduler.add_request(planned.req)
        self.detokenizer.register(DetokRegister.for_request(planned.req))
        state = RequestState(planned, self.tokenizer)
        self._states[planned.rid] = state
        return state

    def _dispatch(self) -> None:
        """One scheduler step; its outputs (with their text, as the detokenizer process makes it) go to the states."""
        outputs = self.scheduler.step()
        if not outputs:
            return
        batch = self.detokenizer.process(BatchTokenOut(outputs))
        for out, text in zip(batch.outputs, batch.texts, strict=True):
            state = self._states.get(out.rid)
            if state is not None:
                state.apply(out, text)

    def _run_until_done(self, states: list[RequestState]) -> None:
        while any(not st.finished for st in states):
            if not self.scheduler.has_work():
                raise RuntimeError("scheduler idle while requests are unfinished")
            self._dispatch()

    def _stream(self, state: RequestState) -> Iterator[dict[str, Any]]:
        try:
            while not state.finished:
                self._dispatch()
                if state.updated:
                    yield state.response()
            if state.updated:  # it finished while another call drove the scheduler (unload_lora_adapter)
                yield state.response()
        finally:
            if not state.finished:
                self.scheduler.abort_request(AbortReq(state.rid))
                self._dispatch()
            self._states.pop(state.rid, None)
