"""Attention backends: one interface (base.AttentionBackend), a portable torch backend and a Triton one."""

from radixgen.runtime.attention.base import AttentionBackend, AttentionLayer
from radixgen.runtime.attention.torch_backend import TorchAttentionBackend

__all__ = ["AttentionBackend", "AttentionLayer", "TorchAttentionBackend", "create_attention_backend"]


def create_attention_backend(
    name: str, dense_decode_kv_bytes: int = 0, shared_prefix: bool = True
) -> AttentionBackend:
    """Build the backend named ``name`` ("torch" or "triton"); ``dense_decode_kv_bytes`` is the torch backend's
    dense decode KV budget (see ``TorchAttentionBackend``; 0 disables it), ``shared_prefix`` its cascade decode
    over prefixes shared by several requests.

    Raises:
        ValueError: unknown name.
    """
    if name == "torch":
        return TorchAttentionBackend(dense_decode_kv_bytes, shared_prefix)
    if name == "triton":
        from radixgen.runtime.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"attention_backend must be 'torch' or 'triton', got {name!r}")
