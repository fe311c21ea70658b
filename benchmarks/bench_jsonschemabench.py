"""JSONSchemaBench (Geng et al. 2025, "Generating Structured Outputs from Language Models: Benchmark and
Studies", arXiv:2501.10868) on radixgen's grammar-constrained decoding.

Per subset (``../shared/datasets/jsonschemabench/{Github_trivial,Github_easy,Glaiveai2K}.jsonl``):

* coverage: the fraction of schemas accepted (validated and compiled by the backend), the fraction rejected
  with a clear error before any work (GrammarError: invalid schema, keyword the backend does not enforce, ...)
  with the most frequent reasons, and the fraction that failed to compile after validation;
* validity: for the first ``--num-generate`` accepted schemas, one greedy document each (one batched
  ``Engine.generate`` call, ``max_new_tokens`` bounded); documents that finished (finish reason ``stop``) are
  validated with ``jsonschema`` (formats checked); documents cut by ``max_new_tokens`` are counted apart (a
  random or tiny model may loop inside an unbounded string) — by construction they are valid prefixes.

Model: stories260K by default (a real 260K-parameter TinyStories model, sentencepiece vocabulary of 512, fast
on a CPU); ``--model ../shared/models/bench-llama-40m --load-format dummy`` uses the real Llama-2 32k tokenizer
with random weights.

Run: python benchmarks/bench_jsonschemabench.py [--num-generate 100] [--limit N] [--out results.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "datasets" / "jsonschemabench"
SUBSETS = ("Github_trivial", "Github_easy", "Glaiveai2K")
PROMPT = "Here is the JSON document:\n"


def load_subset(name: str, limit: int | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def reason_of(message: str) -> str:
    """A short category for a GrammarError message (for the top-reasons table)."""
    m = re.search(r"'(\$?[A-Za-z]+)' at [^:]*: (.*?)(;|$)", message)
    if "does not enforce" in message and m:
        why = m.group(2)
        if why.startswith("format"):
            return f"unenforced format {why.split()[1]}"
        return f"unenforced '{m.group(1)}' ({why[:48]})"
    if "invalid schema" in message:
        return "invalid schema (meta-schema)"
    if "no JSON document satisfies" in message:
        return "unsatisfiable schema"
    return message.split(":", 1)[-1].strip()[:70]


def run_subset(engine: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from jsonschema import Draft202012Validator, validators

    from radixgen.grammar import GrammarError
    from radixgen.grammar.json_formats import format_checker

    manager = engine.scheduler.grammar.manager
    rows = load_subset(name, args.limit)
    accepted: list[dict[str, Any]] = []
    reasons: collections.Counter[str] = collections.Counter()
    compile_failed: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    futures = []
    for row in rows:  # validation is synchronous; compiles run on the manager's threads meanwhile
        try:
            futures.append((row, manager.submit("json_schema", row["json_schema"], args.best_effort)))
        except GrammarError as e:
            reasons[reason_of(str(e))] += 1
    for row, fut in futures:
        try:
            fut.result(timeout=args.compile_timeout)
        except Exception as e:  # noqa: BLE001 - compile errors are reported, not raised
            compile_failed[str(e)[:70]] += 1
            continue
        accepted.append(row)
    compile_s = time.perf_counter() - t0
    sample = accepted[: args.num_generate]
    params = {"temperature": 0, "max_new_tokens": args.max_new_tokens, "grammar_best_effort": args.best_effort}
    t0 = time.perf_counter()
    outs = engine.generate([PROMPT] * len(sample), [{**params, "json_schema": r["json_schema"]} for r in sample])
    gen_s = time.perf_counter() - t0
    checker = format_checker()
    stop = valid = cut = aborted = 0
    invalid: list[dict[str, Any]] = []
    for row, out in zip(sample, outs, strict=True):
        reason = out["meta_info"]["finish_reason"]["type"]
        if reason == "length":
            cut += 1
            continue
        if reason != "stop":
            aborted += 1
            continue
        stop += 1
        schema = json.loads(row["json_schema"])
        try:
            doc = json.loads(out["text"])
            cls = validators.validator_for(schema, default=Draft202012Validator)
            errors = [e.message for e in cls(schema, format_checker=checker).iter_errors(doc)]
        except ValueError as e:
            errors = [f"not JSON: {e}"]
        if errors:
            invalid.append({"id": row["unique_id"], "errors": errors[:2], "text": out["text"][:300]})
        else:
            valid += 1
    n = len(rows)
    return {
        "subset": name,
        "schemas": n,
        "accepted": len(accepted) / n,
        "rejected": sum(reasons.values()) / n,
        "compile_failed": sum(compile_failed.values()) / n,
        "top_rejection_reasons": reasons.most_common(args.top_reasons),
        "compile_failures": compile_failed.most_common(args.top_reasons),
        "validate_compile_s": compile_s,
        "generated": len(sample),
        "completed": stop,
        "cut_by_length": cut,
        "aborted": aborted,
        "valid_of_completed": valid / stop if stop else float("nan"),
        "invalid_examples": invalid[:5],
        "generate_s": gen_s,
        "completion_tokens": sum(o["meta_info"]["completion_tokens"] for o in outs),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHARED / "models" / "stories260K"))
    p.add_argument("--load-format", default="auto")
    p.add_argument("--grammar-backend", default="xgrammar", choices=("xgrammar", "outlines"))
    p.add_argument("--subsets", nargs="+", default=list(SUBSETS), choices=SUBSETS)
    p.add_argument("--limit", type=int, default=None, help="only the first N schemas of each subset")
    p.add_argument("--num-generate", type=int, default=100, help="accepted schemas per subset to generate for")
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--best-effort", action="store_true", help="accept keywords the backend does not enforce")
    p.add_argument("--compile-timeout", type=float, default=30.0)
    p.add_argument("--top-reasons", type=int, default=8)
    p.add_argument("--enable-jump-forward", action="store_true")
    p.add_argument(
        "--grammar-strict-json-schema",
        action="store_true",
        help="close every object (a random model never ends an open object: it keeps adding properties)",
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    import torch

    from radixgen.runtime import Engine

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    engine = Engine(
        args.model,
        load_format=args.load_format,
        grammar_backend=args.grammar_backend,
        enable_jump_forward=args.enable_jump_forward,
        grammar_strict_json_schema=args.grammar_strict_json_schema,
        max_running_requests=max(args.num_generate, 1),
        max_total_tokens=max(args.num_generate, 1) * 512 + 4096,
    )
    results = [run_subset(engine, name, args) for name in args.subsets]
    for r in results:
        print(
            f"{r['subset']:15s} schemas {r['schemas']:5d}  accepted {r['accepted']:6.1%}"
            f"  rejected {r['rejected']:6.1%}  compile-failed {r['compile_failed']:5.1%}"
            f" | generated {r['generated']:3d}  completed {r['completed']:3d}"
            f"  valid {r['valid_of_completed']:6.1%} of completed  cut by length {r['cut_by_length']:3d}"
            f"  ({r['generate_s']:.1f}s, {r['completion_tokens']} tokens)"
        )
        for reason, count in r["top_rejection_reasons"]:
            print(f"    {count:5d}  {reason}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    engine.shutdown()
    return results


if __name__ == "__main__":
    main()
