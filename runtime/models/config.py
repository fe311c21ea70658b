"""Model configuration read from a Hugging Face model directory (config.json + generation_config.json) or a
GGUF file.

This module imports no torch, so light processes (tokenizer manager, server) can read a plain Hugging Face
model's limits and special tokens cheaply; a GGUF file or a compressed-tensors ``quantization_config`` imports
its loader (``gguf_loader`` / ``compressed_tensors``, which use torch). Both config.json layouts are understood:
the transformers < 5 one (top-level ``rope_theta`` and ``rope_scaling``) and the transformers >= 5 one
(``rope_parameters`` holding ``rope_theta`` and ``rope_type``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radixgen.runtime.models.checkpoint_path import find_gguf_file
from radixgen.runtime.models.quant_config import QuantizationConfig

SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
_MODEL_TYPE_TO_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_MODEL_TYPE_TO_ARCH_INV = {arch: model_type for model_type, arch in _MODEL_TYPE_TO_ARCH.items()}
SUPPORTED_ROPE_SCALING: tuple[str, ...] = ("linear", "llama3")
# how the weights are stored: a Hugging Face directory of float safetensors, one GGUF file (llama.cpp), or a
# Hugging Face directory of compressed-tensors safetensors (llmcompressor's W8A16 / W4A16)
CHECKPOINT_FORMATS: tuple[str, ...] = ("safetensors", "gguf", "compressed-tensors")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, as in ``transformers.modeling_rope_utils``.

    ``linear`` (position interpolation, kaiokendev / Chen et al. 2023): every inverse frequency is divided by
    ``factor``. ``llama3`` (Meta's Llama 3.1 reference): low frequencies (wavelength above
    ``original_max_position_embeddings / low_freq_factor``) are divided by ``factor``, high frequencies
    (wavelength below ``original_max_position_embeddings / high_freq_factor``) are kept, and the band between
    is interpolated smoothly.

    Raises:
        ValueError: unknown ``rope_type`` or missing / non-positive parameters.
    """

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_SCALING:
            raise ValueError(
                f"rope_scaling type {self.rope_type!r} is not supported "
                f"(supported: {list(SUPPORTED_ROPE_SCALING)})"
            )
        if not self.factor > 0:
            raise ValueError(f"rope_scaling factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3":
            lo, hi, orig = self.low_freq_factor, self.high_freq_factor, self.original_max_position_embeddings
            if lo is None or hi is None or orig is None:
                raise ValueError(
                    "rope_scaling 'llama3' needs low_freq_factor, high_freq_factor and "
                    "original_max_position_embeddings"
                )
            if not (0 < lo < hi) or orig <= 0:
                raise ValueError(
                    f"rope_scaling 'llama3': need 0 < low_freq_factor ({lo}) < high_freq_factor ({hi}) and "
                    f"original_max_position_embeddings ({orig}) > 0"
                )


@dataclass(frozen=True)
class ModelConfig:
    """Static description of a Llama-family model (Llama, Mistral, Qwen2, Qwen3).

    Attention-shape fields: ``num_attention_heads`` query heads share ``num_key_value_heads`` K/V heads
    (GQA), each ``head_dim`` wide (``head_dim`` may differ from ``hidden_size / num_attention_heads``, as
    in Qwen3).

    ``context_len`` is the longest sequence the runtime serves. It is ``max_position_embeddings``, except
    when the model uses sliding-window attention (Mistral's ``sliding_window``; Qwen2/Qwen3 with
    ``use_sliding_window``) with a window smaller than that: then ``context_len`` is capped at the window,
    because for sequences no longer than the window sliding-window attention equals full causal attention,
    so the runtime's full attention stays exact.

    Bias flags: ``attention_bias`` is the bias of the q/k/v projections, ``o_proj_bias`` that of the output
    projection (Llama's ``attention_bias`` sets both; Qwen2 always has q/k/v bias and no o_proj bias; Qwen3
    follows its ``attention_bias``; Mistral has none). ``qk_norm`` is Qwen3's per-head RMSNorm of q and k.

    ``eos_token_ids`` is the union of config.json's and generation_config.json's ``eos_token_id`` (each an
    int or a list), in order of first appearance. ``torch_dtype`` is the checkpoint's dtype name, if given.

    Checkpoint fields: ``checkpoint_format`` is one of ``CHECKPOINT_FORMATS`` (which reader ``load_model``
    uses). ``checkpoint_quantization`` is the weight-only layout a pre-quantized checkpoint maps onto (GGUF Q8_0
    → int8wo, Q4_0 / Q4_K → int4wo-32, compressed-tensors W4A16 group g → int4wo-g; see
    ``loader.resolve_quantization``), None for float weights or when no layout matches (then the weights are
    dequantized). ``checkpoint_weight_format`` names the stored format for logs (``"GGUF Q4_K_M"``,
    ``"compressed-tensors W4A16 (group 128, symmetric, pack-quantized)"``); None for float safetensors.

    Raises:
        ValueError: a field is out of range or inconsistent (the message names the field).
    """

    model_path: str
    architecture: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    context_len: int
    max_position_embeddings: int | None = None
    sliding_window: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    torch_dtype: str | None = None
    checkpoint_format: str = "safetensors"
    checkpoint_quantization: QuantizationConfig | None = None
    checkpoint_weight_format: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"ModelConfig.checkpoint_format {self.checkpoint_format!r} not in {CHECKPOINT_FORMATS}")
        if not isinstance(self.checkpoint_quantization, QuantizationConfig | None):
            raise ValueError(f"ModelConfig.checkpoint_quantization {self.checkpoint_quantization!r} is not a config")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "context_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"ModelConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.max_position_embeddings is None:
            object.__setattr__(self, "max_position_embeddings", self.context_len)
        if self.max_position_embeddings is not None and self.context_len > self.max_position_embeddings:
            raise ValueError(
                f"ModelConfig.context_len ({self.context_len}) exceeds max_position_embeddings "
                f"({self.max_position_embeddings})"
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"ModelConfig.sliding_window must be > 0 or None, got {self.sliding_window}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(
                f"ModelConfig.rope_scaling must be a RopeScaling or None, got {self.rope_scaling!r}"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"ModelConfig.hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if not self.initializer_range > 0:
            raise ValueError(f"ModelConfig.initializer_range must be > 0, got {self.initializer_range}")
        eos = tuple(self.eos_token_ids)
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in eos):
            raise ValueError(f"ModelConfig.eos_token_ids must be non-negative ints, got {eos!r}")
        object.__setattr__(self, "eos_token_ids", eos)

    @property
    def q_size(self) -> int:
        """Width of the query projection: ``num_attention_heads * head_dim``."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection: ``num_key_value_heads * head_dim``."""
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_pretrained(cls, model_path: str) -> ModelConfig:
        """Read a model's configuration: ``config.json`` (and ``generation_config.json`` when present) of a
        Hugging Face directory, or the metadata of a GGUF file (``model_path`` is the ``.gguf`` file or a
        directory holding one; see ``checkpoint_path.find_gguf_file`` and ``gguf_loader.gguf_model_config``).

        A config.json with a ``quantization_config`` is a compressed-tensors checkpoint
        (``compressed_tensors.checkpoint_layout``); any other ``quant_method`` is refused.

        Raises:
            ValueError: ``model_path`` is not a directory or GGUF file, or has no (valid) config.json; the
                architecture is not one of ``SUPPORTED_ARCHITECTURES``; ``rope_scaling`` is of an unsupported type;
                a required key is missing; a value fails validation; an unreadable GGUF file or unsupported
                quantization. Every message names ``model_path``.
        """
        gguf_file = find_gguf_file(model_path)
        if gguf_file is not None:
            from radixgen.runtime.models.gguf_loader import gguf_model_config

            return gguf_model_config(model_path, gguf_file)
        path = Path(model_path)
        if not path.is_dir():
            raise ValueError(f"model_path {model_path!r} is not a directory or a .gguf file")
        raw = _read_json(path / "config.json", model_path, required=True)
        gen = _read_json(path / "generation_config.json", model_path, required=False)
        return cls.from_hf_config(raw, model_path, gen)

    @classmethod
    def from_hf_config(
        cls, raw: dict[str, Any], model_path: str, generation: dict[str, Any] | None = None
    ) -> ModelConfig:
        """A config from a parsed config.json dict (``raw``) and generation_config.json dict (``generation``);
        ``model_path`` is recorded and named in errors. The GGUF loader builds such a dict from GGUF metadata.

        Raises:
            ValueError: as ``from_pretrained``.
        """
        gen = generation or {}
        arch = _architecture(raw, model_path)
        family = _MODEL_TYPE_TO_ARCH_INV[arch]

        def need(key: str) -> Any:
            if raw.get(key) is None:
                raise ValueError(f"the config of model_path {model_path!r} lacks required key {key!r}")
            return raw[key]

        hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
        max_pos = int(need("max_position_embeddings"))
        window = _sliding_window(raw, family)
        context_len = min(max_pos, window) if window is not None else max_pos
        rope_theta, rope_scaling = _rope(raw, max_pos)
        bias = bool(raw.get("attention_bias", False))
        qkv_bias, o_bias = {"llama": (bias, bias), "mistral": (False, False), "qwen2": (True, False)}.get(
            family, (bias, bias)
        )
        eos: list[int] = []
        for source in (raw, gen):
            for token in _as_list(source.get("eos_token_id")):
                if int(token) not in eos:
                    eos.append(int(token))
        bos = raw.get("bos_token_id")
        if bos is None:
            bos = gen.get("bos_token_id")
        checkpoint: dict[str, Any] = {}
        if raw.get("quantization_config") is not None:
            from radixgen.runtime.models.compressed_tensors import checkpoint_layout

            quant, weight_format = checkpoint_layout(raw["quantization_config"], model_path)
            checkpoint = {
                "checkpoint_format": "compressed-tensors",
                "checkpoint_quantization": quant,
                "checkpoint_weight_format": weight_format,
            }
        return cls(
            model_path=str(model_path),
            architecture=arch,
            model_type=str(raw.get("model_type", family)),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            vocab_size=int(need("vocab_size")),
            context_len=context_len,
            max_position_embeddings=max_pos,
            sliding_window=window,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=qkv_bias,
            o_proj_bias=o_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)) if family == "llama" else False,
            qk_norm=family == "qwen3",
            hidden_act=str(raw.get("hidden_act", "silu")),
            initializer_range=float(raw.get("initializer_range") or 0.02),
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=tuple(eos),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            **checkpoint,
        )


def _read_json(file: Path, model_path: str, required: bool) -> dict[str, Any]:
    if not file.is_file():
        if required:
            raise ValueError(f"model_path {model_path!r} has no {file.name}")
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"model_path {model_path!r}: cannot read {file.name}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"model_path {model_path!r}: {file.name} is not a JSON object")
    return data


def _architecture(raw: dict[str, Any], model_path: str) -> str:
    archs = raw.get("architectures") or []
    if not archs and raw.get("model_type") in _MODEL_TYPE_TO_ARCH:
        archs = [_MODEL_TYPE_TO_ARCH[raw["model_type"]]]
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return arch
    named = archs[0] if archs else raw.get("model_type")
    raise ValueError(
        f"unsupported architecture {named!r} in model_path {model_path!r}; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _sliding_window(raw: dict[str, Any], family: str) -> int | None:
    """The sliding-window size if any layer uses one, else None (mirrors the transformers configs)."""
    window = raw.get("sliding_window")
    if window is None:
        return None
    if family == "mistral":
        return int(window)
    if family in ("qwen2", "qwen3"):
        layer_types = raw.get("layer_types")
        if layer_types is not None:
            return int(window) if "sliding_attention" in layer_types else None
        num_layers = int(raw.get("num_hidden_layers", 0))
        if raw.get("use_sliding_window") and int(raw.get("max_window_layers", num_layers)) < num_layers:
            return int(window)
    return None


def _rope(raw: dict[str, Any], max_pos: int) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) from either config.json layout.

    Raises:
        ValueError: naming ``rope_scaling`` when its type is unsupported or its parameters are missing.
    """
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling")
    spec = scaling if scaling else params
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = spec.get("rope_type", spec.get("type", "default")) if spec else "default"
    if rope_type == "default":
        return theta, None
    if rope_type not in SUPPORTED_ROPE_SCALING:
        raise ValueError(
            f"rope_scaling type {rope_type!r} is not supported (supported: {list(SUPPORTED_ROPE_SCALING)})"
        )
    if spec.get("factor") is None:
        raise ValueError(f"rope_scaling {rope_type!r} lacks 'factor'")
    if rope_type == "linear":
        return theta, RopeScaling("linear", float(spec["factor"]))
    # transformers gives a top-level original_max_position_embeddings priority, then the rope dict's, then
    # max_position_embeddings.
    key = "original_max_position_embeddings"
    orig = raw.get(key) or spec.get(key) or max_pos
    try:
        return theta, RopeScaling(
            "llama3",
            float(spec["factor"]),
            low_freq_factor=float(spec["low_freq_factor"]),
            high_freq_factor=float(spec["high_freq_factor"]),
            original_max_position_embeddings=int(orig),
        )
    except KeyError as e:
        raise ValueError(f"rope_scaling 'llama3' lacks {e.args[0]!r}") from e


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
