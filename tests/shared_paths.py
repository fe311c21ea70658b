"""Paths the tests load data from: the repository root and ``../shared`` (models, tokenizers, datasets).

Test modules import this as ``shared_paths`` (pytest puts ``tests/`` on ``sys.path`` through the ``pythonpath``
ini option; the repository root never is, so ``kernels`` and friends resolve to installed packages).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STORIES = SHARED / "models" / "stories260K"
BENCH_40M = SHARED / "models" / "bench-llama-40m"
LLAMA2_TOKENIZER = SHARED / "tokenizers" / "llama2-32k"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` by path (benchmarks are scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module
