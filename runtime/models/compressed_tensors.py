"""compressed-tensors checkpoints: llmcompressor's weight-only W8A16 / W4A16 output, as vLLM and SGLang load it.

A Hugging Face directory whose config.json has ``quantization_config.quant_method == "compressed-tensors"``.
Implemented from the compressed-tensors project's format (github.com/vllm-project/compressed-tensors:
``quant_args.py``, ``quant_config.py``, ``compressors/quantized_compressors/{pack,naive}_quantized.py`` and
``quantization/lifecycle/forward.py``), without depending on the package:

- ``config_groups``: named schemes, each with ``targets`` (a module class name such as ``"Linear"``, an exact
  module name, or ``"re:<regex>"`` matched from the start of the module name) and ``weights`` (``num_bits``,
  ``type`` int, ``symmetric``, ``strategy`` tensor / channel / group with ``group_size``, ``actorder``);
  ``ignore`` lists modules left in float (same matching). ``format`` (top level, or per group) says how the
  integers are stored:
- ``pack-quantized``: ``weight_packed`` int32 ``[out, ceil(in / (32 // num_bits))]``: each int32 holds
  ``32 // num_bits`` consecutive values of a row, the first in the lowest bits, each stored unsigned as
  ``q + 2 ** (num_bits - 1)``; ``weight_shape`` = ``[out, in]``; an asymmetric channel / group zero point is
  packed the same way along dim 0 (int32 ``[ceil(out / pack), groups]``).
- ``int-quantized`` / ``naive-quantized``: ``weight`` int8 ``[out, in]``.
- Both: ``weight_scale`` ``[out, 1]`` (channel), ``[out, ceil(in / group_size)]`` (group) or ``[1]`` (tensor);
  optional ``weight_zero_point`` (same shape, signed) and ``weight_g_idx`` int ``[in]`` (activation ordering:
  column j belongs to group ``g_idx[j]``). Dequantized weight = ``(q - zero_point) * scale``.

``checkpoint_layout`` maps the scheme onto the runtime's layouts (8-bit → ``int8wo``, W8A8 → ``w8a8_int8``; 4-bit
group g → ``int4wo-g``, g in 32/64/128, else the nearest); ``CompressedTensorsWeights`` reads the float weights.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from radixgen.runtime.models.quant_config import INT4_GROUP_SIZES, QuantizationConfig

if TYPE_CHECKING:
    from radixgen.runtime.models.loader import SafetensorsWeights

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS: tuple[str, ...] = ("pack-quantized", "int-quantized", "naive-quantized")
_STRATEGIES = ("tensor", "channel", "group")
_AUX = ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "weight_g_idx")


@dataclass(frozen=True)
class WeightScheme:
    """One config group's weight quantization: ``num_bits``-bit signed integers, a scale (and zero point when
    not ``symmetric``) per tensor / output channel / ``group_size`` input columns, stored in ``format``."""

    num_bits: int
    strategy: str
    group_size: int | None
    symmetric: bool
    format: str

    @property
    def label(self) -> str:
        """``"group 128, symmetric, pack-quantized"``."""
        how = f"group {self.group_size}" if self.strategy == "group" else self.strategy
        return f"{how}, {'symmetric' if self.symmetric else 'asymmetric'}, {self.format}"


@dataclass(frozen=True)
class CompressedTensorsConfig:
    """A parsed ``quantization_config``: ``groups`` (targets, scheme) in config order and the ``ignore`` list."""

    groups: tuple[tuple[tuple[str, ...], WeightScheme], ...]
    ignore: tuple[str, ...]
    activation_bits: int | None

    def scheme_for(self, module: str) -> WeightScheme | None:
        """The scheme of a module (``model.layers.0.mlp.down_proj``), None if ignored or untargeted.

        Raises:
            ValueError: two groups with different schemes target the module.
        """
        if any(_matches(t, module) for t in self.ignore):
            return None
        found = {scheme for targets, scheme in self.groups if any(_matches(t, module) for t in targets)}
        if len(found) > 1:
            raise ValueError(f"quantization_config: module {module!r} is targeted by several different schemes")
        return found.pop() if found else None


def _matches(target: str, module: str) -> bool:
    """compressed-tensors' target matching: ``re:`` regex from the start, exact name, or the class name."""
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    cls = "Embedding" if module.endswith("embed_tokens") else "Linear"
    return target in (module, cls)


def parse_quantization_config(qc: Any, model_path: str) -> CompressedTensorsConfig:
    """Validate a config.json ``quantization_config`` of a compressed-tensors weight-only checkpoint.

    Raises:
        ValueError: another ``quant_method``, a storage format not in ``SUPPORTED_FORMATS``, non-int or dynamic
            weights, a strategy other than tensor / channel / group, sparsity, a KV-cache scheme or transforms;
            the message names model_path and the key.
    """

    def bad(what: str) -> ValueError:
        return ValueError(f"model_path {model_path!r}: quantization_config {what}")

    if not isinstance(qc, dict):
        raise bad("is not a JSON object")
    if qc.get("quant_method") != "compressed-tensors":
        raise bad(f"quant_method {qc.get('quant_method')!r} is not supported (supported: ['compressed-tensors'])")
    for key in ("sparsity_config", "kv_cache_scheme", "transform_config"):
        if qc.get(key):
            raise bad(f"has {key}, which radixgen does not support")
    top_format = qc.get("format")
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise bad("has no config_groups")
    parsed: list[tuple[tuple[str, ...], WeightScheme]] = []
    activation_bits = None
    for name, group in groups.items():
        weights = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict):
            raise bad(f"config_groups.{name} has no weights scheme")
        fmt = group.get("format") or top_format
        if fmt not in SUPPORTED_FORMATS:
            raise bad(f"format {fmt!r} is not supported (supported: {list(SUPPORTED_FORMATS)})")
        bits, group_size = weights.get("num_bits", 8), weights.get("group_size")
        strategy = weights.get("strategy") or (
            "tensor" if group_size is None else "channel" if group_size == -1 else "group"
        )
        if weights.get("type", "int") != "int" or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise bad(f"config_groups.{name}: only int weights of 1-8 bits are supported")
        if weights.get("dynamic"):
            raise bad(f"config_groups.{name}: dynamic weight quantization is not supported")
        grouped = isinstance(group_size, int) and group_size > 0
        if strategy not in _STRATEGIES or (strategy == "group" and not grouped):
            raise bad(f"config_groups.{name}: strategy {strategy!r} (group_size {group_size}) is not supported")
        if group.get("input_activations"):
            activation_bits = int(group["input_activations"].get("num_bits", 8))
        targets = tuple(group.get("targets") or ())
        scheme = WeightScheme(
            bits, strategy, group_size if strategy == "group" else None, bool(weights.get("symmetric", True)), fmt
        )
        parsed.append((targets, scheme))
    return CompressedTensorsConfig(tuple(parsed), tuple(qc.get("ignore") or ()), activation_bits)


def checkpoint_layout(qc: Any, model_path: str) -> tuple[QuantizationConfig | None, str]:
    """``(layout, name)``: the weight-only layout a compressed-tensors checkpoint maps onto and its name for logs.

    8-bit weights → ``int8wo`` (per channel; re-quantized when the checkpoint's scales are per group or tensor);
    4-bit (or fewer) → ``int4wo`` with the checkpoint's group size when it is one of 32 / 64 / 128, else the
    nearest one (channel / tensor / larger groups → 128, smaller → 32); 5-7 bits → ``int8wo``; W8A8 (8-bit
    weights and activations) → ``w8a8_int8``, whose activations are quantized per token at run time (a
    checkpoint's static activation scales are not read; SGLang's ``w8a8_int8`` does the same for dynamic
    per-token schemes). Other quantized activations are not applied: a warning. Groups with different schemes →
    None (dequantized floats).

    Raises:
        ValueError: as ``parse_quantization_config``.
    """
    config = parse_quantization_config(qc, model_path)
    schemes = {scheme for _, scheme in config.groups}
    if len(schemes) > 1:
        return None, "compressed-tensors (mixed schemes: " + "; ".join(sorted(s.label for s in schemes)) + ")"
    scheme = schemes.pop()
    acts = config.activation_bits or 16
    name = f"compressed-tensors W{scheme.num_bits}A{acts} ({scheme.label})"
    if scheme.num_bits == 8 and acts == 8:
        return QuantizationConfig("w8a8_int8"), name
    if config.activation_bits is not None:
        logger.warning(
            "model_path %s: activations are quantized to %d bits in this checkpoint; radixgen runs them in the "
            "model dtype (weight-only)", model_path, acts
        )
    if scheme.num_bits > 4:
        return QuantizationConfig("int8wo"), name
    group = scheme.group_size if scheme.strategy == "group" else max(INT4_GROUP_SIZES)
    group = min(INT4_GROUP_SIZES, key=lambda g: (abs(g - (group or 0)), g))
    return QuantizationConfig("int4wo", group_size=group), name


def unpack_int32(packed: torch.Tensor, num_bits: int, shape: tuple[int, int], packed_dim: int = 1) -> torch.Tensor:
    """Unpack compressed-tensors' ``pack_to_int32`` layout into signed int8 ``shape`` (dropping the padding).

    Args:
        packed: int32 ``[rows, ceil(cols / (32 // num_bits))]`` for ``packed_dim=1`` (the transpose for 0).
        num_bits: bits per value (1-8); values are stored as ``q + 2 ** (num_bits - 1)``, first in the low bits.
        shape: the unpacked ``(rows, cols)``.
        packed_dim: the dimension the values were packed along.

    Raises:
        ValueError: a dtype other than int32, or a packed shape that does not hold ``shape``.
    """
    if packed.dtype != torch.int32:
        raise ValueError(f"packed tensor has dtype {packed.dtype}, expected torch.int32")
    if packed_dim == 0:
        return unpack_int32(packed.t(), num_bits, (shape[1], shape[0])).t().contiguous()
    per_word = 32 // num_bits
    rows, cols = shape
    if packed.shape[0] != rows or packed.shape[1] * per_word < cols or (packed.shape[1] - 1) * per_word >= cols:
        raise ValueError(f"packed shape {list(packed.shape)} does not hold {num_bits}-bit values of {[rows, cols]}")
    shifts = torch.arange(per_word, dtype=torch.int32) * num_bits  # [per_word]
    values = (packed.unsqueeze(-1) >> shifts) & ((1 << num_bits) - 1)  # [rows, words, per_word]
    return (values.reshape(rows, -1)[:, :cols] - (1 << (num_bits - 1))).to(torch.int8)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    scheme: WeightScheme,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` as float32 ``[out, in]``, scales broadcast per the scheme's strategy.

    Args:
        q: int8 ``[out, in]``.
        scale: ``[out, 1]`` (channel), ``[out, groups]`` (group) or one element (tensor); any float dtype.
        zero_point: as ``scale`` (signed integers) or None (symmetric).
        g_idx: group of each input column ``[in]`` (activation ordering); None or any -1 → column order.

    Raises:
        ValueError: a scale or zero-point shape that does not fit ``q`` and the strategy.
    """
    out, cols = q.shape
    s = scale.float()
    z = None if zero_point is None else zero_point.float()
    if scheme.strategy == "group":
        assert scheme.group_size is not None
        if g_idx is not None and bool((g_idx >= 0).all()):
            groups = g_idx.long()
        else:
            groups = torch.arange(cols) // scheme.group_size
        if s.dim() != 2 or s.shape[0] != out or s.shape[1] <= int(groups.max()):
            raise ValueError(f"weight_scale shape {list(s.shape)} does not fit groups of {list(q.shape)}")
        s = s[:, groups]
        z = None if z is None else z.reshape(out, -1)[:, groups]
    elif scheme.strategy == "channel":
        if s.numel() != out:
            raise ValueError(f"weight_scale shape {list(s.shape)} is not one scale per output channel of {out}")
        s = s.reshape(out, 1)
        z = None if z is None else z.reshape(out, 1)
    elif s.numel() != 1:
        raise ValueError(f"weight_scale shape {list(s.shape)} is not one per-tensor scale")
    else:
        s, z = s.reshape(1, 1), None if z is None else z.reshape(1, 1)
    values = q.float() if z is None else q.float() - z
    return values * s


class CompressedTensorsWeights:
    """A compressed-tensors checkpoint's tensors as float tensors under Hugging Face names (a
    ``loader.CheckpointReader`` over the directory's safetensors files).

    Quantized modules are those holding a ``weight_scale``; each becomes ``<module>.weight`` (dequantized,
    float32), every other tensor passes through unchanged.

    Args:
        raw: the directory's safetensors tensors (``loader.SafetensorsWeights``).
        model_path: the model directory (its config.json holds the quantization_config).

    Raises:
        ValueError: as ``parse_quantization_config``; a module with scales that no scheme targets.
    """

    def __init__(self, raw: SafetensorsWeights, model_path: str) -> None:
        self.raw = raw
        self.model_path = model_path
        qc = json.loads((Path(model_path) / "config.json").read_text()).get("quantization_config")
        self.config = parse_quantization_config(qc, model_path)
        raw_shapes = raw.shapes(())
        self._modules: dict[str, WeightScheme] = {}
        for name in raw_shapes:
            module, _, leaf = name.rpartition(".")
            if leaf == "weight_scale":
                scheme = self.config.scheme_for(module)
                if scheme is None:
                    raise ValueError(
                        f"model_path {model_path!r}: {module!r} has quantization scales but no config group "
                        "targets it (or it is ignored)"
                    )
                self._modules[module] = scheme

    def _error(self, module: str, what: str) -> ValueError:
        return ValueError(f"model_path {self.model_path!r}: quantized module {module!r}: {what}")

    def shapes(self, expected: Collection[str]) -> dict[str, tuple[int, ...]]:
        """``{name: shape}``: each quantized module's ``<module>.weight`` with its unpacked shape (read from
        ``weight_shape`` or the int8 ``weight``), and every other tensor as stored."""
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in self.raw.shapes(()).items():
            module, _, leaf = name.rpartition(".")
            if module not in self._modules:
                shapes[name] = shape
            elif leaf == "weight_shape":
                shapes[f"{module}.weight"] = tuple(int(d) for d in self.raw.get(name).tolist())
            elif leaf == "weight":
                shapes[name] = shape
            elif leaf not in _AUX:
                shapes[name] = shape  # e.g. a bias
        return shapes

    def tensors(self, names: Collection[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for each of ``names``: quantized modules dequantized to float32.

        Raises:
            ValueError: a quantized module lacks a tensor its format needs or holds one of a bad shape.
        """
        for name in names:
            module, _, leaf = name.rpartition(".")
            scheme = self._modules.get(module)
            if scheme is None or leaf != "weight":
                yield name, self.raw.get(name)
                continue
            try:
                yield name, self._dequantized(module, scheme)
            except (ValueError, RuntimeError) as e:
                raise ValueError(f"model_path {self.model_path!r}: quantized module {module!r}: {e}") from e

    def _get(self, module: str, leaf: str, scheme: WeightScheme) -> torch.Tensor:
        key = f"{module}.{leaf}"
        if key not in self.raw.shapes(()):
            raise ValueError(f"{leaf} is missing ({scheme.format})")
        return self.raw.get(key)

    def _dequantized(self, module: str, scheme: WeightScheme) -> torch.Tensor:
        """The float32 ``[out, in]`` weight of one quantized module."""
        present = self.raw.shapes(())
        if scheme.format == "pack-quantized":
            rows, cols = (int(d) for d in self._get(module, "weight_shape", scheme).tolist())
            q = unpack_int32(self._get(module, "weight_packed", scheme), scheme.num_bits, (rows, cols))
        else:
            q = self._get(module, "weight", scheme)
            if q.dtype != torch.int8:
                raise ValueError(f"weight has dtype {q.dtype}, expected torch.int8 ({scheme.format})")
        scale = self._get(module, "weight_scale", scheme)
        zero = None
        if not scheme.symmetric or f"{module}.weight_zero_point" in present:
            zero = self._get(module, "weight_zero_point", scheme)
            if zero.dtype == torch.int32 and scheme.strategy in ("channel", "group"):  # packed along dim 0
                zero = unpack_int32(zero, scheme.num_bits, (q.shape[0], scale.reshape(q.shape[0], -1).shape[1]), 0)
        g_idx = self.raw.get(f"{module}.weight_g_idx") if f"{module}.weight_g_idx" in present else None
        return dequantize(q, scale, zero, scheme, g_idx)
