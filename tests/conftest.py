"""Shared test fixtures: paths into ../shared and a module-scoped stories260K Engine."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Triton picks interpreter vs compiled mode when it is first imported (transformers may import it early), so
# without a CUDA device the interpreter is selected here, before anything else loads triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STORIES = SHARED / "models" / "stories260K"
BENCH_40M = SHARED / "models" / "bench-llama-40m"
LLAMA2_TOKENIZER = SHARED / "tokenizers" / "llama2-32k"

# the test models are tiny: one intra-op thread is faster and makes float reductions reproducible
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def stories_path() -> str:
    return str(STORIES)


@pytest.fixture(scope="module")
def engine():
    from radixgen.runtime import Engine

    eng = Engine(str(STORIES), max_total_tokens=8192, max_running_requests=64)
    yield eng
    eng.shutdown()
