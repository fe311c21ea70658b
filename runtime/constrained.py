"""The scheduler's grammar hooks: grammar queue, logits masking, token acceptance, jump-forward.

Lifecycle of a constrained request (DESIGN.md, "Grammar-constrained decoding"):

1. ``Scheduler.validate`` → :meth:`GrammarHooks.validate`: syntax, meta-schema, size and unenforced keywords
   are checked synchronously, so ``Engine.generate`` (and the server, as a 400) rejects a bad constraint
   before anything is queued.
2. ``add_request`` → :meth:`GrammarHooks.add`: the compile is submitted to the GrammarManager's threads and the
   request waits in the grammar queue. Each ``step`` :meth:`GrammarHooks.poll` moves requests whose future is
   done to the waiting queue (a fresh matcher attached) without blocking; a failed compile, or one running
   past ``grammar_compile_timeout``, finishes the request with ``{"type": "abort", "message": ...}``.
3. Every sampling step, :meth:`GrammarHooks.mask_logits` fills one int32 bitmask row per constrained request
   (:meth:`~GrammarHooks.fill_bitmask`, a buffer ``[max_running_requests, ceil(V / 32)]`` allocated once) and
   sets disallowed logits to -inf (:meth:`~GrammarHooks.apply_bitmask`: numpy on CPU, see
   ``grammar.base.apply_token_bitmask_cpu``; the Triton kernel of ``radixgen.kernels`` on CUDA). Unconstrained
   rows are never touched; with no constrained row nothing happens at all. Per-phase cost at batch 16 on the
   32k vocabulary: ``python benchmarks/bench_grammar_step.py``.
4. After sampling, :meth:`GrammarHooks.accept` feeds the token to the matcher; a terminated matcher (eos
   accepted where the grammar may end) finishes the request with ``{"type": "stop", "matched": eos_id}``.
5. Jump-forward (``enable_jump_forward``, :meth:`GrammarHooks.jump_forward`): the forced continuation is
   tokenized together with the token sampled this step (never a token already sent to the client), appended to
   ``output_ids``, and the scheduler sends the request back through an extend, like a resumed request: the radix
   cache supplies the KV it had, only the new tokens are prefilled. Not used for requests that return logprobs
   (jumped tokens have none).

The matcher lives on the Req, so it survives retraction (the request keeps its outputs and matcher; on resumption
nothing is re-accepted) and chunked prefill (it samples only after the last chunk).
"""

from __future__ import annotations

import concurrent.futures
import time
from concurrent.futures import Future
from typing import Any

import torch

from radixgen.grammar import CompiledGrammar, GrammarBackend, GrammarLimits, GrammarManager, backend_class
from radixgen.grammar import jump_forward as plan_and_accept_jump
from radixgen.grammar.base import GrammarError, apply_token_bitmask_cpu, bitmask_width
from radixgen.runtime.errors import InvalidRequestError
from radixgen.runtime.fast_tokenizer import load_hf_tokenizer
from radixgen.runtime.io_struct import FinishReason
from radixgen.runtime.req import Req
from radixgen.runtime.sampling_params import SamplingParams
from radixgen.runtime.server_args import ServerArgs

#: while nothing but grammar compiles is pending, the scheduler waits this long for one to finish per step
GRAMMAR_IDLE_WAIT_S = 0.002


def hf_tokenizer(tokenizer: Any, path: str) -> Any:
    """A ``transformers`` tokenizer (what the grammar backends need): ``tokenizer`` itself when it is one (the
    scheduler process and the Engine load one, shared with the stop checker), else loaded from ``path``."""
    from transformers import PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    return load_hf_tokenizer(path)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int], vocab_size: int) -> None:
    """Mask ``logits`` rows ``rows`` in place with ``bitmask`` (int32 ``[len(logits), ceil(V / 32)]`` on CPU)."""
    if logits.is_cuda:
        from radixgen.kernels import apply_token_bitmask_inplace

        device_mask = bitmask.to(logits.device, non_blocking=True)
        idx = torch.tensor(rows, dtype=torch.int64, device=logits.device)
        apply_token_bitmask_inplace(logits, device_mask, idx, vocab_size=min(vocab_size, logits.shape[1]))
    else:
        apply_token_bitmask_cpu(logits, bitmask, rows, min(vocab_size, logits.shape[1]))


class GrammarHooks:
    """Grammar state of one scheduler.

    Args:
        args: server args (grammar_* fields, enable_jump_forward, max_running_requests).
        tokenizer: the scheduler's tokenizer (a transformers tokenizer is used as is, else one is loaded from
            ``args.resolved_tokenizer_path`` when the first grammar compiles).
        vocab_size: the model's vocabulary size (logits width).
        eos_token_ids: the model's eos ids (the grammar's stop tokens).
    """

    def __init__(self, args: ServerArgs, tokenizer: Any, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        self.args = args
        self.vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._eos = list(eos_token_ids)
        limits = GrammarLimits(args.grammar_max_spec_bytes, args.grammar_max_nesting_depth)
        self.manager = GrammarManager(
            args.grammar_backend, self._make_backend, limits, strict_json_schema=args.grammar_strict_json_schema
        )
        self.queue: list[tuple[Req, Future[CompiledGrammar], float]] = []
        self._bitmask: torch.Tensor | None = None

    def _make_backend(self) -> GrammarBackend:
        tok = hf_tokenizer(self._tokenizer, self.args.resolved_tokenizer_path)
        cls = backend_class(self.args.grammar_backend)
        return cls(tok, self.vocab_size, self._eos, any_whitespace=self.args.grammar_any_whitespace)

    # ------------------------------------------------------------------ queue
    def validate(self, params: SamplingParams) -> None:
        """Raises InvalidRequestError (``param``: the constraint's field) for an invalid or unsupported constraint."""
        constraint = params.constraint
        if constraint is not None:
            try:
                self.manager.validate(*constraint, best_effort=params.grammar_best_effort)
            except GrammarError as e:
                raise InvalidRequestError(constraint[0], str(e)) from None

    def add(self, req: Req) -> None:
        """Start compiling ``req``'s constraint; the request waits in the grammar queue meanwhile."""
        kind, spec = req.sampling_params.constraint  # type: ignore[misc]
        fut = self.manager.submit(kind, spec, req.sampling_params.grammar_best_effort)
        self.queue.append((req, fut, time.monotonic() + self.args.grammar_compile_timeout))

    def pending(self) -> bool:
        return bool(self.queue)

    def queued(self) -> list[Req]:
        """The requests waiting for their grammar to compile."""
        return [req for req, _, _ in self.queue]

    def remove(self, rid: str) -> Req | None:
        """Take a request out of the grammar queue (abort)."""
        for i, (req, _, _) in enumerate(self.queue):
            if req.rid == rid:
                del self.queue[i]
                return req
        return None

    def poll(self) -> tuple[list[Req], list[Req]]:
        """Without blocking: ``(ready, failed)``. Ready requests have a matcher; failed ones a finish reason."""
        ready: list[Req] = []
        failed: list[Req] = []
        still: list[tuple[Req, Future[CompiledGrammar], float]] = []
        now = time.monotonic()
        for req, fut, deadline in self.queue:
            if fut.done():
                exc = fut.exception()
                if exc is None:
                    req.grammar = fut.result().matcher()
                    ready.append(req)
                else:
                    req.finished_reason = FinishReason.aborted(str(exc) or type(exc).__name__)
                    failed.append(req)
            elif now > deadline:
                timeout = self.args.grammar_compile_timeout
                msg = f"grammar: compiling the constraint took longer than {timeout:g}s (grammar_compile_timeout)"
                req.finished_reason = FinishReason.aborted(msg)
                failed.append(req)
            else:
                still.append((req, fut, deadline))
        self.queue = still
        return ready, failed

    def wait(self, timeout: float = GRAMMAR_IDLE_WAIT_S) -> None:
        """Block up to ``timeout`` seconds for any queued compile to finish (only when the scheduler is idle)."""
        if self.queue:
            concurrent.futures.wait([f for _, f, _ in self.queue], timeout, concurrent.futures.FIRST_COMPLETED)

    # ------------------------------------------------------------------ decode
    def mask_logits(self, reqs: list[Req], logits: torch.Tensor) -> None:
        """Set the logits of tokens each constrained request's grammar forbids to -inf, in place.

        Args:
            reqs: the sampling requests, one per row of ``logits``.
            logits: float ``[len(reqs), V]`` (a copy the sampler reads next).
        """
        filled = self.fill_bitmask(reqs)
        if filled is not None:
            self.apply_bitmask(logits, *filled)

    def fill_bitmask(self, reqs: list[Req]) -> tuple[torch.Tensor, list[int]] | None:
        """Fill one bitmask row per constrained request: ``(bitmask, rows)`` or None when none is constrained.

        Returns:
            bitmask: int32 ``[len(reqs), ceil(V / 32)]`` (a view of a buffer kept across steps; only the
                ``rows`` rows are written); rows: indices into ``reqs`` of the constrained requests.
        """
        rows = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if not rows:
            return None
        bitmask = self._bitmask_rows(len(reqs))
        for i in rows:
            reqs[i].grammar.fill_next_token_bitmask(bitmask, i)  # type: ignore[union-attr]
        return bitmask, rows

    def apply_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
        """-inf into ``logits`` (float ``[len(reqs), V]``) where ``bitmask`` (from :meth:`fill_bitmask`)
        forbids a token, rows ``rows`` only."""
        apply_token_bitmask(logits, bitmask, rows, self.vocab_size)

    def _bitmask_rows(self, n: int) -> torch.Tensor:
        if self._bitmask is None or self._bitmask.shape[0] < n:
            rows = max(n, self.args.max_running_requests)
            pin = self.args.device.startswith("cuda") and torch.cuda.is_available()
            self._bitmask = torch.empty((rows, bitmask_width(self.vocab_size)), dtype=torch.int32, pin_memory=pin)
        return self._bitmask[:n]

    def accept(self, req: Req, token: int) -> None:
        """Advance ``req``'s matcher by its sampled token; finish it when the grammar terminated."""
        matcher = req.grammar
        if matcher is None:
            return
        if not matcher.accept_token(token):
            req.finished_reason = FinishReason.aborted(f"grammar: the sampled token {token} is not allowed")
        elif matcher.is_terminated():
            req.finished_reason = FinishReason.stopped(token)

    def jump_forward(self, req: Req, stop_checker: Any) -> bool:
        """Append the grammar-forced continuation to ``req``'s outputs (module docstring, step 5).

        The token sampled this step (still in ``new_token_ids``, without KV) may be replaced by the
        retokenization; tokens already sent are never changed. Each appended token goes through the stop
        checker (max_new_tokens, stop strings). Returns True when tokens were appended: the caller must then
        send the request back through an extend (it has tokens without KV).
        """
        if not self.args.enable_jump_forward or req.grammar is None or req.finished or req.return_logprob:
            return False
        budget = req.sampling_params.max_new_tokens - len(req.output_ids)
        if budget <= 0:
            return False
        # replace the last output only if it was sampled this step, has no KV, and no stop-string detokenizer saw it
        last_is_fresh = bool(req.new_token_ids) and req.kv_len == req.seq_len - 1 and req.stop_detok is None
        jump = plan_and_accept_jump(self.manager.backend, req.grammar, req.output_ids, int(last_is_fresh), budget)
        if jump is None:
            return False
        if jump.num_removed:
            del req.output_ids[-jump.num_removed :]
            del req.new_token_ids[-jump.num_removed :]
        added = 0
        for t in jump.new_ids:
            req.output_ids.append(t)
            req.new_token_ids.append(t)
            added += 1
            stop_checker.check(req, t)
            if req.finished:
                break
        req.jump_forward_tokens += added - jump.num_removed
        return True

    def shutdown(self) -> None:
        """Stop the grammar compile threads (queued compiles are cancelled)."""
        self.manager.shutdown()
