"""The scheduler: continuous batching over a radix-cached, token-granular KV pool.

Each ``step()`` reads as schedule → forward → sample → process (DESIGN.md, "The scheduler loop"). Requests
join and leave at every iteration (iteration-level scheduling, Orca: Yu et al. 2022); extend batches prefill
only the uncached part of each prompt, in chunks when a prompt is longer than ``chunked_prefill_size``. A step that
prefills also carries the next token of every running request (a mixed batch: Sarathi-Serve, Agrawal et al. 2024;
vLLM V1), so admissions never stall decoding; with ``--disable-mixed-chunk`` (or speculative decoding, whose
verify steps are extends of their own) extend steps alternate with decode steps instead (SGLang, Zheng et al.
2024).

The scheduler decides and never computes: the model runner (anything with the ``ModelRunnerProtocol``
attributes) runs forwards, the prefix cache stores. Messages in and out are the typed structs of
``io_struct``; the server process drives the same object over ZeroMQ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import torch

from radixgen.radix import ReqToTokenPool, TokenSlotAllocator
from radixgen.radix.radix_cache import create_prefix_cache
from radixgen.runtime.constrained import GrammarHooks
from radixgen.runtime.errors import InvalidRequestError
from radixgen.runtime.forward_batch import ForwardMode
from radixgen.runtime.io_struct import (
    AbortReq,
    FinishReason,
    FlushCacheReq,
    LoadLoRAAdapterReq,
    ReqOutput,
    TokenizedGenerateReq,
    UnloadLoRAAdapterReq,
)
from radixgen.runtime.lora.hooks import LoRAHooks
from radixgen.runtime.req import Req, ReqStatus
from radixgen.runtime.req_kv import ReqKVManager
from radixgen.runtime.sampler import Sampler
from radixgen.runtime.schedule_batch import ScheduleBatch
from radixgen.runtime.schedule_policy import PrefillAdder, order_waiting, prefix_match_key
from radixgen.runtime.scheduler_integrity import check_scheduler
from radixgen.runtime.scheduler_output import process_batch_result
from radixgen.runtime.server_args import ServerArgs
from radixgen.runtime.speculative import create_spec_worker
from radixgen.runtime.step_timing import StepTimer
from radixgen.runtime.stop_checker import StopChecker

logger = logging.getLogger(__name__)


class ModelRunnerProtocol(Protocol):
    """What the scheduler needs from a model runner (a fake one serves scheduler tests without weights)."""

    req_to_token_pool: ReqToTokenPool
    allocator: TokenSlotAllocator
    vocab_size: int
    context_len: int
    max_total_tokens: int

    def forward(self, plan: ScheduleBatch, logits_rows: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``[len(logits_rows), vocab]`` of the batch (see ``ModelRunner.forward``)."""
        ...


class Scheduler:
    """Continuous-batching scheduler.

    Args:
        server_args: the runtime configuration.
        model_runner: pools + forward (see ModelRunnerProtocol).
        eos_token_ids: ids that end a request unless ``ignore_eos``.
        tokenizer: a Hugging Face tokenizer, needed only for stop strings and grammars (a torch-free one makes
            the grammar backend load the transformers tokenizer from ``resolved_tokenizer_path``).

    Every live request is in ``reqs`` (rid → Req) with an explicit ``Req.status`` (runtime/req.py); the queues
    follow from it: ``waiting`` holds WAITING and RETRACTED requests (or the grammar queue, while a constraint
    compiles), ``chunked_req`` the one PREFILLING request, ``running`` the RUNNING ones. ``check_integrity``
    checks that correspondence and the KV accounting.

    Requests arrive planned and validated (``generate_request.plan_requests``); the scheduler checks only what
    needs it: the grammar constraint, in ``validate_grammar``. Grammar-constrained requests go through
    ``self.grammar`` (runtime/constrained.py): compiled off-thread while they wait in its queue, masked in
    ``sample``, advanced in ``process_result``.

    Speculative decoding (``speculative_algorithm``; runtime/speculative/worker.py): ``self.spec`` proposes draft
    tokens for the running requests in ``_schedule_decode``; the decode step is then an extend over each request's
    last token and its drafts (a verify batch), ``sample`` accepts drafts instead of sampling one token, and
    ``process_result`` commits the emitted tokens and frees the KV of rejected ones.

    LoRA (runtime/lora): ``self.lora`` binds each request to its adapter (a reference while it lives; its KV in
    the adapter's radix-cache namespace), keeps every batch within ``--max-loras-per-batch`` adapters, and serves
    load / unload messages.

    Counters for tests and metrics: ``num_retractions``, ``num_forward_steps``, ``num_extend_steps``;
    ``step_timer`` (runtime/step_timing.py) accumulates the wall time of each step's phases.
    """

    def __init__(
        self,
        server_args: ServerArgs,
        model_runner: ModelRunnerProtocol,
        eos_token_ids: tuple[int, ...],
        tokenizer: Any = None,
    ) -> None:
        self.args = server_args
        self.runner = model_runner
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.allocator = model_runner.allocator
        self.tree_cache = create_prefix_cache(self.allocator, disable=server_args.disable_radix_cache)
        self.kv = ReqKVManager(self.req_to_token_pool, self.allocator, self.tree_cache)
        self.eos_token_ids = tuple(eos_token_ids)
        self.stop_checker = StopChecker(tokenizer, self.eos_token_ids)
        self.sampler = Sampler(seed=server_args.random_seed)
        self.grammar = GrammarHooks(server_args, tokenizer, model_runner.vocab_size, self.eos_token_ids)
        self.spec = create_spec_worker(server_args, model_runner, self.kv, self.sampler, self.eos_token_ids)
        self.lora = LoRAHooks(getattr(model_runner, "lora_manager", None))
        self.disagg: Any = None  # a decode server's DecodeKVReceiver (runtime/disaggregation), set by its process
        self.reqs: dict[str, Req] = {}  # every live request, whatever its status
        self.waiting: list[Req] = []
        self.running: list[Req] = []  # requests in the decode phase (kv_len == seq_len - 1)
        self.chunked_req: Req | None = None
        self.new_token_ratio = server_args.init_new_token_ratio
        self._arrivals = 0
        self._last_was_extend = False
        self._pending: list[ReqOutput] = []  # outputs produced outside a forward (aborts, zero-token requests)
        self.num_retractions = 0
        self.num_forward_steps = 0
        self.num_extend_steps = 0
        self.step_timer = StepTimer()
        self.handlers: dict[type, Callable[[Any], Any]] = {
            TokenizedGenerateReq: self.add_request,
            AbortReq: self.abort_request,
            FlushCacheReq: lambda _msg: self.flush_cache(),
            LoadLoRAAdapterReq: self.lora.load,
            UnloadLoRAAdapterReq: self.lora.unload,
        }

    # ------------------------------------------------------------------ input
    def handle(self, msg: Any) -> Any:
        """Dispatch one incoming message by its type."""
        return self.handlers[type(msg)](msg)

    def validate_grammar(self, msg: TokenizedGenerateReq) -> None:
        """Check a planned request's grammar constraint (the only check that needs the scheduler's backend).

        Raises:
            InvalidRequestError: an invalid or unsupported grammar constraint (GrammarError), naming the field;
                a rid already in use.
        """
        if msg.rid in self.reqs:
            raise InvalidRequestError("rid", f"rid: {msg.rid!r} is already in use")
        self.grammar.validate(msg.sampling_params)

    def add_request(self, msg: TokenizedGenerateReq) -> None:
        """Queue a planned request (``generate_request.plan_requests`` validated it).

        Raises:
            InvalidRequestError: from ``validate_grammar``, or an adapter that is not loaded (``lora_path``);
                nothing is queued then.
        """
        self.validate_grammar(msg)
        if msg.bootstrap_host is not None and self.disagg is None:
            raise InvalidRequestError("bootstrap_host", "bootstrap_host: needs a --disaggregation-mode decode server")
        lora_name, lora_uid = self.lora.bind(msg.lora_path)
        params = msg.sampling_params
        req = Req(
            msg.rid,
            msg.input_ids,
            params,
            msg.return_logprob,
            msg.logprob_start_len,
            msg.top_logprobs_num,
            arrival=self._arrivals,
            token_ids_logprob=msg.token_ids_logprob,
            lora_name=lora_name,
            lora_uid=lora_uid,
            stream=msg.stream,
        )
        self._arrivals += 1
        self.stop_checker.init_req(req)
        self.reqs[req.rid] = req
        if params.constraint is not None:
            self.grammar.add(req)  # joins the waiting queue when its grammar is compiled
        elif msg.bootstrap_host is None or not self.disagg.add(req, msg.bootstrap_host, msg.bootstrap_port):
            self.waiting.append(req)  # (a fetched prompt joins the queue when its KV has come from the prefill server)

    def abort_request(self, msg: AbortReq) -> bool:
        """Abort a queued or running request — or every one with ``abort_all`` —; its KV (and row) is released.
        False if the rid is unknown (or, with ``abort_all``, nothing was live)."""
        if msg.abort_all:
            rids = list(self.reqs)
            for rid in rids:
                self._abort(rid)
            return bool(rids)
        return self._abort(msg.rid)

    def _abort(self, rid: str) -> bool:
        req = self.reqs.get(rid)
        if req is None:
            return False
        if req.status in (ReqStatus.WAITING, ReqStatus.RETRACTED):
            fetching = self.disagg is not None and self.disagg.remove(rid)
            if not fetching and self.grammar.remove(rid) is None:
                self.waiting.remove(req)
        elif req.status is ReqStatus.PREFILLING:
            self.chunked_req = None
        else:
            self.running.remove(req)
        if req.req_pool_idx is not None:
            self.kv.release(req)
        return self._finish_now(req, FinishReason.aborted("aborted"))

    def flush_cache(self) -> bool:
        """Drop all cached prefixes; refused (False) while requests are queued or running."""
        if self.has_work():
            return False
        self.kv.flush()
        return True

    def shutdown(self) -> None:
        """Release the scheduler's threads (the grammar compile pool); call once, when it stops serving."""
        self.grammar.shutdown()

    def has_work(self) -> bool:
        """True while a request is live or an output is still to be emitted."""
        return bool(self.reqs or self._pending)

    # ------------------------------------------------------------------ loop
    def step(self) -> list[ReqOutput]:
        """One iteration: schedule → forward → sample → process. Returns the outputs of this step.

        Each phase's wall time goes to ``step_timer`` (laps in ``_build_batch``, ``forward``, ``sample``,
        ``process_result``)."""
        timer = self.step_timer
        timer.begin()
        self._admit_compiled_grammars()
        if self.disagg is not None:
            self.disagg.poll(idle=not (self.waiting or self.running or self.chunked_req or self._pending))
        outputs, self._pending = self._pending, []
        batch = self.schedule()
        if batch is None:
            return outputs
        mixed = batch.is_prefill and any(r.status is ReqStatus.RUNNING for r in batch.reqs)
        logits = self.forward(batch)
        tokens, logits = self.sample(batch, logits)
        outputs.extend(self.process_result(batch, logits, tokens))
        timer.lap("output")
        mode = "verify" if batch.is_verify else "decode" if batch.mode == ForwardMode.DECODE else "extend"
        mode = "mixed" if mixed else mode
        timer.end(mode, len(batch.reqs))
        return outputs

    def schedule(self) -> ScheduleBatch | None:
        """An extend batch when one can be admitted — mixed with one decode token of every running request when
        ``_can_mix``, else not twice in a row while requests are decoding — otherwise a decode batch of every
        running request."""
        mix = self._can_mix()
        if mix or not (self._last_was_extend and self.running):
            batch = self._schedule_extend(mix)
            if batch is not None:
                self._last_was_extend = True
                return batch
        self._last_was_extend = False
        return self._schedule_decode()

    def _can_mix(self) -> bool:
        """Whether an extend step may carry the running requests' decode tokens: mixing is on, there is no
        speculative decoding or disaggregation (their steps have their own shape), the token budgets leave room for
        prompt tokens after one per running request (else extend and decode steps alternate) and the pool holds a
        slot for every running request without retracting."""
        if self.args.disable_mixed_chunk or self.spec is not None or self.disagg is not None or not self.running:
            return False
        n = len(self.running)
        budget = min(self.args.chunked_prefill_size, self.args.max_prefill_tokens)
        return n < budget and self.kv.available_tokens() >= n

    def forward(self, batch: ScheduleBatch) -> torch.Tensor:
        """Run the model; float32 logits ``[len(batch.logits_rows), vocab]``."""
        self.num_forward_steps += 1
        self.num_extend_steps += int(batch.is_prefill)
        prepare = getattr(self.runner, "prepare", None)  # optional: split out to time batch preparation
        if prepare is None:
            logits = self.runner.forward(batch, batch.logits_rows_tensor())
        else:
            forward_batch = prepare(batch)
            rows = None if batch.every_token_row else batch.logits_rows_tensor()
            self.step_timer.lap("prepare")
            logits = self.runner.run(forward_batch, rows)  # type: ignore[attr-defined]
            batch.greedy_ids = forward_batch.greedy_ids
            if logits.is_cuda:
                torch.cuda.synchronize(logits.device)  # charge the kernels to forward, not to sampling
        self.step_timer.lap("forward")
        return logits

    def sample(self, batch: ScheduleBatch, logits: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
        """The tokens each request emits this step — one sampled token per request whose sequence end was computed
        (``[]`` for the others), or on a verify batch its accepted drafts plus one — and the logits that logprobs
        are read from."""
        if batch.drafts is not None:
            assert self.spec is not None
            keep_raw = any(r.return_logprob for r in batch.reqs)
            tokens, logits = self.spec.verify(batch.reqs, logits, keep_raw)
        else:
            vocab = self.runner.vocab_size
            next_ids = batch.sample(self.sampler, logits, self.eos_token_ids, vocab, self._grammar_mask)
            tokens = batch.tokens_per_req(next_ids)
        self.step_timer.lap("sample")
        return tokens, logits

    def _grammar_mask(self, reqs: list[Req], rows: torch.Tensor) -> None:
        self.step_timer.lap("sample")
        self.grammar.mask_logits(reqs, rows)
        self.step_timer.lap("grammar")

    def process_result(self, batch: ScheduleBatch, logits: torch.Tensor, tokens: list[list[int]]) -> list[ReqOutput]:
        """Append tokens, gather logprobs, check stops, finish and cache finished requests, emit outputs
        (``runtime/scheduler_output.py``)."""
        return process_batch_result(self, batch, logits, tokens)

    # ------------------------------------------------------------------ extend
    def _schedule_extend(self, mix: bool = False) -> ScheduleBatch | None:
        """Admit waiting requests (and the chunked one) into an extend batch; with ``mix`` the batch starts with one
        decode token of every running request, which the token budgets count first. None when nothing is
        admitted."""
        if not self.waiting and self.chunked_req is None:
            return None
        reserved = sum(PrefillAdder(0, 0, 0, self.new_token_ratio).reserve(r) for r in self.running)
        decode_rows = len(self.running) if mix else 0
        adder = PrefillAdder(
            rem_total=self.kv.available_tokens() - reserved - decode_rows,
            rem_prefill=self.args.max_prefill_tokens - decode_rows,
            rem_chunk=self.args.chunked_prefill_size - decode_rows,
            new_token_ratio=self.new_token_ratio,
        )
        if self.chunked_req is not None:
            req = self.chunked_req
            self.chunked_req = None
            if not adder.try_add(req, req.kv_len):
                self.chunked_req = req
                return None
        order_waiting(self.waiting, self.args.schedule_policy, self.tree_cache)
        admitted_new: list[Req] = []
        # adapters of the running requests and of this batch: a new one joins only while slots remain
        adapters = {r.lora_name for r in [*self.running, *(r for r, _ in adder.admitted)] if r.lora_name is not None}
        for req in list(self.waiting):
            if adder.chunked is not None:
                break
            if self.req_to_token_pool.available_size() == 0:
                break
            if self.kv.shares_uncached_prefix(prefix_match_key(req), req.lora_uid, [r for r, _ in adder.admitted]):
                continue  # admitted after the other one's prefix is in the cache
            if not self.lora.fits(req, adapters):
                continue  # waits until a running adapter's requests finish
            if not self._try_admit(req, adder):
                break
            admitted_new.append(req)
        for req in admitted_new:
            self.waiting.remove(req)
        if not adder.admitted:
            return None
        for req, _ in adder.admitted:
            req.set_status(ReqStatus.PREFILLING)
        self.chunked_req = adder.chunked
        decode_items = [(r, 1) for r in self.running] if mix else []
        return self._build_batch(ForwardMode.EXTEND, decode_items + adder.admitted)

    def _try_admit(self, req: Req, adder: PrefillAdder) -> bool:
        """Match and lock the request's cached prefix, then ask the adder; undo the lock on refusal."""
        match = self.tree_cache.match_prefix(prefix_match_key(req), req.lora_uid)
        adder.rem_total -= self.kv.lock(match)
        if not adder.try_add(req, int(match.indices.numel())):
            adder.rem_total += self.kv.unlock(match)
            return False
        self.kv.assign(req, match)
        if req.retracted_count == 0 and req.jump_requeues == 0:
            req.cached_tokens = req.prefix_len
        return True

    # ------------------------------------------------------------------ decode
    def _schedule_decode(self) -> ScheduleBatch | None:
        if not self.running:
            return None
        while len(self.running) > 1 and self.kv.available_tokens() < len(self.running):
            self._retract_one()
        if self.spec is not None:
            drafts = self.spec.propose(self.running, self.kv.available_tokens() - len(self.running))
            if drafts is not None:  # a verify batch: each request's last token and its drafts
                items = [(r, 1 + len(d)) for r, d in zip(self.running, drafts, strict=True)]
                return self._build_batch(ForwardMode.EXTEND, items, drafts)
        return self._build_batch(ForwardMode.DECODE, [(r, 1) for r in self.running])

    def _retract_one(self) -> None:
        """Retract the running request with the least progress (fewest outputs, longest prompt): its KV goes
        into the radix cache (evictable, reusable on resumption) and it re-queues with its outputs kept."""
        victim = min(self.running, key=lambda r: (len(r.output_ids), -len(r.origin_input_ids)))
        self.running.remove(victim)
        self.kv.release(victim)
        victim.set_status(ReqStatus.RETRACTED)
        victim.retracted_count += 1
        self.waiting.append(victim)
        self.num_retractions += 1
        self.new_token_ratio = min(1.0, self.new_token_ratio + 0.1)
        logger.info("retracted %s (KV pool full); %d running", victim.rid, len(self.running))

    # ------------------------------------------------------------------ grammar
    def _admit_compiled_grammars(self) -> None:
        """Move requests whose grammar compiled to the waiting queue (after an initial jump-forward, if the
        grammar forces a prefix); finish those whose compile failed or timed out. Never blocks, except for a
        few milliseconds when grammar compiles are all there is to wait for."""
        if not self.grammar.pending():
            return
        if not (self.waiting or self.running or self.chunked_req or self._pending):
            self.grammar.wait()
        ready, failed = self.grammar.poll()
        for req in failed:
            self._finish_now(req, req.finished_reason or FinishReason.aborted("grammar failed"))
        for req in ready:
            self.grammar.jump_forward(req, self.stop_checker)
            if req.finished:
                self._finish_now(req, req.finished_reason)  # type: ignore[arg-type]
            else:
                self.waiting.append(req)

    def _requeue_after_jump(self, req: Req) -> None:
        """A request that got jump-forward tokens: release its row (its KV goes into the radix cache) and queue
        it, so the next extend prefills the new tokens (re-using the cached prefix), like a resumed request."""
        if req.status is ReqStatus.RUNNING:
            self.running.remove(req)
        self.kv.release(req)
        req.jump_requeues += 1
        req.set_status(ReqStatus.WAITING)
        self.waiting.append(req)

    # ------------------------------------------------------------------ memory
    def _build_batch(
        self, mode: ForwardMode, items: list[tuple[Req, int]], drafts: list[list[int]] | None = None
    ) -> ScheduleBatch:
        self.step_timer.lap("schedule")
        slots = self.kv.alloc_slots(sum(n for _, n in items))
        batch = ScheduleBatch.build(mode, items, slots, drafts)
        self.kv.write_slots(items, slots)
        self.step_timer.lap("prepare")
        return batch

    # ------------------------------------------------------------------ output
    def _finish_now(self, req: Req, reason: FinishReason) -> bool:
        """End a request outside a forward (abort, grammar failure); its output goes out with the next step."""
        req.finished_reason = reason
        self._retire(req)
        self._pending.append(req.take_output())
        return True

    def _retire(self, req: Req) -> None:
        """A finished request leaves ``reqs`` (it holds no KV and no row any more)."""
        req.set_status(ReqStatus.FINISHED)
        del self.reqs[req.rid]
        self.lora.unbind(req)

    def check_integrity(self) -> None:
        """Assert the scheduler's invariants (``runtime/scheduler_integrity.py``).

        Raises:
            AssertionError: naming the inconsistency.
        """
        check_scheduler(self)
