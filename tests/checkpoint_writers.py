"""Test helper: write the checkpoints users bring, from a float model, the way their producers do.

- ``write_gguf``: a GGUF file as llama.cpp's ``convert_hf_to_gguf.py`` writes one (gguf's ``GGUFWriter``;
  tensor names from gguf's ``TensorNameMap``; q/k rows permuted for ``llama`` with the converter's ``permute``;
  1-D tensors F32; a tensor whose rows do not split into the type's blocks falls back to F16), with the
  sentencepiece vocabulary written as the converter's ``_set_vocab_sentencepiece`` does.
- ``quantize_q4_k`` / ``quantize_q6_k``: simple (min/max, not llama.cpp's search) K-quant quantizers that write
  the ``block_q4_K`` / ``block_q6_K`` layouts of ggml-common.h (gguf only ships dequantizers for them).
- ``ct_quantize`` / ``ct_pack_int32``: compressed-tensors' min-max weight quantization and ``pack_to_int32``,
  written from the compressed-tensors source (``quantization/utils/helpers.py`` calculate_qparams,
  ``lifecycle/forward.py`` quantize, ``compressors/quantized_compressors/pack_quantized.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import sentencepiece as spm
import torch

from radixgen.runtime.models.config import ModelConfig

QK_K = 256


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """``[rows, cols]`` float (cols % 256 == 0) → uint8 ``[rows, cols / 256 * 144]`` Q4_K blocks: per 32-value
    sub-block an unsigned 4-bit grid ``d * sc * q - dmin * m`` (6-bit sc, m), d / dmin float16 per 256."""
    x = w.astype(np.float32).reshape(-1, 8, 32)  # [blocks, sub, 32]
    lo, hi = np.minimum(x.min(-1), 0), np.maximum(x.max(-1), 0)
    scale, minv = (hi - lo) / 15, -lo  # [blocks, 8]
    d = _f16(scale.max(-1) / 63)
    dmin = _f16(minv.max(-1) / 63)
    df, dminf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 63).astype(np.uint8)
    m = np.clip(np.round(np.divide(minv, dminf, out=np.zeros_like(minv), where=dminf > 0)), 0, 63).astype(np.uint8)
    step, offset = (df * sc)[..., None], (dminf * m)[..., None]
    q = np.clip(np.round(np.divide(x + offset, step, out=np.zeros_like(x), where=step > 0)), 0, 15).astype(np.uint8)
    scales = np.zeros((x.shape[0], 12), np.uint8)
    scales[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qs], 1)
    return blocks.reshape(w.shape[0], -1)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """``[rows, cols]`` float (cols % 256 == 0) → uint8 ``[rows, cols / 256 * 210]`` Q6_K blocks: signed 6-bit
    values (stored + 32 as 4 low bits in ``ql`` and 2 high bits in ``qh``), an int8 scale per 16, d float16."""
    x = w.astype(np.float32).reshape(-1, 16, 16)  # [blocks, sub, 16]
    s = np.abs(x).max(-1) / 31  # [blocks, 16]
    d = _f16(s.max(-1) / 127)
    df = d.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(s, df, out=np.zeros_like(s), where=df > 0)), -128, 127).astype(np.int8)
    step = (df * sc)[..., None]
    q = np.clip(np.round(np.divide(x, step, out=np.zeros_like(x), where=step > 0)), -32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)  # [blocks, half, group, l]
    ql = ((q[:, :, 0:2] & 15) | ((q[:, :, 2:4] & 15) << 4)).reshape(-1, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6))
    blocks = np.concatenate([ql, qh.reshape(-1, 64), sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], 1)
    return blocks.reshape(w.shape[0], -1)


_K_QUANTIZERS = {gguf.GGMLQuantizationType.Q4_K: quantize_q4_k, gguf.GGMLQuantizationType.Q6_K: quantize_q6_k}


def encode_gguf(w: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Float ``w`` in ``qtype``: float arrays for F32 / F16, block bytes otherwise (gguf's quantizers for Q8_0 /
    Q4_0 and the others it has, the K-quant ones above)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return w.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return w.astype(np.float16)
    if qtype in _K_QUANTIZERS:
        return _K_QUANTIZERS[qtype](w)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's ``LlamaModel.permute`` (q: n_head_kv = n_head; k: the KV heads)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_sentencepiece_vocab(writer: gguf.GGUFWriter, tokenizer_model: Path, chat_template: str | None) -> None:
    """The tokenizer metadata llama.cpp writes for a sentencepiece (``llama``) tokenizer."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode())
        scores.append(sp.get_score(i))
        kind = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            kind = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            kind = gguf.TokenType.BYTE
        types.append(kind)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def write_gguf(
    path: Path,
    config: ModelConfig,
    tensors: dict[str, np.ndarray],
    arch: str,
    qtype_of: Callable[[str, np.ndarray], gguf.GGMLQuantizationType],
    file_type: gguf.LlamaFileType,
    tokenizer_model: Path | None = None,
    chat_template: str | None = None,
) -> dict[str, np.ndarray]:
    """Write ``tensors`` (Hugging Face names → float32) as a GGUF file of architecture ``arch``.

    ``qtype_of(hf_name, array)`` picks each 2-D tensor's type (1-D tensors are F32); a type whose block does not
    divide the rows falls back to F16, as llama.cpp's converter does. Returns the values the file holds, as
    float32 under Hugging Face names (dequantized by gguf, permutation not applied): what a loader must give.
    """
    model_arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}[arch]
    names = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(path.stem)
    writer.add_context_length(config.context_len)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if config.head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_file_type(file_type)
    if tokenizer_model is not None:
        add_sentencepiece_vocab(writer, tokenizer_model, chat_template)
    else:
        writer.add_tokenizer_model("llama")
        writer.add_token_list([f"<t{i}>".encode() for i in range(config.vocab_size)])
        writer.add_eos_token_id(2)
    held: dict[str, np.ndarray] = {}
    for hf_name, value in tensors.items():
        base, _, suffix = hf_name.rpartition(".")
        stored = value.astype(np.float32)
        if arch == "llama" and base.endswith(("q_proj", "k_proj")):
            kv = config.num_attention_heads if base.endswith("q_proj") else config.num_key_value_heads
            stored = llama_cpp_permute(stored, config.num_attention_heads, kv)
        qtype = gguf.GGMLQuantizationType.F32 if stored.ndim == 1 else qtype_of(hf_name, stored)
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if stored.shape[-1] % block:
            qtype = gguf.GGMLQuantizationType.F16
        data = encode_gguf(stored, qtype)
        raw_dtype = None if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else qtype
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", data, raw_dtype=raw_dtype)
        unpermuted = encode_gguf(value.astype(np.float32), qtype)  # the same rows, in Hugging Face order
        held[hf_name] = gguf.dequantize(unpermuted, qtype).reshape(value.shape).astype(np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def ct_quantize(
    w: torch.Tensor, num_bits: int, group_size: int | None, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """compressed-tensors min-max quantization of ``[out, in]``: ``(q int8, scale, zero_point or None)``;
    ``group_size`` None = one scale per output channel. Ranges include 0; symmetric scale =
    ``max|w| / ((2^bits - 1) / 2)``, asymmetric scale = ``(max - min) / (2^bits - 1)`` and zero point
    ``q_min - round(min / scale)``; ``q = clamp(round(w / scale + zp), q_min, q_max)``."""
    q_min, q_max = -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1
    out, cols = w.shape
    g = cols if group_size is None else group_size
    x = w.float().reshape(out, cols // g, g)
    lo, hi = x.amin(-1).clamp(max=0), x.amax(-1).clamp(min=0)  # [out, groups]
    if symmetric:
        scale, zp = torch.maximum(lo.abs(), hi) / ((q_max - q_min) / 2), torch.zeros_like(lo)
    else:
        scale = (hi - lo) / (q_max - q_min)
        zp = (q_min - torch.round(lo / scale)).clamp(q_min, q_max)
    q = torch.clamp(torch.round(x / scale[..., None] + zp[..., None]), q_min, q_max)
    return q.reshape(out, cols).to(torch.int8), scale, None if symmetric else zp.to(torch.int8)


def ct_pack_int32(values: torch.Tensor, num_bits: int, packed_dim: int = 1) -> torch.Tensor:
    """compressed-tensors ``pack_to_int32``: signed ``[rows, cols]`` int8 → int32, ``32 // num_bits`` values per
    word along ``packed_dim``, each stored as ``q + 2^(bits-1)``, first value in the lowest bits, zero-padded."""
    v = (values.numpy().astype(np.int32) + (1 << (num_bits - 1))).astype(np.uint32)
    if packed_dim == 0:
        v = v.T
    per_word = 32 // num_bits
    rows, cols = v.shape
    v = np.pad(v, ((0, 0), (0, -cols % per_word))).reshape(rows, -1, per_word)
    words = (v << (np.arange(per_word, dtype=np.uint32) * num_bits)).sum(-1, dtype=np.uint32)
    packed = words.view(np.int32)
    return torch.from_numpy(np.ascontiguousarray(packed.T if packed_dim == 0 else packed))
