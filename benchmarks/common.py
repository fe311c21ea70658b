"""Shared workload builders for the benchmarks (ShareGPT prompts, GSM8K few-shot prefixes)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BENCH_MODEL = SHARED / "models" / "bench-llama-40m"
SHAREGPT = SHARED / "datasets" / "sharegpt" / "ShareGPT_V3_filtered_500.json"
GSM8K = SHARED / "datasets" / "gsm8k"
RESULTS = Path(__file__).resolve().parent / "results"  # JSON outputs of the benchmarks (gitignored)


def sharegpt_prompts(tokenizer: Any, n: int, max_tokens: int, seed: int = 0) -> list[list[int]]:
    """``n`` ShareGPT first-turn prompts as token ids (with BOS), each truncated to ``max_tokens`` tokens."""
    rows = json.loads(SHAREGPT.read_text())
    rng = random.Random(seed)
    rng.shuffle(rows)
    out: list[list[int]] = []
    for row in rows:
        text = row["conversations"][0]["value"]
        ids = tokenizer.encode(text)[:max_tokens]
        if len(ids) >= 4:
            out.append(ids)
        if len(out) == n:
            break
    return out


def gsm8k_few_shot_groups(
    tokenizer: Any, groups: int, per_group: int, prefix_tokens: int = 1000
) -> tuple[list[list[int]], list[int]]:
    """``groups`` few-shot prefixes of about ``prefix_tokens`` tokens (distinct GSM8K train examples per
    group), each followed by ``per_group`` distinct test questions. Returns (prompts as token ids, the
    prefix length of each prompt's group in tokens)."""
    train = [json.loads(line) for line in (GSM8K / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines()]
    prompts: list[list[int]] = []
    prefix_lens: list[int] = []
    t = 0
    q = 0
    for _ in range(groups):
        shots = ""
        while len(tokenizer.encode(shots)) < prefix_tokens:
            ex = train[t]
            t += 1
            shots += f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n"
        prefix = tokenizer.encode(shots)
        for _ in range(per_group):
            question = tokenizer.encode(f"Question: {test[q]['question']}\nAnswer:", add_special_tokens=False)
            q += 1
            prompts.append(prefix + question)
            prefix_lens.append(len(prefix))
    return prompts, prefix_lens
