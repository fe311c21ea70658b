"""GGUF checkpoints (llama.cpp's single-file format): the model config from the file's metadata, its weights as
float tensors under Hugging Face names, and the weight-only layout its quantized tensors map onto.

- Reading: gguf's memory-mapped ``GGUFReader`` (every ggml type), opened once per file and process
  (``_open``: its metadata parse costs ~2 s for a 32k vocabulary on this project's CPU) and shared by the
  config and the weights.
- Config: transformers' table of llama.cpp hyper-parameter keys (``integrations.ggml.GGUF_CONFIG_MAPPING``, what
  its ``load_gguf_checkpoint`` applies) turns the metadata into a config.json-style dict; added here what that
  leaves out for the Llama family: ``head_dim`` from ``<arch>.attention.key_length`` (Qwen3), attention / MLP
  biases from the tensors present, the vocabulary size from ``token_embd``'s rows, tied embeddings when there
  is no ``output.weight``, the BOS / EOS ids and the end-of-turn ids (``eot`` / ``eom``) as extra EOS ids, and
  linear RoPE scaling. What radixgen cannot run exactly is refused: other architectures, YaRN scaling, and
  Llama 3's per-frequency factors (a ``rope_freqs`` tensor).
- Weights: ``gguf.dequantize`` (gguf's numpy dequantizers: Q8_0 / Q4_0 / Q4_K / Q6_K / Q5_* / IQ* ... and F16 /
  BF16) one tensor at a time, so peak memory is the model plus one tensor. Names come from gguf's
  ``TensorNameMap`` (the table llama.cpp's converter names tensors with), inverted over the model's Hugging Face
  names. llama.cpp's converter permutes the rows of q/k (weights and biases) of ``llama`` models for its
  interleaved RoPE; transformers' ``LlamaTensorProcessor`` (its GGUF loader's) undoes it.
- Layout (``gguf_layout``): the projections' dominant ggml type decides the ``QuantizationConfig`` the runner
  re-quantizes onto — Q8_0 and the 5-6-bit types (Q5_0/1, Q5_K, Q6_K) → ``int8wo`` (per channel), Q4_0 / Q4_1 /
  Q4_K (affine 4-bit grids in blocks of 32) → ``int4wo-32``; F32 / F16 / BF16 and the types with no matching
  grid (Q2_K, Q3_K, the IQ codebooks, ...) → None (dequantized floats).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, cast

import gguf
import numpy as np
import torch

from radixgen.runtime.models.checkpoint_path import find_gguf_file
from radixgen.runtime.models.config import ModelConfig
from radixgen.runtime.models.quant_config import QuantizationConfig

logger = logging.getLogger(__name__)

# GGUF general.architecture -> gguf's architecture id (its tensor-name table)
GGUF_ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
}
_FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_INT8_TYPES = ("Q8_0", "Q8_1", "Q8_K", "Q6_K", "Q5_0", "Q5_1", "Q5_K")
_INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")
_PROJECTION = re.compile(r"blk\.\d+\.(attn_(q|k|v|output)|ffn_(gate|up|down))\.weight")


def _open(model_path: str, gguf_file: Path) -> gguf.GGUFReader:
    """gguf's reader over the file (memory-mapped; parses the metadata and tensor table), shared per process.

    Raises:
        ValueError: not a readable GGUF file (bad magic, truncated, unsupported version), naming model_path.
    """
    try:
        stat = gguf_file.stat()
        return _cached_reader(str(gguf_file.resolve()), stat.st_mtime_ns, stat.st_size)
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, struct.error, IndexError, OSError...
        raise ValueError(f"model_path {model_path!r}: {gguf_file.name} is not a readable GGUF file: {e}") from e


@functools.lru_cache(maxsize=1)
def _cached_reader(path: str, mtime_ns: int, size: int) -> gguf.GGUFReader:
    """One reader per file version (the config and the weights of a load share it)."""
    return gguf.GGUFReader(path)


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    """A metadata value (int / float / str / list), or None when absent."""
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _architecture(reader: gguf.GGUFReader, model_path: str) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"model_path {model_path!r}: GGUF architecture {arch!r} is not supported "
            f"(supported: {sorted(GGUF_ARCHITECTURES)})"
        )
    return str(arch)


def gguf_model_config(model_path: str, gguf_file: Path) -> ModelConfig:
    """The ``ModelConfig`` of a GGUF file, with ``checkpoint_format="gguf"`` and its layout (``gguf_layout``).

    Args:
        model_path: what the user passed (the file or its directory); recorded and named in errors.
        gguf_file: the file (``config.find_gguf_file(model_path)``).

    Raises:
        ValueError: unreadable file, unsupported architecture or RoPE scaling, or a config that fails
            ``ModelConfig`` validation; the message names model_path.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    reader = _open(model_path, gguf_file)
    arch = _architecture(reader, model_path)
    raw: dict[str, Any] = {"model_type": arch}
    keys = cast(dict[str, str | None], GGUF_CONFIG_MAPPING[arch])
    for key, hf_key in keys.items():
        value = _field(reader, f"{arch}.{key}")
        if hf_key is not None and value is not None:
            raw[hf_key] = value
    for key in ("bos", "eos"):
        raw[f"{key}_token_id"] = _field(reader, f"tokenizer.ggml.{key}_token_id")
    tensors = {t.name: t for t in reader.tensors}
    raw["tie_word_embeddings"] = "output.weight" not in tensors
    if "rope_freqs.weight" in tensors:
        raise ValueError(
            f"model_path {model_path!r}: the GGUF file has per-frequency RoPE factors (rope_freqs.weight, "
            "Llama 3.1-style scaling), which radixgen's RoPE does not take; load the Hugging Face checkpoint"
        )
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling == "linear":
        raw["rope_scaling"] = {"rope_type": "linear", "factor": float(_field(reader, f"{arch}.rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise ValueError(f"model_path {model_path!r}: GGUF rope scaling {scaling!r} is not supported (none, linear)")
    key_length = _field(reader, f"{arch}.attention.key_length")
    if key_length is not None:
        raw["head_dim"] = int(key_length)
    raw["attention_bias"] = any(name.endswith(".attn_q.bias") for name in tensors)
    raw["mlp_bias"] = any(name.endswith(".ffn_gate.bias") for name in tensors)
    if "token_embd.weight" in tensors:
        raw["vocab_size"] = int(tensors["token_embd.weight"].shape[-1])  # ggml order: [hidden, vocab]
    end_of_turn = [_field(reader, f"tokenizer.ggml.{kind}_token_id") for kind in ("eot", "eom")]
    quant, weight_format, dominant, counts = gguf_layout(reader)
    raw["torch_dtype"] = _FLOAT_TYPES.get(dominant)
    logger.info(
        "model_path %s: %s (projection weights: %s)",
        model_path,
        weight_format,
        ", ".join(f"{name} x {n}" for name, n in counts.most_common()),
    )
    config = ModelConfig.from_hf_config(raw, model_path, {"eos_token_id": [t for t in end_of_turn if t is not None]})
    return dataclasses.replace(
        config, checkpoint_format="gguf", checkpoint_quantization=quant, checkpoint_weight_format=weight_format
    )


def gguf_layout(reader: gguf.GGUFReader) -> tuple[QuantizationConfig | None, str, str, Counter[str]]:
    """``(layout, name, dominant, counts)``: the weight-only layout the projections map onto (None: dequantized
    floats), the file's format name for logs (``"GGUF Q4_K_M"``: ``general.file_type``, else the dominant type),
    the dominant ggml type of the projection weights (the one holding most of their elements) and the number of
    projection weights per ggml type."""
    elements: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for t in reader.tensors:
        if _PROJECTION.fullmatch(t.name):
            elements[t.tensor_type.name] += int(t.n_elements)
            counts[t.tensor_type.name] += 1
    dominant = elements.most_common(1)[0][0] if elements else "F32"
    file_type = _field(reader, "general.file_type")
    try:
        name = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:  # absent or a file type this gguf version does not know
        name = dominant
    quant = None
    if dominant in _INT8_TYPES:
        quant = QuantizationConfig("int8wo")
    elif dominant in _INT4_TYPES:
        quant = QuantizationConfig("int4wo", group_size=32)
    return quant, f"GGUF {name}", dominant, counts


class GGUFWeights:
    """A GGUF file's tensors as float32 tensors under Hugging Face names (a ``loader.CheckpointReader``).

    Args:
        config: a GGUF model's config (``checkpoint_format == "gguf"``).

    Raises:
        ValueError: the file is unreadable or not of a supported architecture (naming model_path).
    """

    def __init__(self, config: ModelConfig) -> None:
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        gguf_file = find_gguf_file(config.model_path)
        if gguf_file is None:
            raise ValueError(f"model_path {config.model_path!r} holds no .gguf file")
        self.model_path = config.model_path
        self._reader = _open(config.model_path, gguf_file)
        arch = _architecture(self._reader, config.model_path)
        self._name_map = gguf.get_tensor_name_map(GGUF_ARCHITECTURES[arch], config.num_hidden_layers)
        heads = {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads}
        self._processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=heads)
        self._to_hf: dict[str, str] = {}

    def shapes(self, expected: Collection[str]) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of every tensor in the file, read from its tensor table: the Hugging Face name for
        tensors that map onto one of ``expected``, the GGUF name for the rest (reported as unknown)."""
        for hf_name in expected:
            base, _, suffix = hf_name.rpartition(".")
            gguf_name = self._name_map.get_name(base)
            if gguf_name is not None:
                self._to_hf[f"{gguf_name}.{suffix}"] = hf_name
        return {
            self._to_hf.get(t.name, t.name): tuple(int(d) for d in reversed(t.shape)) for t in self._reader.tensors
        }

    def tensors(self, names: Collection[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """``(hf_name, float32 tensor)`` for each of ``names`` (after ``shapes``), in file order: dequantized
        (``gguf.dequantize``) and, for llama, with llama.cpp's q/k row permutation undone."""
        for t in self._reader.tensors:
            hf_name = self._to_hf.get(t.name)
            if hf_name is None or hf_name not in names:
                continue
            shape = tuple(int(d) for d in reversed(t.shape))
            try:
                values = gguf.dequantize(t.data, t.tensor_type)
                values = np.array(self._processor.process(weights=values, name=t.name).weights, dtype=np.float32)
                values = values.reshape(shape)
            except (NotImplementedError, ValueError) as e:  # an unknown type, or data cut short
                raise ValueError(
                    f"model_path {self.model_path!r}: GGUF tensor {t.name!r} ({t.tensor_type.name}) cannot be "
                    f"dequantized: {e}"
                ) from e
            yield hf_name, torch.from_numpy(values)
        _cached_reader.cache_clear()  # the weights are copied: release the parsed metadata (large for big vocabularies)
