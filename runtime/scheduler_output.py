"""The scheduler's output processing (``Scheduler.process_result``): after a forward and its sampling, each
request's emitted tokens go through the grammar and the stop checker, its logprobs and KV are recorded, and
finished requests leave while the rest move on (prefilling → running, chunked → next chunk)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixgen.runtime.forward_batch import ForwardMode
from radixgen.runtime.io_struct import FinishReason, ReqOutput
from radixgen.runtime.req import Req, ReqStatus

if TYPE_CHECKING:
    import torch

    from radixgen.runtime.schedule_batch import ScheduleBatch
    from radixgen.runtime.scheduler import Scheduler


def process_batch_result(
    s: Scheduler, batch: ScheduleBatch, logits: torch.Tensor, tokens: list[list[int]]
) -> list[ReqOutput]:
    """Append tokens, gather logprobs, check stops, finish and cache finished requests, emit the outputs that are
    due (``Req.output_due``: every token of a streamed request by default, every 50 of one that is not).

    ``tokens[i]`` are the tokens request ``i`` emits (see ``Scheduler.sample``); they are appended one by one and a stop
    (eos, stop string, grammar end, max_new_tokens) drops the rest. On a verify batch the KV of dropped and
    rejected positions is freed at once."""
    logprobs = batch.compute_logprobs(logits)
    decode_phase = batch.mode == ForwardMode.DECODE or batch.is_verify
    mixed = False  # a prefill step that carried running requests' decode tokens
    outputs: list[ReqOutput] = []
    for i, (req, ext) in enumerate(zip(batch.reqs, batch.extend_lens, strict=True)):
        prefilling = batch.is_prefill and req.status is not ReqStatus.RUNNING  # not a mixed batch's decode row
        mixed = mixed or (batch.is_prefill and not prefilling)
        emitted = append_tokens(s, req, tokens[i])
        batch.append_logprobs(i, logprobs, tokens[i][:emitted])
        req.kv_len += ext
        if decode_phase and s.spec is not None:
            if batch.is_verify:
                s.kv.truncate(req, req.kv_len - ext + emitted)  # KV of the emitted tokens but the last
            s.spec.commit(req, ext - 1, len(tokens[i]), emitted)
        if not tokens[i] and req.kv_len == req.seq_len and req.sampling_params.max_new_tokens == 0:
            req.finished_reason = FinishReason.length_reached(0)
        if prefilling and not req.finished:
            s.kv.cache_unfinished(req)
        is_chunked = req is s.chunked_req  # (a bool: an `is` test would narrow req to Optional for mypy)
        if is_chunked and req.kv_len < req.seq_len:
            outputs_for_req = req.take_output() if req.delta_input_logprobs else None
            if outputs_for_req is not None:
                outputs.append(outputs_for_req)
            continue
        if is_chunked:
            s.chunked_req = None
        if req.finished:
            if req.status is ReqStatus.RUNNING:
                s.running.remove(req)
            s.kv.release(req)
            s._retire(req)
        elif tokens[i] and s.grammar.jump_forward(req, s.stop_checker):
            s._requeue_after_jump(req)
        elif prefilling:
            req.set_status(ReqStatus.RUNNING)
            s.running.append(req)
        if req.output_due(s.args.stream_interval):
            outputs.append(req.take_output())
    if decode_phase or mixed:
        s.new_token_ratio = max(s.new_token_ratio - s.args.new_token_ratio_decay, s.args.min_new_token_ratio)
    return outputs


def append_tokens(s: Scheduler, req: Req, tokens: list[int]) -> int:
    """Append ``tokens`` to ``req``'s outputs through the grammar and the stop checker, stopping at the first
    one that finishes it; returns how many were appended."""
    for n, tok in enumerate(tokens, 1):
        req.output_ids.append(tok)
        req.new_token_ids.append(tok)
        if req.grammar is not None:
            s.step_timer.lap("output")
            s.grammar.accept(req, tok)
            s.step_timer.lap("grammar")
        if not req.finished:
            s.stop_checker.check(req, tok)
        if req.finished:
            return n
    return len(tokens)
