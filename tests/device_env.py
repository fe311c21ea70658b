"""The device the device-aware tests run on: ``RADIXGEN_TEST_DEVICE`` ("cpu" unless set; ``cuda`` or ``cuda:N``
runs the golden, batching-invariance, prefix-reuse and bfloat16-numerics tests on a GPU, as
``benchmarks/gpu_check.sh`` does). ``conftest.py`` refuses a CUDA device that torch cannot see.
"""

from __future__ import annotations

import os

TEST_DEVICE = os.environ.get("RADIXGEN_TEST_DEVICE", "cpu")
# Engines of the device-aware tests: float32 on every device (the golden text is a float32 greedy run, and CUDA's
# default dtype would be bfloat16; on CPU float32 is the default anyway)
ENGINE_KW = {"device": TEST_DEVICE, "dtype": "float32"}


def device_error() -> str | None:
    """Why ``TEST_DEVICE`` cannot be used (an unknown kind, or CUDA that torch does not see), or None."""
    import torch

    kind = TEST_DEVICE.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        return f"RADIXGEN_TEST_DEVICE must be cpu, cuda or cuda:N, got {TEST_DEVICE!r}"
    if kind == "cuda" and not torch.cuda.is_available():
        return f"RADIXGEN_TEST_DEVICE={TEST_DEVICE} but torch.cuda.is_available() is False"
    return None
