"""Test helper for test_tensor_parallel: the scenario every model runs, and the body of one tensor-parallel rank.

A module of its own (imported by name from ``tests/``) so that ``torch.multiprocessing`` spawn can import
``rank_main`` in the child processes (pytest imports test files under names the children cannot import).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from model_harness import KVHarness

from radixgen.runtime.distributed import TensorParallelGroup
from radixgen.runtime.models import ModelConfig, load_model
from radixgen.runtime.models.llama import LlamaForCausalLM

PROMPT_LENS = (9, 5, 13)
DECODE_STEPS = 5


def _prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in PROMPT_LENS]


def run_scenario(model: LlamaForCausalLM) -> tuple[torch.Tensor, list[int]]:
    """One EXTEND of three requests (``PROMPT_LENS``), ``DECODE_STEPS`` greedy DECODE steps, an EXTEND of a 4-token
    chunk onto request 0's cached sequence, ``DECODE_STEPS`` more DECODE steps: float32 logits of every forward,
    concatenated ``[N, vocab]``, and the greedy tokens fed."""
    harness = KVHarness(model, max_requests=4, num_slots=128, seed=7)
    rows = [harness.new_request() for _ in PROMPT_LENS]
    out = [harness.extend(rows, _prompts(model.config.vocab_size))]  # [sum(PROMPT_LENS), vocab]
    ends = torch.tensor(PROMPT_LENS).cumsum(0) - 1  # each request's last prompt token
    last, fed = out[0][ends], []
    for step in range(2 * DECODE_STEPS):
        tokens = last.argmax(dim=-1).tolist()
        fed += tokens
        if step == DECODE_STEPS:  # a new chunk onto request 0's cached sequence (an extend with a prefix)
            chunk = [tokens[0], 3, 5, 7]
            out.append(harness.extend(rows[:1], [chunk]))  # [4, vocab]
        out.append(harness.decode(rows, tokens))  # [3, vocab]
        last = out[-1]
    return torch.cat(out), fed


def teacher_forced(model: LlamaForCausalLM, tokens: list[int]) -> torch.Tensor:
    """Logits ``[len(tokens) + 1, vocab]`` of one extend of BOS + ``tokens``."""
    harness = KVHarness(model, num_slots=len(tokens) + 8)
    return harness.extend([harness.new_request()], [[1, *tokens]])


class _AnyLoRA:
    """A stand-in LoRA manager: every batch gets a (non-None) ``lora``."""

    def prepare(self, loras: list[str | None], extend_lens: list[int]) -> object:
        return object()


def rank_main(
    rank: int, tp_size: int, port: int, jobs: dict[str, dict[str, Any]], teacher: list[int], out_dir: str
) -> None:
    """One of ``tp_size`` ranks: join the gloo group at 127.0.0.1:``port``, run every job on this rank's shard and
    save the results to ``out_dir/rank<r>.pt``: per job name, ``(logits, tokens)`` of ``run_scenario`` (``kind``
    "scenario") or ``(teacher_forced logits, weight formats)`` (``kind`` "teacher": of the job's ``tokens``, else of
    ``teacher``), and ``<name>:kv_heads``; plus ``lora_error``, the message of a forward with a LoRA batch. A job:
    ``path`` (the model), ``load`` (keyword arguments of ``load_model``), ``kind``."""
    torch.set_num_threads(1)
    group = TensorParallelGroup.initialize(tp_size, rank, f"tcp://127.0.0.1:{port}", timeout_s=60)
    results: dict[str, Any] = {}
    try:
        for name, job in jobs.items():
            model = load_model(ModelConfig.from_pretrained(job["path"]), tp_group=group, **job["load"])
            if job["kind"] == "scenario":
                results[name] = run_scenario(model)
            else:
                tokens = job.get("tokens", teacher)
                results[name] = (teacher_forced(model, tokens), model.weight_report()["formats"])
            results[name + ":kv_heads"] = model.tp_partition.num_kv_heads
        lora_harness = KVHarness(model, lora=_AnyLoRA())  # type: ignore[arg-type]
        try:
            lora_harness.extend([lora_harness.new_request()], [[1, 2, 3]])
        except ValueError as e:
            results["lora_error"] = str(e)
    finally:
        group.destroy()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


