"""Model families implemented on radixgen's KV pool (Llama, Mistral, Qwen2, Qwen3).

``ModelConfig`` (and the rest of ``config``) import without torch; the torch-side names (``LlamaForCausalLM``,
``load_model``, ...) are imported lazily on first access so light processes can read configs cheaply.
"""

from __future__ import annotations

from typing import Any

from radixgen.runtime.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "LOAD_FORMATS",
    "LlamaForCausalLM",
    "ModelConfig",
    "RopeScaling",
    "RotaryEmbedding",
    "get_model_class",
    "load_model",
]

_LAZY = {
    "LlamaForCausalLM": "radixgen.runtime.models.llama",
    "load_model": "radixgen.runtime.models.loader",
    "LOAD_FORMATS": "radixgen.runtime.models.loader",
    "RotaryEmbedding": "radixgen.runtime.models.rope",
}


def get_model_class(config: ModelConfig) -> type:
    """The nn.Module class implementing ``config.architecture`` (one class serves the whole Llama family)."""
    from radixgen.runtime.models.llama import LlamaForCausalLM

    return LlamaForCausalLM


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
