"""Shared test fixtures: paths into ../shared and a module-scoped stories260K Engine."""

from __future__ import annotations

import os
import sys

import torch

# Triton picks interpreter vs compiled mode when it is first imported (transformers may import it early), so
# without a CUDA device the interpreter is selected here, before anything else loads triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from device_env import ENGINE_KW, device_error  # noqa: E402
from shared_paths import REPO, STORIES  # noqa: E402

# `python -m pytest` puts the working directory first on sys.path; from the repository root that would let the
# top-level folders (kernels/, grammar/, ...) shadow installed packages of the same name (Hugging Face `kernels`,
# which transformers imports). Code under test imports the installed radixgen only.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != str(REPO)]

# the test models are tiny: one intra-op thread is faster and makes float reductions reproducible
torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    error = device_error()
    if error is not None:
        raise pytest.UsageError(error)


@pytest.fixture(scope="session")
def stories_path() -> str:
    return str(STORIES)


@pytest.fixture(scope="module")
def engine():
    from radixgen.runtime import Engine

    eng = Engine(str(STORIES), max_total_tokens=8192, max_running_requests=64, **ENGINE_KW)
    yield eng
    eng.shutdown()
