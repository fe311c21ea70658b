"""Shared pieces of the benchmarks: workload builders (ShareGPT prompts, GSM8K few-shot prefixes), the benchmark
model configs and a writer of seeded dummy weights as a Hugging Face checkpoint."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BENCH_MODEL = SHARED / "models" / "bench-llama-40m"
SHAREGPT = SHARED / "datasets" / "sharegpt" / "ShareGPT_V3_filtered_500.json"
GSM8K = SHARED / "datasets" / "gsm8k"
RESULTS = Path(__file__).resolve().parent / "results"  # JSON outputs of the benchmarks (gitignored)
LLAMA2_TOKENIZER = SHARED / "tokenizers" / "llama2-32k"  # tokenizer.json, tokenizer_config.json, tokenizer.model

# A ~220M Llama for the measurements that need a model whose weights do not fit in cache: bench-llama-40m's shape
# (SwiGLU, tied embeddings, head_dim 64, half as many KV heads as query heads, Llama 2 vocabulary) at hidden 1024,
# 16 layers: 32.8M embedding + 16 x 11.8M = 221.5M parameters (886 MB in float32).
BENCH_220M_CONFIG: dict[str, Any] = {
    **json.loads((BENCH_MODEL / "config.json").read_text()),
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
}


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


def model_config(model: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A model's config.json contents: ``model`` is a Hugging Face directory or already a config dict."""
    if isinstance(model, dict):
        return dict(model)
    return dict(json.loads((Path(model) / "config.json").read_text()))


def write_dummy_checkpoint(
    config: dict[str, Any], out: Path, seed: int = 0, tokenizer_dir: Path = LLAMA2_TOKENIZER
) -> Path:
    """Write a Hugging Face model directory ``out`` (config.json, model.safetensors, the tokenizer files of
    ``tokenizer_dir``) whose float32 weights are exactly radixgen's ``--load-format dummy`` weights for
    ``config`` and ``seed`` (``radixgen.runtime.models.loader.load_model``: N(0, initializer_range) matrices, unit
    norms, zero biases), under the Hugging Face tensor names (q/k/v and gate/up unfused). Other servers (llama.cpp
    after GGUF conversion) can then load the very weights radixgen serves.

    The directory is built beside ``out`` and renamed into place, so an interrupted run leaves no partial model.
    Returns ``out``. Raises ValueError (from ``ModelConfig``) for a config radixgen cannot build, and
    FileExistsError if ``out`` exists.
    """
    import torch
    from safetensors.torch import save_file

    from radixgen.runtime.models.config import ModelConfig
    from radixgen.runtime.models.loader import load_model

    if out.exists():
        raise FileExistsError(f"{out} exists; remove it to rewrite the weights")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        shutil.copyfile(tokenizer_dir / name, tmp / name)
    model = load_model(ModelConfig.from_pretrained(str(tmp)), torch.float32, "dummy", seed=seed, process_weights=False)
    tensors = {name: view.contiguous() for name, view in model.hf_weight_views().items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(out)
    return out


def finish_report(report: dict[str, Any], out: str | Path) -> None:
    """Record the load average after the run next to ``report["load_before"]``, print both, and write the JSON."""
    import os

    report["load_after"] = os.getloadavg()
    print(f"\nload average before {report['load_before']}, after {report['load_after']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
