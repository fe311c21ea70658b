"""Sizes, test selections and time caps of ``gpu_check.py``'s two profiles, and the benchmark model it builds.

``gpu``: the real device run on one CUDA GPU (bfloat16, the ~220M random Llama, compiled Triton kernels).
``dry``: the same steps on the CPU with tiny sizes and the Triton interpreter, for CI and for trying the script
before device time is spent on it. Light module (no torch): the driver imports it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BENCH_220M_CONFIG, BENCH_MODEL

# The dry run's stand-in for common.BENCH_220M_CONFIG: bench-llama-40m's config (Llama 2 tokenizer, 32,000 tokens,
# tied embeddings) with two tiny layers.
LLAMA_TINY_CONFIG: dict[str, Any] = {
    **json.loads((BENCH_MODEL / "config.json").read_text()),
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16,
}  # fmt: skip


@dataclass(frozen=True)
class Profile:
    """One profile: where the steps run and how big they are.

    Attributes:
        name: ``gpu`` or ``dry``.
        device, dtype: torch device and the model / KV dtype name of the benchmarks (``cuda``/``bfloat16`` or
            ``cpu``/``float32``).
        model: config.json of the benchmark model (dummy weights; bench-llama-40m's tokenizer).
        env: environment of every step (``None`` value: the variable is removed).
        kernel_tests, model_tests: pytest arguments (node ids, ``-k``) of the two test steps.
        kernel_test_workers: pytest-xdist workers for kernel_tests when xdist is installed (the device image has
            it): the kernels' many compile variants then compile in parallel. 1: no xdist.
        caps: the most seconds each step may take (the global budget may leave it less).
        decode_batch, decode_context: decode attention's accuracy and bandwidth shape (Llama-3-8B heads).
        extend_check_shape: extend attention's accuracy shape; extend_bench_shapes: its timed shapes (``None``:
            bench_kernels' defaults); each shape is ``bench_kernels.AttnShape``'s fields.
        bitmask_batch, bitmask_vocab: the token bitmask's shape.
        offline_batches: Engine batch sizes (all requests at once); output_len: tokens per request (ignore_eos);
            max_prompt_tokens: ShareGPT prompts are cut to this.
        hf_prompts, hf_batch_size, hf_repeats: Engine vs HF ``generate`` (static batches), alternating runs.
        serving_runs: (max concurrency, number of prompts) per serving run, one server.
        max_total_tokens: the KV pool of the benchmark Engine and server.
        quick: bench_kernels' ``--quick`` (no split sweep, fewer extend shapes).
        parallel_steps: steps run at once (1 on the GPU, where measurements must not overlap; 2 in the dry run,
            whose steps are single-threaded, to use both cores of a CI machine).
    """

    name: str
    device: str
    dtype: str
    model: dict[str, Any]
    env: dict[str, str | None]
    kernel_tests: tuple[str, ...]
    kernel_test_workers: int
    model_tests: tuple[str, ...]
    caps: dict[str, float]
    decode_batch: int
    decode_context: int
    extend_check_shape: dict[str, int]
    extend_bench_shapes: tuple[dict[str, int], ...] | None
    bitmask_batch: int
    bitmask_vocab: int
    offline_batches: tuple[int, ...]
    output_len: int
    max_prompt_tokens: int
    hf_prompts: int
    hf_batch_size: int
    hf_repeats: int
    serving_runs: tuple[tuple[int, int], ...]
    max_total_tokens: int
    quick: bool = False
    parallel_steps: int = 1
    steps: tuple[str, ...] = field(default=("env", "kernel_tests", "model_tests", "kernels", "offline", "serving"))

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device: must be cuda or cpu, got {self.device!r}")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype: must be bfloat16 or float32, got {self.dtype!r}")
        if self.kernel_test_workers < 1:
            raise ValueError(f"kernel_test_workers: must be >= 1, got {self.kernel_test_workers}")
        if self.parallel_steps < 1 or (self.device == "cuda" and self.parallel_steps != 1):
            raise ValueError(f"parallel_steps: must be >= 1, and 1 on CUDA, got {self.parallel_steps}")
        if set(self.caps) != set(self.steps) or min(self.caps.values()) <= 0:
            raise ValueError(f"caps: need a positive cap for each of {self.steps}, got {self.caps}")
        sizes = [self.decode_batch, self.decode_context, self.bitmask_batch, self.bitmask_vocab, self.output_len,
                 self.max_prompt_tokens, self.hf_prompts, self.hf_batch_size, self.hf_repeats, *self.offline_batches,
                 *(x for run in self.serving_runs for x in run)]  # fmt: skip
        if min(sizes) <= 0 or not self.offline_batches or not self.serving_runs:
            raise ValueError("sizes: every batch, length, count and concurrency must be > 0")
        longest = (self.max_prompt_tokens + self.output_len) * max(*self.offline_batches, self.hf_prompts)
        if self.max_total_tokens < longest:
            raise ValueError(f"max_total_tokens: {self.max_total_tokens} < {longest} (largest batch, full length)")


KERNEL_TESTS = "tests/test_kernels.py"
# golden text (also through the triton backend), batching invariance, prefix reuse, bfloat16 against transformers
MODEL_TESTS = (
    "tests/test_triton_e2e.py",
    "tests/test_engine.py::test_golden_greedy_from_bos",
    "tests/test_engine.py::test_batching_invariance",
    "tests/test_engine.py::test_prefix_reuse_reports_cached_tokens",
    "tests/test_model_numerics.py::test_bfloat16_on_test_device_matches_transformers",
)
# the GPU run adds batching invariance under chunked prefill and under retraction (CPU CI runs them anyway)
MODEL_TESTS_GPU = (
    *MODEL_TESTS,
    "tests/test_engine.py::test_batching_invariance_chunked_prefill",
    "tests/test_engine.py::test_batching_invariance_with_retraction",
)

GPU = Profile(
    name="gpu",
    device="cuda",
    dtype="bfloat16",
    model=BENCH_220M_CONFIG,
    # compiled kernels; the tests' larger shapes and full 200-token golden text; their Engines on the GPU
    env={"TRITON_INTERPRET": None, "RADIXGEN_TEST_DEVICE": "cuda", "RADIXGEN_SLOW_TESTS": "1"},
    kernel_tests=(KERNEL_TESTS, "-k", "not compile_for_cuda_targets"),  # the no-GPU cubin check is CI's
    kernel_test_workers=8,
    model_tests=MODEL_TESTS_GPU,
    caps={"env": 30, "kernel_tests": 110, "model_tests": 100, "kernels": 60, "offline": 90, "serving": 90},
    decode_batch=64,
    decode_context=2048,  # the target shape: >= 60% of copy bandwidth at batch 64, 2k-token contexts
    extend_check_shape={"batch": 4, "prefix": 512, "extend": 512},
    extend_bench_shapes=None,
    bitmask_batch=64,
    bitmask_vocab=128256,
    offline_batches=(1, 32, 128),
    output_len=128,
    max_prompt_tokens=256,
    hf_prompts=64,
    hf_batch_size=16,
    hf_repeats=1,
    serving_runs=((1, 8), (64, 128)),
    max_total_tokens=131072,
)

DRY = Profile(
    name="dry",
    device="cpu",
    dtype="float32",
    model=LLAMA_TINY_CONFIG,
    env={"TRITON_INTERPRET": "1", "RADIXGEN_TEST_DEVICE": "cpu", "RADIXGEN_SLOW_TESTS": None,
         "RADIXGEN_TRITON_E2E_TOKENS": "4"},  # fmt: skip
    kernel_tests=tuple(
        f"{KERNEL_TESTS}::{name}"
        for name in ("test_extend_attention_matches_reference[1]", "test_extend_attention_matches_reference[4]",
                     "test_decode_attention_matches_reference[1]", "test_decode_attention_matches_reference[4]",
                     "test_bitmask_matches_reference[33-dtype1]")
    ),  # fmt: skip (the triton backend itself: model_tests' golden text)
    kernel_test_workers=1,
    model_tests=MODEL_TESTS,
    # generous: a loaded 2-core CI machine runs these 3x slower than an idle one (CPU: 2 / 5 / 14 / 4 / 7 / 13 s)
    caps={"env": 60, "kernel_tests": 120, "model_tests": 120, "kernels": 120, "offline": 120, "serving": 120},
    decode_batch=2,
    decode_context=40,
    extend_check_shape={"batch": 2, "prefix": 8, "extend": 8, "num_heads": 4, "num_kv_heads": 2, "head_dim": 64},
    extend_bench_shapes=({"batch": 1, "prefix": 0, "extend": 16, "num_heads": 4, "num_kv_heads": 2, "head_dim": 64},),
    bitmask_batch=2,
    bitmask_vocab=1000,
    offline_batches=(1, 2, 4),
    output_len=4,
    max_prompt_tokens=24,
    hf_prompts=2,
    hf_batch_size=2,
    hf_repeats=1,
    serving_runs=((1, 2), (4, 4)),
    max_total_tokens=2048,
    quick=True,
    parallel_steps=2,
)

PROFILES = {p.name: p for p in (GPU, DRY)}


def write_model_dir(work: Path, profile: Profile) -> Path:
    """A model directory under ``work`` for ``--load-format dummy``: ``profile.model`` as config.json and
    bench-llama-40m's tokenizer files. Returns the directory (rewritten if present)."""
    dst = work / f"llama-{profile.name}"
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(profile.model, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(BENCH_MODEL / name, dst / name)
    return dst
