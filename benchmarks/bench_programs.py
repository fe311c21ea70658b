"""DSL programs benchmark: structured programs through the frontend on a radix-cache server vs the same LLM calls
sent as independent ``/generate`` requests to a server without the radix cache.

Workloads (bench-llama-40m, dummy weights, real Llama-2 tokenizer; greedy, ignore_eos so every call generates
exactly its max tokens in both modes):
  gsm8k  few-shot GSM8K: a 5-shot prefix (train examples) + one test question per program, one gen of
         --gen-tokens tokens; all programs through ``program.run_batch``.
  tot    tree of thought: a GSM8K question, fork 3 "thoughts" (a gen each), each forks 3 "steps" (a gen each):
         12 gens of --node-tokens tokens per tree, --trees trees through ``run_batch``.

Modes, compared in one run (two servers, started one after the other with ``rg.Runtime``):
  DSL       the programs through ``rg.RuntimeEndpoint`` (the radix cache on; run_batch prefills the common prefix,
            fork prefills each branch point).
  baseline  the DSL's recorded gen calls replayed as independent ``/generate`` requests (same prompt text, same
            max tokens) to a server started with ``--disable-radix-cache``, with the programs' concurrency and call
            dependencies: every program runs at once (as run_batch does), a tree's steps start when their thought
            has finished.

Reported per workload and mode: wall seconds, programs/s, output tok/s, the DSL/baseline throughput ratio, the cache
prompt tokens actually computed (all calls; the DSL's prefix prefills included), the cache hit rate of the gen calls
(sum cached_tokens / sum prompt_tokens from each gen's meta info), the same over the states' ``usage()`` (which also
counts the fork prefills), and the ideal gen-call hit rate (each prompt's longest common token prefix with any other
prompt, i.e. every shared prefix computed once beforehand). Writes benchmarks/results/bench_programs.json.

  python benchmarks/bench_programs.py            # 64 GSM8K programs, 8 trees
  python benchmarks/bench_programs.py --quick    # 16 programs, 2 trees
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

import radixgen as rg
from radixgen.backends.base import GenOutput, PromptView
from radixgen.sampling import SamplingParams

SHARED = Path(__file__).resolve().parents[2] / "shared"
BENCH_MODEL = SHARED / "models" / "bench-llama-40m"
GSM8K = SHARED / "datasets" / "gsm8k"
RESULTS = Path(__file__).resolve().parent / "results" / "bench_programs.json"
TOT_HEADER = (
    "Solve the math problem step by step. First propose a few different ideas, then develop each idea in a few "
    "short steps, and finally give the answer.\n\n"
)


# ------------------------------------------------------------------------------------------------ workloads
def load_gsm8k(shots: int, questions: int) -> tuple[str, list[str]]:
    """(the few-shot prefix built from the first ``shots`` train examples, the first ``questions`` test questions)."""
    train = [json.loads(line) for line in (GSM8K / "train.jsonl").read_text().splitlines() if line.strip()]
    test = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines() if line.strip()]
    prefix = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in train[:shots])
    return prefix, [ex["question"] for ex in test[:questions]]


def make_programs(few_shot: str, gen_tokens: int, node_tokens: int, width: int) -> tuple[rg.Program, rg.Program]:
    @rg.function
    def gsm8k(s: Any, question: str) -> None:
        s += few_shot
        s += "Question: " + question + "\nAnswer:"
        s += rg.gen("answer", max_tokens=gen_tokens)

    @rg.function
    def tree_of_thought(s: Any, question: str) -> None:
        s += TOT_HEADER
        s += "Problem: " + question + "\n"
        thoughts = s.fork(width)
        for i, thought in enumerate(thoughts):
            thought += f"Idea {i + 1}:"
            thought += rg.gen("idea", max_tokens=node_tokens)
            steps = thought.fork(width)
            for j, step in enumerate(steps):
                step += f"\nStep {j + 1}:"
                step += rg.gen("step", max_tokens=node_tokens)
            steps.join()
        thoughts.join()

    return gsm8k, tree_of_thought


# Each program's gen calls as a DAG for the baseline: a list of (prompt text, max tokens, children).
Call = tuple[str, int, list[Any]]


def gsm8k_calls(few_shot: str, question: str, gen_tokens: int) -> list[Call]:
    return [(few_shot + "Question: " + question + "\nAnswer:", gen_tokens, [])]


def tot_calls(state: rg.ProgramState, question: str, node_tokens: int, width: int) -> list[Call]:
    """The tree's gens, rebuilt from its values: an idea's prompt is the root + ``Idea i:``; a step's prompt is
    its idea's prompt + the idea's text + ``\\nStep j:``."""
    root = TOT_HEADER + "Problem: " + question + "\n"
    ideas, steps = state["idea"], state["step"]
    calls: list[Call] = []
    for i in range(width):
        idea_prompt = root + f"Idea {i + 1}:"
        children = [(idea_prompt + ideas[i] + f"\nStep {j + 1}:", node_tokens, []) for j in range(width)]
        assert all(isinstance(x, str) for x in steps[i]) and len(steps[i]) == width
        calls.append((idea_prompt, node_tokens, children))
    return calls


def flatten(calls: list[Call]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for prompt, n, children in calls:
        out.append((prompt, n))
        out += flatten(children)
    return out


# ------------------------------------------------------------------------------------------------ DSL mode
class RecordingEndpoint(rg.RuntimeEndpoint):
    """A RuntimeEndpoint that records every gen call's prompt text, max tokens and meta info."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.calls: list[tuple[str, int | None, dict[str, Any]]] = []
        self.prefills: list[dict[str, Any]] = []  # cache_prefix calls (run_batch's prefix, fork points)
        self._rec_lock = threading.Lock()

    def generate(self, prompt: PromptView, params: SamplingParams, on_delta: Any = None) -> GenOutput:
        out = super().generate(prompt, params, on_delta)
        with self._rec_lock:
            self.calls.append((prompt.text, params.max_tokens, dict(out.meta)))
        return out

    def cache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        meta = super().cache_prefix(prompt)
        with self._rec_lock:
            self.prefills.append(dict(meta))
        return meta


def hit_rate(cached: int, prompt: int) -> float | None:
    return cached / prompt if prompt else None


def run_dsl(
    endpoint: RecordingEndpoint, program: rg.Program, batch: list[dict[str, Any]], progress: bool
) -> tuple[list[rg.ProgramState], dict[str, Any]]:
    endpoint.calls.clear()
    endpoint.prefills.clear()
    start = time.perf_counter()
    states = program.run_batch(batch, backend=endpoint, temperature=0, ignore_eos=True, progress_bar=progress)
    for s in states:
        s.sync()
    wall = time.perf_counter() - start
    errors = [repr(s.error) for s in states if s.error is not None]
    usage = {k: sum(s.usage()[k] for s in states) for k in ("prompt_tokens", "completion_tokens", "cached_tokens")}
    gens = endpoint.calls
    gen_prompt = sum(m.get("prompt_tokens", 0) for _, _, m in gens)
    gen_cached = sum(m.get("cached_tokens", 0) for _, _, m in gens)
    out_tokens = sum(m.get("completion_tokens", 0) for _, _, m in gens)
    pre = endpoint.prefills
    prefilled = gen_prompt - gen_cached + sum(m.get("prompt_tokens", 0) - m.get("cached_tokens", 0) for m in pre)
    metrics = {
        "programs": len(states),
        "failed": len(errors),
        "errors": sorted(set(errors))[:3],
        "gen_calls": len(gens),
        "backend_calls": sum(s.usage()["calls"] for s in states),
        "wall_s": wall,
        "programs_per_s": len(states) / wall,
        "output_tokens": out_tokens,
        "output_tok_per_s": out_tokens / wall,
        "prompt_tokens": gen_prompt,
        "cached_tokens": gen_cached,
        "hit_rate": hit_rate(gen_cached, gen_prompt),
        "hit_rate_usage": hit_rate(usage["cached_tokens"], usage["prompt_tokens"]),
        "prefill_calls": len(pre),
        "prefilled_tokens": prefilled,
    }
    return states, metrics


# ------------------------------------------------------------------------------------------------ baseline mode
async def replay(base_url: str, programs: list[list[Call]]) -> dict[str, Any]:
    """Every program at once; within a program, a call's children start when it has finished."""
    metas: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(1800.0), limits=limits) as client:

        async def call(prompt: str, max_tokens: int, children: list[Call]) -> None:
            sampling = {"max_new_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
            resp = await client.post("/generate", json={"text": prompt, "sampling_params": sampling})
            resp.raise_for_status()
            metas.append(resp.json()["meta_info"])
            await asyncio.gather(*(call(*c) for c in children))

        async def program(calls: list[Call]) -> None:
            await asyncio.gather(*(call(*c) for c in calls))

        start = time.perf_counter()
        await asyncio.gather(*(program(p) for p in programs))
        wall = time.perf_counter() - start
    prompt = sum(m["prompt_tokens"] for m in metas)
    cached = sum(m["cached_tokens"] for m in metas)
    out_tokens = sum(m["completion_tokens"] for m in metas)
    return {
        "programs": len(programs),
        "gen_calls": len(metas),
        "wall_s": wall,
        "programs_per_s": len(programs) / wall,
        "output_tokens": out_tokens,
        "output_tok_per_s": out_tokens / wall,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "hit_rate": hit_rate(cached, prompt),
        "prefilled_tokens": prompt - cached,
    }


# ------------------------------------------------------------------------------------------------ helpers
def ideal_hit_rate(endpoint: rg.RuntimeEndpoint, prompts: list[str]) -> float | None:
    """The best hit rate the gen calls can have when every shared prefix is computed once, outside them (by a
    prefill): each prompt's longest common token prefix with any other prompt, summed, over all prompt tokens."""
    if not prompts:
        return None
    ids: list[list[int]] = []
    for i in range(0, len(prompts), 64):
        resp = httpx.post(endpoint.base_url + "/tokenize", json={"text": prompts[i : i + 64]}, timeout=120.0)
        resp.raise_for_status()
        ids += resp.json()["input_ids"]
    trie: dict[int, list[Any]] = {}  # token -> [count of prompts through this node, children]
    for seq in ids:
        node = trie
        for tok in seq:
            entry = node.setdefault(tok, [0, {}])
            entry[0] += 1
            node = entry[1]
    shared = 0
    for seq in ids:
        node, depth = trie, 0
        for tok in seq:
            count, node = node[tok]
            if count < 2:
                break
            depth += 1
        shared += min(depth, len(seq) - 1)  # the last token is always computed (it gives the logits)
    total = sum(len(seq) for seq in ids)
    return shared / total if total else None


def start_runtime(args: argparse.Namespace, disable_radix_cache: bool) -> rg.Runtime:
    what = "baseline (radix cache off)" if disable_radix_cache else "DSL (radix cache on)"
    print(f"starting server for {what} ...", file=sys.stderr, flush=True)
    extra: dict[str, Any] = {"disable_radix_cache": True} if disable_radix_cache else {}
    if args.num_threads:
        extra["num_threads"] = args.num_threads
    runtime = rg.Runtime(str(args.model), load_format=args.load_format, max_total_tokens=args.max_total_tokens, **extra)
    # warm-up (untimed) with a prompt of its own
    httpx.post(
        runtime.url + "/generate",
        json={"text": "Warm-up request.", "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}},
        timeout=300.0,
    ).raise_for_status()
    return runtime


def fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def print_table(report: dict[str, Any]) -> None:
    print()
    head = f"{'workload':<10}{'mode':<10}{'programs':>9}{'gens':>6}{'wall s':>9}{'prog/s':>9}{'out tok/s':>11}"
    head += f"{'prefilled':>10}{'hit rate':>10}{'ideal':>8}{'ratio':>8}"
    print(head)
    print("-" * len(head))
    for name, w in report["workloads"].items():
        for mode in ("dsl", "baseline"):
            m = w[mode]
            ratio = f"{w['throughput_ratio']:.2f}x" if mode == "dsl" else ""
            ideal = fmt(w.get("ideal_hit_rate"), ".1%") if mode == "dsl" else ""
            print(
                f"{name:<10}{mode:<10}{m['programs']:>9}{m['gen_calls']:>6}{m['wall_s']:>9.2f}"
                f"{m['programs_per_s']:>9.2f}{m['output_tok_per_s']:>11.1f}{m['prefilled_tokens']:>10}"
                f"{fmt(m['hit_rate'], '.1%'):>10}"
                f"{ideal:>8}{ratio:>8}"
            )
    print(
        "\nprefilled: prompt tokens computed (all calls, the DSL's prefix prefills included); hit rate: sum cached /"
        " sum prompt tokens over the gen calls; ideal: the same with every shared prefix computed once beforehand;"
        " ratio: DSL / baseline output throughput"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller run: 16 GSM8K programs, 2 trees")
    p.add_argument("--model", type=Path, default=BENCH_MODEL)
    p.add_argument("--load-format", default="dummy", help="auto | safetensors | dummy (random weights)")
    p.add_argument("--max-total-tokens", type=int, default=65536, help="KV pool size of both servers")
    p.add_argument("--num-threads", type=int, default=None, help="server intra-op threads (default: torch's)")
    p.add_argument("--questions", type=int, default=None, help="GSM8K programs (default 64; quick 16)")
    p.add_argument("--shots", type=int, default=5, help="GSM8K few-shot examples in the prefix")
    p.add_argument("--gen-tokens", type=int, default=32, help="GSM8K: tokens generated per program")
    p.add_argument("--trees", type=int, default=None, help="tree-of-thought programs (default 8; quick 2)")
    p.add_argument("--width", type=int, default=3, help="tree of thought: branches per fork (depth is 2)")
    p.add_argument("--node-tokens", type=int, default=16, help="tree of thought: tokens generated per node")
    p.add_argument("--workloads", default="gsm8k,tot", help="comma-separated subset of gsm8k,tot")
    p.add_argument("--progress", action="store_true", help="show run_batch progress bars")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.questions = args.questions or (16 if args.quick else 64)
    args.trees = args.trees or (2 if args.quick else 8)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not set(args.workloads) <= {"gsm8k", "tot"}:
        raise SystemExit("--workloads: choose from gsm8k, tot")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    few_shot, questions = load_gsm8k(args.shots, max(args.questions, args.trees))
    gsm8k, tot = make_programs(few_shot, args.gen_tokens, args.node_tokens, args.width)
    plans: dict[str, tuple[rg.Program, list[str], Callable[[rg.ProgramState, str], list[Call]]]] = {
        "gsm8k": (gsm8k, questions[: args.questions], lambda s, q: gsm8k_calls(few_shot, q, args.gen_tokens)),
        "tot": (tot, questions[: args.trees], lambda s, q: tot_calls(s, q, args.node_tokens, args.width)),
    }
    results: dict[str, Any] = {}
    replays: dict[str, list[list[Call]]] = {}

    runtime = start_runtime(args, disable_radix_cache=False)
    try:
        endpoint = RecordingEndpoint(runtime.url)
        for name in args.workloads:
            program, qs, to_calls = plans[name]
            print(f"DSL: {name} ({len(qs)} programs) ...", file=sys.stderr, flush=True)
            states, metrics = run_dsl(endpoint, program, [{"question": q} for q in qs], args.progress)
            if metrics["failed"]:
                raise SystemExit(f"{name}: {metrics['failed']} DSL programs failed: {metrics['errors']}")
            programs = [to_calls(s, q) for s, q in zip(states, qs, strict=True)]
            replayed = sorted(flatten([c for p in programs for c in p]))
            recorded = sorted((text, n) for text, n, _ in endpoint.calls)
            if replayed != recorded:  # the baseline must send exactly the DSL's gen calls
                raise SystemExit(f"{name}: the rebuilt calls differ from the DSL's recorded gen calls")
            replays[name] = programs
            results[name] = {
                "dsl": metrics,
                "ideal_hit_rate": ideal_hit_rate(endpoint, [text for text, _ in recorded]),
            }
        endpoint.close()
    finally:
        runtime.close()

    runtime = start_runtime(args, disable_radix_cache=True)
    try:
        for name in args.workloads:
            print(f"baseline: {name} ...", file=sys.stderr, flush=True)
            results[name]["baseline"] = asyncio.run(replay(runtime.url, replays[name]))
    finally:
        runtime.close()

    for w in results.values():
        w["throughput_ratio"] = w["dsl"]["output_tok_per_s"] / w["baseline"]["output_tok_per_s"]
    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "workloads": results,
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
