"""radixgen.kernels: Triton kernels for the GPU path, each with a plain-torch reference.

Modules:
    extend_attention: ``extend_attention_fwd`` (prefill/extend attention over the token-indexed KV pool).
    decode_attention: ``decode_attention_fwd`` (flash-decoding: split-KV partial softmax + reduce).
    bitmask: ``apply_token_bitmask_inplace`` (xgrammar-layout token bitmask applied to logits).
    lora: ``sgmv_shrink`` / ``sgmv_expand_add`` (multi-LoRA segmented matmuls: each request's rows, its adapter).
    reference: the plain-torch reference of each kernel (the ground truth of tests/test_kernels.py, test_lora_*).

Interpreter mode. Triton chooses between its CPU interpreter and compiled (CUDA) execution when a function is
decorated with ``@triton.jit`` — including the ``@jit`` helpers of ``triton.language`` itself (``tl.zeros``,
``tl.max``, ``tl.sum``, ...), which are decorated when ``triton`` is first imported — by reading the
``TRITON_INTERPRET`` environment variable at that moment. This package decides before it imports triton:

* ``TRITON_INTERPRET`` already set (to anything) → respected as is;
* otherwise, no CUDA device (``torch.cuda.is_available()`` is False) → ``TRITON_INTERPRET=1`` is set in
  ``os.environ``, so the kernels run (slowly) on CPU tensors in the interpreter;
* otherwise (CUDA present) → compiled mode.

Setting the variable is process-wide (child processes inherit it; Triton kernels of other libraries decorated
afterwards are interpreted too); on a machine without CUDA that is the only mode that works anyway. If some
other code imported ``triton`` before this package on a machine without CUDA and without the variable,
``triton.language`` is already in compiled mode and the interpreter cannot run; ``INTERPRET`` is then False
and kernel calls on CPU tensors raise ValueError saying to set ``TRITON_INTERPRET=1`` before Python starts.

``INTERPRET`` records the mode the kernels of this package were decorated in.
"""

from __future__ import annotations

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402  (after TRITON_INTERPRET is settled)
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

#: True when this package's kernels run in the Triton interpreter (CPU tensors), False when compiled (CUDA).
#: If triton was first imported in compiled mode (the variable was set too late), triton.language's own helpers
#: are compiled-mode and the interpreter cannot run them: INTERPRET is then False and a kernel call with CPU
#: tensors raises ValueError saying to set TRITON_INTERPRET=1 before Python starts. Importing never raises:
#: transformers imports any top-level module named ``kernels`` (this folder, when the repository root is on
#: sys.path) while probing for Hugging Face's kernels package.
INTERPRET: bool = bool(triton.knobs.runtime.interpret) and isinstance(tl.zeros, InterpretedFunction)

from radixgen.kernels.bitmask import apply_token_bitmask_inplace  # noqa: E402
from radixgen.kernels.decode_attention import decode_attention_fwd  # noqa: E402
from radixgen.kernels.extend_attention import extend_attention_fwd  # noqa: E402

__all__ = ["INTERPRET", "apply_token_bitmask_inplace", "decode_attention_fwd", "extend_attention_fwd"]
