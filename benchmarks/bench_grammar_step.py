"""Per-decode-step cost of grammar-constrained sampling, phase by phase, without a model (issue 7, target 3).

A batch of ``--batch`` JSON-schema requests (bench_json_decode.py's PERSON_SCHEMA and FIXED_KEY_SCHEMA) decodes
``--steps`` steps on random logits (float32 ``[batch, 32000]``, the bench-llama-40m vocabulary and its Llama-2
tokenizer) through the scheduler's own code: ``GrammarHooks`` (runtime/constrained.py) and the ``Sampler``,
greedy like bench_json_decode.py. The sampled tokens are random but always valid (they come from the masked
logits); a request whose grammar terminates is replaced by a fresh one, so the batch stays full. Phases timed
per step (ms):

    copy: the sampling-rows copy of the logits ``ScheduleBatch.sample`` makes when a request is constrained.
    fill: ``GrammarHooks.fill_bitmask`` (one xgrammar bitmask row per request).
    apply: ``GrammarHooks.apply_bitmask`` (-inf where forbidden).
    sample: ``SamplingBatchInfo.build`` + ``Sampler.sample``.
    accept: ``GrammarHooks.accept`` per request (matcher advance + termination check).
    jump_check: ``GrammarHooks.jump_forward`` as the scheduler calls it (jump-forward off, as in target 3 (a)).
    jump_probe: ``find_jump_forward_string`` per request (what jump-forward on would add first; not in total).

Variants, all in one run on the same token streams' seeds, ``<schema>/<grammar>/<apply>``: grammar ``repeat``
(xgrammar's own bounded repetitions: before grammar/ebnf_rewrite.py) or ``unrolled`` (the default now); apply
``xgr`` (xgrammar's C++ CPU kernel: before) or ``numpy`` (the default now). ``repeat/xgr`` is the code before
this change, ``unrolled/numpy`` the code after. ``unconstrained`` is the same sampler step without any grammar
and without the copy. ``--threads`` sets torch's intra-op threads (default: torch's choice, like the server;
on a busy 2-core host two threads make the copy and the sampler ~20x slower: compare ``--threads 1``).

    python benchmarks/bench_grammar_step.py     # writes benchmarks/results/grammar_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from typing import Any

import torch
from bench_json_decode import FIXED_KEY_SCHEMA, PERSON_SCHEMA
from common import BENCH_MODEL
from native_client import write_result

from radixgen.grammar import xgrammar_backend
from radixgen.runtime import constrained
from radixgen.runtime.constrained import GrammarHooks
from radixgen.runtime.req import Req
from radixgen.runtime.sampler import Sampler, SamplingBatchInfo
from radixgen.runtime.sampling_params import SamplingParams
from radixgen.runtime.server_args import ServerArgs

PHASES = ("copy", "fill", "apply", "sample", "accept", "jump_check")
VOCAB = 32000


class _NoStops:
    def check(self, req: Req, token: int) -> None:
        pass


def _new_req(hooks: GrammarHooks, spec: str, i: int, params: SamplingParams) -> Req:
    req = Req(f"r{i}", [1], params)
    req.grammar = hooks.manager.submit("json_schema", spec).result().matcher()
    return req


def run_variant(
    hooks: GrammarHooks, spec: str | None, batch: int, steps: int, seed: int, sticky: float
) -> tuple[dict[str, list[float]], int]:
    """Decode ``steps`` steps; returns (ms per phase per step, requests completed).

    Logits: float32 ``[batch, V]`` = N(0, 1) noise + ``sticky`` * a N(0, 1) preference drawn once per request,
    so a request keeps choosing its favourite allowed tokens (as the dummy-weight model repeats " Gr Gr").
    """
    params = SamplingParams(temperature=0.0, max_new_tokens=1 << 20)
    reqs = [_new_req(hooks, spec, i, params) if spec else Req(f"r{i}", [1], params) for i in range(batch)]
    sampler, gen = Sampler(), torch.Generator().manual_seed(seed)
    pref = torch.randn(batch, VOCAB, generator=gen) * sticky
    times: dict[str, list[float]] = defaultdict(list)
    done, stops = 0, _NoStops()
    for _ in range(steps):
        logits = torch.randn(batch, VOCAB, generator=gen) + pref
        t0 = time.perf_counter()
        marks = [("start", t0)]
        if spec:
            rows = logits[torch.arange(batch)]
            marks.append(("copy", time.perf_counter()))
            filled = hooks.fill_bitmask(reqs)
            marks.append(("fill", time.perf_counter()))
            assert filled is not None
            hooks.apply_bitmask(rows, *filled)
            marks.append(("apply", time.perf_counter()))
        else:
            rows = logits
        info = SamplingBatchInfo.build(
            params=[r.sampling_params for r in reqs],
            generators=[None] * batch,
            output_ids=[r.output_ids for r in reqs],
            prompt_ids=[r.origin_input_ids for r in reqs],
            suppress_ids=[[] for _ in reqs],
            vocab_size=VOCAB,
        )
        ids = sampler.sample(rows, info).tolist()
        marks.append(("sample", time.perf_counter()))
        for r, t in zip(reqs, ids, strict=True):
            r.output_ids.append(t)
            hooks.accept(r, t)
        marks.append(("accept", time.perf_counter()))
        for r in reqs:
            hooks.jump_forward(r, stops)
        marks.append(("jump_check", time.perf_counter()))
        if spec:
            for r in reqs:
                if r.grammar is not None and not r.finished:
                    r.grammar.find_jump_forward_string()
            times["jump_probe"].append((time.perf_counter() - marks[-1][1]) * 1e3)
        for (_, a), (name, b) in zip(marks, marks[1:], strict=False):
            times[name].append((b - a) * 1e3)
        times["total"].append((marks[-1][1] - t0) * 1e3)
        for i, r in enumerate(reqs):
            if r.finished:
                assert r.finished_reason and r.finished_reason["type"] == "stop", r.finished_reason
                done += 1
                reqs[i] = _new_req(hooks, spec, i, params)  # type: ignore[arg-type]
                pref[i] = torch.randn(VOCAB, generator=gen) * sticky
    return times, done


def _xgrammar_apply(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int], vocab_size: int) -> None:
    """The apply path before the numpy one: xgrammar's C++ CPU kernel."""
    import xgrammar as xgr

    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=rows, backend="cpu")


def _summary(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.fmean(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(BENCH_MODEL))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--sticky", type=float, default=3.0, help="weight of each request's fixed token preference")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    schemas = {"person": json.dumps(PERSON_SCHEMA), "fixed_key": json.dumps(FIXED_KEY_SCHEMA)}
    results: dict[str, Any] = {}
    sargs = ServerArgs(model_path=args.model, max_running_requests=args.batch)
    hooks = {unroll: GrammarHooks(sargs, None, VOCAB, (2,)) for unroll in (False, True)}  # a cache per variant
    original = xgrammar_backend.unroll_bounded_repeats
    try:
        for unroll, h in hooks.items():
            if not unroll:
                xgrammar_backend.unroll_bounded_repeats = lambda text: text  # the pre-rewrite grammar
            for spec in schemas.values():
                h.manager.submit("json_schema", spec).result()  # compile outside the timing
            xgrammar_backend.unroll_bounded_repeats = original
    finally:
        xgrammar_backend.unroll_bounded_repeats = original

    run_variant(hooks[True], None, args.batch, 20, 0, args.sticky)  # warm up torch
    free, _ = run_variant(hooks[True], None, args.batch, args.steps, 0, args.sticky)
    results["unconstrained"] = {"ms_per_step": _summary(free)}
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, {args.steps} steps, vocab {VOCAB}")
    print(f"{'variant':<26}" + "".join(f"{k:>11}" for k in (*PHASES, "total", "jump_probe")) + "  done  vs free")
    base = results["unconstrained"]["ms_per_step"]["total"]
    print(f"{'unconstrained':<26}" + "".join(f"{base if k == 'sample' else 0:11.3f}" for k in PHASES) + f"{base:11.3f}")
    numpy_apply = constrained.apply_token_bitmask_cpu
    for name, spec in schemas.items():
        for unroll, xgr_apply in ((False, True), (True, True), (True, False)):
            label = f"{name}/{'unrolled' if unroll else 'repeat'}/{'xgr' if xgr_apply else 'numpy'}"
            constrained.apply_token_bitmask_cpu = _xgrammar_apply if xgr_apply else numpy_apply  # type: ignore
            try:
                times, done = run_variant(hooks[unroll], spec, args.batch, args.steps, 1, args.sticky)
            finally:
                constrained.apply_token_bitmask_cpu = numpy_apply  # type: ignore[assignment]
            s = _summary(times)
            extra = s["total"] - base
            results[label] = {"ms_per_step": s, "completed_requests": done, "extra_ms_vs_unconstrained": extra}
            cells = "".join(f"{s.get(k, 0.0):11.3f}" for k in (*PHASES, "total", "jump_probe"))
            print(f"{label:<26}{cells}{done:6d}  +{extra:.3f} ms")
    for h in hooks.values():
        h.shutdown()
    report = {"benchmark": "grammar_step", "config": vars(args), "torch_threads": torch.get_num_threads(), **results}
    write_result("grammar_step", report)
    return report


if __name__ == "__main__":
    main()
