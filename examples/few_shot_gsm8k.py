"""Few-shot GSM8K with `run_batch`: one shared 5-shot prefix, N test questions, prefilled once.

The program starts with constant text (the few-shot examples, fixed when the program is built), so `run_batch`
traces it, prefills it once, and every question's prompt hits the radix cache for it: the hit rate is roughly
prefix / (prefix + question). The shots are the 5 shortest GSM8K train examples, with worked solutions when they
fit in half the model's context, else with only their final answers (stories260K has a 512-token context and a
512-token vocabulary). Questions whose prompt + max_tokens would not fit are skipped, and said so. Accuracy takes
the last number of each answer; on stories260K it is ~0 — the model writes children's stories.

Run:  .venv/bin/python examples/few_shot_gsm8k.py [--model PATH | --url URL] [--num 16] [--shots 5]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

import httpx
from example_cli import SHARED, example_parser, open_backend

import radixgen as rg

GSM8K = SHARED / "datasets" / "gsm8k"


def load_gsm8k(split: str) -> list[dict[str, str]]:
    """``train`` or ``test``: dicts with ``question`` and ``answer`` (worked solution ending in ``#### N``)."""
    return [json.loads(line) for line in (GSM8K / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def final_answer(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "")


def last_number(text: str) -> str | None:
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def make_program(few_shot: str, max_tokens: int) -> rg.Program:
    """The program, with the few-shot text as a constant (an argument would hide it from prefix tracing)."""

    @rg.function
    def gsm8k(s: Any, question: str) -> None:
        s += few_shot
        s += "Question: " + question + "\nAnswer:"
        s += rg.gen("answer", max_tokens=max_tokens, stop="Question:", temperature=0)

    return gsm8k


def main(backend: rg.Backend, num: int = 16, shots: int = 5, max_tokens: int = 64) -> dict[str, Any]:
    """Answer ``num`` test questions; print throughput, cache hit rate and accuracy; return them."""
    url = getattr(backend, "url", None) or backend.base_url

    def count(texts: list[str]) -> tuple[list[int], int]:
        out = httpx.post(f"{url}/tokenize", json={"text": texts}, timeout=60).json()
        return out["count"], out["max_model_len"]

    train, test = load_gsm8k("train"), load_gsm8k("test")
    examples = sorted(train, key=lambda e: len(e["question"]) + len(e["answer"]))[:shots]
    worked = "".join(
        f"Question: {e['question']}\nAnswer: {re.sub(r'<<[^>]*>>', '', e['answer'])}\n\n" for e in examples
    )
    short = "".join(f"Question: {e['question']}\nAnswer: {final_answer(e['answer'])}\n\n" for e in examples)
    (worked_len, short_len), context_len = count([worked, short])
    few_shot, style = (worked, "worked solutions") if worked_len <= context_len // 2 else (short, "final answers")
    prefix_len = worked_len if few_shot is worked else short_len

    prompts = [few_shot + f"Question: {e['question']}\nAnswer:" for e in test[: num * 4]]
    lengths, _ = count(prompts)
    chosen: list[dict[str, str]] = []
    skipped = 0
    for example, n in zip(test, lengths, strict=False):
        if len(chosen) == num:
            break
        if n + max_tokens <= context_len:
            chosen.append(example)
        else:
            skipped += 1
    print(
        f"{shots}-shot prefix ({style}): {prefix_len} tokens; context {context_len}; "
        f"{len(chosen)} questions ({skipped} longer ones skipped)"
    )

    program = make_program(few_shot, max_tokens)
    t0 = time.perf_counter()
    states = program.run_batch([{"question": e["question"]} for e in chosen], backend=backend)
    elapsed = time.perf_counter() - t0

    correct = prompt = cached = completion = errors = 0
    for i, (example, state) in enumerate(zip(chosen, states, strict=True)):
        if state.error() is not None:
            errors += 1
            print(f"[{i}] ERROR {type(state.error()).__name__}: {state.error()}")
            continue
        usage = state.usage()
        prompt += usage["prompt_tokens"]
        cached += usage["cached_tokens"]
        completion += usage["completion_tokens"]
        predicted, gold = last_number(state["answer"]), final_answer(example["answer"])
        correct += predicted is not None and float(predicted) == float(gold)
        if i < 3:
            print(f"[{i}] Q: {example['question'][:70]}...\n    A: {state['answer'].strip()[:90]!r} -> {predicted} "
                  f"(gold {gold})")  # fmt: skip
    hit_rate = cached / max(prompt, 1)
    accuracy = correct / max(len(states), 1)
    print(
        f"\n{len(states)} programs in {elapsed:.2f}s: {len(states) / elapsed:.2f} programs/s, "
        f"{completion / elapsed:.1f} output tok/s\nprompt_tokens={prompt} cached_tokens={cached} "
        f"hit_rate={hit_rate:.1%}\naccuracy={correct}/{len(states)} = {accuracy:.1%} ({errors} errors)"
    )
    return {"hit_rate": hit_rate, "accuracy": accuracy, "seconds": elapsed, "programs": len(states)}


def parse_args() -> argparse.Namespace:
    parser = example_parser(__doc__)
    parser.add_argument("--num", type=int, default=16, help="number of test questions")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    start = time.perf_counter()
    with open_backend(args) as backend:
        print(f"backend ready in {time.perf_counter() - start:.1f}s: {backend!r}\n")
        main(backend, num=args.num, shots=args.shots, max_tokens=args.max_tokens)
