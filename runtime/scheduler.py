"""The scheduler: continuous batching over a radix-cached, token-granular KV pool.

Each ``step()`` reads as schedule → forward → sample → process (DESIGN.md, "The scheduler loop"). Requests
join and leave at every iteration (iteration-level scheduling, Orca: Yu et al. 2022); extend batches prefill
only the uncached part of each prompt, in chunks when a prompt is longer than ``chunked_prefill_size``, and
alternate with decode steps so running requests keep making progress (SGLang, Zheng et al. 2024).

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
from radixgen.radix.radix_cache import NoReuseCache, create_prefix_cache
from radixgen.runtime.constrained import GrammarHooks
from radixgen.runtime.forward_batch import ForwardMode
from radixgen.runtime.io_struct import AbortReq, FlushCacheReq, ReqOutput, TokenizedGenerateReq
from radixgen.runtime.req import Req
from radixgen.runtime.sampler import Sampler
from radixgen.runtime.sampling_params import SamplingParams
from radixgen.runtime.schedule_batch import ScheduleBatch
from radixgen.runtime.schedule_policy import PrefillAdder, order_waiting, prefix_match_key
from radixgen.runtime.server_args import ServerArgs
from radixgen.runtime.stop_checker import StopChecker

logger = logging.getLogger(__name__)

# a waiting request is deferred when this many of its uncached tokens are being computed by another request of
# the same extend batch (SGLang uses a similar threshold for its in-batch prefix caching check)
IN_BATCH_PREFIX_MIN = 32


class ModelRunnerProtocol(Protocol):
    """What the scheduler needs from a model runner (a fake one serves scheduler tests without weights)."""

    req_to_token_pool: ReqToTokenPool
    allocator: TokenSlotAllocator
    vocab_size: int
    context_len: int
    max_total_tokens: int

    def forward(
        self,
        mode: ForwardMode,
        input_ids: list[int],
        req_pool_indices: list[int],
        prefix_lens: list[int],
        extend_lens: list[int],
        out_cache_loc: torch.Tensor,
        logits_rows: torch.Tensor,
    ) -> torch.Tensor: ...


class Scheduler:
    """Continuous-batching scheduler.

    Args:
        server_args: the runtime configuration.
        model_runner: pools + forward (see ModelRunnerProtocol).
        eos_token_ids: ids that end a request unless ``ignore_eos``.
        tokenizer: a Hugging Face tokenizer, needed only for stop strings and grammars (a torch-free one makes
            the grammar backend load the transformers tokenizer from ``resolved_tokenizer_path``).

    Grammar-constrained requests go through ``self.grammar`` (runtime/constrained.py): validated in
    ``validate``, compiled off-thread while they wait in its queue, masked in ``sample``, advanced in
    ``process_result``.

    Counters for tests and metrics: ``num_retractions``, ``num_forward_steps``, ``num_extend_steps``.
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
        self.eos_token_ids = tuple(eos_token_ids)
        self.stop_checker = StopChecker(tokenizer, self.eos_token_ids)
        self.sampler = Sampler(seed=server_args.random_seed)
        self.grammar = GrammarHooks(server_args, tokenizer, model_runner.vocab_size, self.eos_token_ids)
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
        self.handlers: dict[type, Callable[[Any], Any]] = {
            TokenizedGenerateReq: self.add_request,
            AbortReq: self.abort_request,
            FlushCacheReq: lambda _msg: self.flush_cache(),
        }

    # ------------------------------------------------------------------ input
    def handle(self, msg: Any) -> Any:
        """Dispatch one incoming message by its type."""
        return self.handlers[type(msg)](msg)

    def validate(self, input_ids: list[int], params: SamplingParams) -> None:
        """Check a request against the model before queueing it.

        Raises:
            ValueError: empty prompt, a token id outside the vocabulary, a prompt that does not fit the context,
                max_new_tokens beyond the context, or an invalid / unsupported grammar constraint (GrammarError);
                the message names the field.
        """
        n = len(input_ids)
        ctx = self.runner.context_len
        if n == 0:
            raise ValueError("input_ids: the prompt is empty")
        vocab = self.runner.vocab_size
        if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in input_ids):
            raise ValueError(f"input_ids: token ids must be integers in [0, {vocab})")
        if n >= ctx:
            raise ValueError(f"input_ids: the prompt has {n} tokens, the context length is {ctx}")
        if n + params.max_new_tokens > ctx:
            raise ValueError(
                f"max_new_tokens: prompt ({n}) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"context length {ctx}"
            )
        params.check_vocab(vocab)
        self.grammar.validate(params)

    def add_request(self, msg: TokenizedGenerateReq) -> None:
        """Queue a request. Raises ValueError (naming the field) for invalid input; nothing is queued then."""
        params = SamplingParams.from_dict(msg.sampling_params)
        self.validate(msg.input_ids, params)
        if msg.top_logprobs_num < 0:
            raise ValueError("top_logprobs_num: must be >= 0")
        req = Req(
            msg.rid,
            msg.input_ids,
            params,
            msg.return_logprob,
            msg.logprob_start_len,
            msg.top_logprobs_num,
            arrival=self._arrivals,
        )
        self._arrivals += 1
        self.stop_checker.init_req(req)
        if params.constraint is not None:
            self.grammar.add(req)  # joins the waiting queue when its grammar is compiled
        else:
            self.waiting.append(req)

    def abort_request(self, msg: AbortReq) -> bool:
        """Abort a queued or running request; its KV (and row) is released. False if the rid is unknown."""
        compiling = self.grammar.remove(msg.rid)
        if compiling is not None:
            return self._finish_now(compiling, {"type": "abort", "message": "aborted"})
        for i, req in enumerate(self.waiting):
            if req.rid == msg.rid:
                self.waiting.pop(i)
                if req.req_pool_idx is not None:
                    self._release(req)
                return self._finish_now(req, {"type": "abort", "message": "aborted"})
        for req in [*self.running, *([self.chunked_req] if self.chunked_req else [])]:
            if req.rid == msg.rid:
                if req is self.chunked_req:
                    self.chunked_req = None
                else:
                    self.running.remove(req)
                self._release(req)
                return self._finish_now(req, {"type": "abort", "message": "aborted"})
        return False

    def flush_cache(self) -> bool:
        """Drop all cached prefixes; refused (False) while requests are queued or running."""
        if self.has_work():
            return False
        self.tree_cache.reset()
        self.allocator.clear()
        self.req_to_token_pool.clear()
        return True

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked_req or self._pending or self.grammar.pending())

    # ------------------------------------------------------------------ loop
    def step(self) -> list[ReqOutput]:
        """One iteration: schedule → forward → sample → process. Returns the outputs of this step."""
        self._admit_compiled_grammars()
        outputs, self._pending = self._pending, []
        batch = self.schedule()
        if batch is None:
            return outputs
        logits = self.forward(batch)
        next_ids = self.sample(batch, logits)
        outputs.extend(self.process_result(batch, logits, next_ids))
        return outputs

    def schedule(self) -> ScheduleBatch | None:
        """An extend batch when one can be admitted (but not twice in a row while requests are decoding),
        else a decode batch of every running request."""
        if not (self._last_was_extend and self.running):
            batch = self._schedule_extend()
            if batch is not None:
                self._last_was_extend = True
                return batch
        self._last_was_extend = False
        return self._schedule_decode()

    def forward(self, batch: ScheduleBatch) -> torch.Tensor:
        """Run the model; float32 logits ``[len(batch.logits_rows), vocab]``."""
        self.num_forward_steps += 1
        self.num_extend_steps += int(batch.mode == ForwardMode.EXTEND)
        return self.runner.forward(
            batch.mode,
            batch.input_ids,
            batch.req_pool_indices,
            batch.prefix_lens,
            batch.extend_lens,
            batch.out_cache_loc,
            batch.logits_rows_tensor(),
        )

    def sample(self, batch: ScheduleBatch, logits: torch.Tensor) -> torch.Tensor:
        """Sample the next token of every request whose sequence end was computed: int64 ``[num_sampling]``."""
        return batch.sample(self.sampler, logits, self.eos_token_ids, self.runner.vocab_size, self.grammar.mask_logits)

    def process_result(self, batch: ScheduleBatch, logits: torch.Tensor, next_ids: torch.Tensor) -> list[ReqOutput]:
        """Append tokens, gather logprobs, check stops, finish and cache finished requests, emit outputs."""
        batch.gather_logprobs(logits, next_ids)
        next_list = next_ids.tolist()
        outputs: list[ReqOutput] = []
        for i, (req, ext) in enumerate(zip(batch.reqs, batch.extend_lens, strict=True)):
            req.kv_len += ext
            tok_idx = batch.sample_index[i]
            if tok_idx >= 0:
                tok = next_list[tok_idx]
                req.output_ids.append(tok)
                req.new_token_ids.append(tok)
                self.grammar.accept(req, tok)
                if not req.finished:
                    self.stop_checker.check(req, tok)
            elif req.kv_len == req.seq_len and req.sampling_params.max_new_tokens == 0:
                req.finished_reason = {"type": "length", "length": 0}
            if batch.mode == ForwardMode.EXTEND and not req.finished:
                self._cache_unfinished(req)
            if req is self.chunked_req and req.kv_len < req.seq_len:
                outputs_for_req = self._make_output(req) if req.delta_input_logprobs else None
                if outputs_for_req is not None:
                    outputs.append(outputs_for_req)
                continue
            if req is self.chunked_req:
                self.chunked_req = None
            if req.finished:
                if req in self.running:
                    self.running.remove(req)
                self._release(req)
            elif tok_idx >= 0 and self.grammar.jump_forward(req, self.stop_checker):
                self._requeue_after_jump(req)
            elif batch.mode == ForwardMode.EXTEND:
                self.running.append(req)
            outputs.append(self._make_output(req))
        if batch.mode == ForwardMode.DECODE:
            self.new_token_ratio = max(
                self.new_token_ratio - self.args.new_token_ratio_decay, self.args.min_new_token_ratio
            )
        return outputs

    # ------------------------------------------------------------------ extend
    def _schedule_extend(self) -> ScheduleBatch | None:
        if not self.waiting and self.chunked_req is None:
            return None
        reserved = sum(PrefillAdder(0, 0, 0, self.new_token_ratio).reserve(r) for r in self.running)
        adder = PrefillAdder(
            rem_total=self.allocator.available_size() + self.tree_cache.evictable_size() - reserved,
            rem_prefill=self.args.max_prefill_tokens,
            rem_chunk=self.args.chunked_prefill_size,
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
        for req in list(self.waiting):
            if adder.chunked is not None:
                break
            if self.req_to_token_pool.available_size() == 0:
                break
            if self._shares_uncached_prefix(req, adder):
                continue  # admitted after the other one's prefix is in the cache
            if not self._try_admit(req, adder):
                break
            admitted_new.append(req)
        for req in admitted_new:
            self.waiting.remove(req)
        if not adder.admitted:
            return None
        self.chunked_req = adder.chunked
        return self._build_batch(ForwardMode.EXTEND, adder.admitted)

    def _try_admit(self, req: Req, adder: PrefillAdder) -> bool:
        """Match and lock the request's cached prefix, then ask the adder; undo the lock on refusal."""
        match = self.tree_cache.match_prefix(prefix_match_key(req))
        evictable_before = self.tree_cache.evictable_size()
        self.tree_cache.inc_lock_ref(match.last_node)
        adder.rem_total -= evictable_before - self.tree_cache.evictable_size()
        prefix_len = int(match.indices.numel())
        if not adder.try_add(req, prefix_len):
            self.tree_cache.dec_lock_ref(match.last_node)
            adder.rem_total += evictable_before - self.tree_cache.evictable_size()
            return False
        row = self.req_to_token_pool.alloc()
        assert row is not None  # checked by the caller
        req.req_pool_idx = row
        req.last_node = match.last_node
        req.prefix_len = prefix_len
        req.kv_len = prefix_len
        req.prefix_indices = match.indices
        if req.retracted_count == 0 and req.jump_requeues == 0:
            req.cached_tokens = prefix_len
        if prefix_len:
            self.req_to_token_pool.req_to_token[row, :prefix_len] = match.indices.to(torch.int32)
        return True

    def _shares_uncached_prefix(self, req: Req, adder: PrefillAdder) -> bool:
        """In-batch prefix dedup (SGLang's in-batch prefix caching check): True when ``req``'s uncached part
        starts with >= IN_BATCH_PREFIX_MIN tokens that a request admitted to this batch is about to compute.
        Deferring it one step lets it hit the cache instead of computing the same KV twice."""
        if isinstance(self.tree_cache, NoReuseCache) or not adder.admitted:
            return False
        key = prefix_match_key(req)
        cached = int(self.tree_cache.match_prefix(key).indices.numel())
        probe = key[cached : cached + IN_BATCH_PREFIX_MIN]
        if len(probe) < IN_BATCH_PREFIX_MIN:
            return False
        for other, _ in adder.admitted:
            if other.origin_input_ids[cached : cached + IN_BATCH_PREFIX_MIN] == probe:
                return True
        return False

    def _cache_unfinished(self, req: Req) -> None:
        """Insert a request's computed KV into the radix cache right after its extend (SGLang's
        cache_unfinished_req), so requests arriving while it decodes reuse its prompt. Slots that duplicate
        tokens already in the tree are freed and replaced by the tree's; the lock moves to the new last node."""
        if isinstance(self.tree_cache, NoReuseCache) or req.req_pool_idx is None or req.kv_len <= req.prefix_len:
            return
        row = req.req_pool_idx
        key = req.seq()[: req.kv_len]
        slots = self.req_to_token_pool.req_to_token[row, : req.kv_len].to(torch.int64)
        already = self.tree_cache.insert(key, slots)
        if already > req.prefix_len:
            self.allocator.free(slots[req.prefix_len : already])
        match = self.tree_cache.match_prefix(key)
        self.req_to_token_pool.req_to_token[row, : match.indices.numel()] = match.indices.to(torch.int32)
        self.tree_cache.inc_lock_ref(match.last_node)
        if req.last_node is not None:
            self.tree_cache.dec_lock_ref(req.last_node)
        req.last_node = match.last_node
        req.prefix_len = int(match.indices.numel())
        req.prefix_indices = match.indices

    # ------------------------------------------------------------------ decode
    def _schedule_decode(self) -> ScheduleBatch | None:
        if not self.running:
            return None
        while len(self.running) > 1 and self._free_or_evictable() < len(self.running):
            self._retract_one()
        return self._build_batch(ForwardMode.DECODE, [(r, 1) for r in self.running])

    def _free_or_evictable(self) -> int:
        return self.allocator.available_size() + self.tree_cache.evictable_size()

    def _retract_one(self) -> None:
        """Retract the running request with the least progress (fewest outputs, longest prompt): its KV goes
        into the radix cache (evictable, reusable on resumption) and it re-queues with its outputs kept."""
        victim = min(self.running, key=lambda r: (len(r.output_ids), -len(r.origin_input_ids)))
        self.running.remove(victim)
        self._release(victim)
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
            self._finish_now(req, req.finished_reason or {"type": "abort", "message": "grammar failed"})
        for req in ready:
            self.grammar.jump_forward(req, self.stop_checker)
            if req.finished:
                self._finish_now(req, req.finished_reason)  # type: ignore[arg-type]
            else:
                self.waiting.append(req)

    def _requeue_after_jump(self, req: Req) -> None:
        """A request that got jump-forward tokens: release its row (its KV goes into the radix cache) and queue
        it, so the next extend prefills the new tokens (re-using the cached prefix), like a resumed request."""
        if req in self.running:
            self.running.remove(req)
        self._release(req)
        req.jump_requeues += 1
        if not req.finished:
            self.waiting.append(req)

    # ------------------------------------------------------------------ memory
    def _alloc_slots(self, n: int) -> torch.Tensor:
        slots = self.allocator.alloc(n)
        if slots is None:
            self.tree_cache.evict(n - self.allocator.available_size())
            slots = self.allocator.alloc(n)
        if slots is None:
            raise RuntimeError(
                f"KV pool exhausted: need {n} slots, {self.allocator.available_size()} free (admission budget violated)"
            )
        return slots

    def _build_batch(self, mode: ForwardMode, items: list[tuple[Req, int]]) -> ScheduleBatch:
        total = sum(n for _, n in items)
        slots = self._alloc_slots(total)
        batch = ScheduleBatch.build(mode, items, slots)
        table = self.req_to_token_pool.req_to_token
        offset = 0
        for req, n in items:
            assert req.req_pool_idx is not None
            table[req.req_pool_idx, req.kv_len : req.kv_len + n] = slots[offset : offset + n].to(torch.int32)
            offset += n
        return batch

    def _release(self, req: Req) -> None:
        """Give back everything a request holds: its sequence's KV goes into the prefix cache (duplicates of
        already-cached tokens are freed), its prefix lock is dropped and its row returned."""
        row = req.req_pool_idx
        if row is None:
            return
        slots = self.req_to_token_pool.req_to_token[row, : req.kv_len].to(torch.int64)
        key = req.seq()[: req.kv_len]
        already = self.tree_cache.insert(key, slots)
        if already > req.prefix_len:
            self.allocator.free(slots[req.prefix_len : already])
        if req.last_node is not None:
            self.tree_cache.dec_lock_ref(req.last_node)
        self.req_to_token_pool.free(row)
        req.req_pool_idx = None
        req.last_node = None
        req.kv_len = req.prefix_len = 0
        req.prefix_indices = torch.empty(0, dtype=torch.int64)

    # ------------------------------------------------------------------ output
    def _finish_now(self, req: Req, reason: dict[str, Any]) -> bool:
        req.finished_reason = reason
        self._pending.append(self._make_output(req))
        return True

    def _make_output(self, req: Req) -> ReqOutput:
        out = ReqOutput(
            rid=req.rid,
            new_token_ids=req.new_token_ids,
            finish_reason=req.finished_reason,
            prompt_tokens=len(req.origin_input_ids),
            completion_tokens=len(req.output_ids),
            cached_tokens=req.cached_tokens,
            jump_forward_tokens=req.jump_forward_tokens,
        )
        if req.return_logprob:
            out.input_token_logprobs = req.delta_input_logprobs
            out.input_top_logprobs = req.delta_input_top
            out.output_token_logprobs = req.delta_output_logprobs
            out.output_top_logprobs = req.delta_output_top
            req.delta_input_logprobs, req.delta_input_top = [], []
            req.delta_output_logprobs, req.delta_output_top = [], []
        req.new_token_ids = []
        return out

    def active_owned_slots(self) -> torch.Tensor:
        """KV slots owned by requests (not by the cache): int64 ``[k]``."""
        parts = [
            self.req_to_token_pool.req_to_token[r.req_pool_idx, r.prefix_len : r.kv_len].to(torch.int64)
            for r in [*self.running, *self.waiting, *([self.chunked_req] if self.chunked_req else [])]
            if r.req_pool_idx is not None
        ]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)

    def check_integrity(self) -> None:
        """Assert every KV slot is exactly one of free, cached (evictable/protected) or request-owned."""
        self.tree_cache.check_integrity(self.active_owned_slots())
        rows = [r.req_pool_idx for r in [*self.running, *self.waiting] if r.req_pool_idx is not None]
        if self.chunked_req is not None and self.chunked_req.req_pool_idx is not None:
            rows.append(self.chunked_req.req_pool_idx)
        assert len(rows) + self.req_to_token_pool.available_size() == self.req_to_token_pool.size, (
            "req_to_token rows leaked"
        )
