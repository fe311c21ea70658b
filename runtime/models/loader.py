"""Build a model from a ``ModelConfig``: weights from safetensors files (float or compressed-tensors), a GGUF
file, or random ("dummy") weights — the whole model, or one tensor-parallel rank's shard of it."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from radixgen.runtime.distributed import TensorParallelGroup
from radixgen.runtime.models.config import ModelConfig
from radixgen.runtime.models.llama import LlamaForCausalLM
from radixgen.runtime.models.quant_config import QuantizationConfig

logger = logging.getLogger(__name__)

LOAD_FORMATS: tuple[str, ...] = ("auto", "safetensors", "dummy")
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
_MAX_LISTED = 20


def load_model(
    config: ModelConfig,
    dtype: torch.dtype = torch.float32,
    load_format: str = "auto",
    device: str | torch.device = "cpu",
    seed: int = 0,
    quantization: QuantizationConfig | None = None,
    process_weights: bool = True,
    tp_group: TensorParallelGroup | None = None,
) -> LlamaForCausalLM:
    """Create the model for ``config`` on ``device`` with ``dtype`` parameters, in eval mode, without grads.

    Args:
        config: model configuration (``ModelConfig.from_pretrained``).
        dtype: float32 (default), bfloat16 or float16; checkpoint tensors are cast to it.
        load_format: ``"auto"``: read the checkpoint ``config.checkpoint_format`` names (``checkpoint_reader``:
            a GGUF file, compressed-tensors or float safetensors). ``"safetensors"``: read ``*.safetensors`` in
            ``config.model_path`` (one file, or the shards listed by ``model.safetensors.index.json``; dequantized
            when compressed-tensors). ``"dummy"``: random weights from
            the config alone (no files read), deterministic for ``seed`` on a given device: linear and
            embedding weights ~ N(0, initializer_range), biases 0, norm weights 1.
        device: where the parameters live.
        seed: the dummy-weights seed.
        quantization: weight-only quantization of the projections (``QuantizationConfig``), or None.
        process_weights: convert the projections to their kernel modules
            (``LlamaForCausalLM.process_weights_after_loading``: oneDNN-prepacked on CPU, or quantized). False
            keeps plain ``nn.Linear`` weights, e.g. to copy them into a reference model with ``hf_weight_views``.
        tp_group: build this rank's shard for tensor parallelism (``TensorParallelGroup.initialize``; every rank
            calls ``load_model`` with the same arguments). The checkpoint is checked against the full model's
            names and shapes and streamed one tensor at a time, each cut to the rank's part
            (``TPPartition.shard``) before it is stored. Dummy weights are drawn for the full model on the CPU and
            then cut, so every ``tp_size`` gets the same model as a ``tp_size`` 1 CPU load of that seed. None: one
            rank.

    Checkpoint names are the Hugging Face ones (``model.embed_tokens.weight``,
    ``model.layers.N.self_attn.q_proj.weight``, ``...mlp.gate_proj.weight``, ``model.norm.weight``,
    ``lm_head.weight``...). ``*rotary_emb.inv_freq`` buffers are ignored, and so is ``lm_head.weight`` when
    the embeddings are tied (some tied checkpoints store a copy).

    Raises:
        ValueError: unsupported ``dtype`` or ``load_format``; no safetensors file in ``model_path``; a shard
            named by the index is absent; the checkpoint has unknown tensors or lacks expected ones (both
            listed); a tensor's shape differs from the model's (the tensor is named); an unreadable GGUF file or
            compressed-tensors module (named); ``tp_size`` cannot split the model's heads (``TPPartition.build``).
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"load_model: dtype {dtype} not supported (supported: {list(SUPPORTED_DTYPES)})")
    if load_format not in LOAD_FORMATS:
        raise ValueError(
            f"load_model: load_format {load_format!r} not supported (supported: {list(LOAD_FORMATS)})"
        )
    reader = None if load_format == "dummy" else checkpoint_reader(config, load_format)
    # Build on the meta device (no allocation, no default init), then allocate on the target device.
    with torch.device("meta"):
        model = LlamaForCausalLM(config, dtype=dtype, tp_group=tp_group)
    model = model.to_empty(device=device)
    model.requires_grad_(False)
    sharded = model.tp_partition.tp_size > 1
    with torch.no_grad():
        if sharded:
            for param in model.parameters():
                param.zero_()  # the vocabulary padding rows stay zero
        if reader is not None:
            _load_checked(model, reader)
        elif sharded:
            with torch.device("meta"):
                full = LlamaForCausalLM(config, dtype=dtype)
            full = full.to_empty(device="cpu").requires_grad_(False)  # the whole model
            _init_dummy(full, seed)
            _copy_shards(model, full.hf_weight_views().items())
        else:
            _init_dummy(model, seed)
    if process_weights:
        model.process_weights_after_loading(quantization)
    elif quantization is not None:
        raise ValueError("load_model: quantization needs process_weights=True")
    return model.eval()


def safetensors_files(model_path: str) -> list[Path]:
    """The safetensors files of a model directory: the shards of ``model.safetensors.index.json`` if present,
    else every ``*.safetensors``.

    Raises:
        ValueError: ``model_path`` is not a directory, the index is unreadable or names an absent shard, or
            there is no weights file.
    """
    path = Path(model_path)
    if not path.is_dir():
        raise ValueError(f"model_path {model_path!r} is not a directory")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"model_path {model_path!r}: unreadable {index.name}: {e}") from e
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ValueError(f"model_path {model_path!r}: shards named by {index.name} are missing: {absent}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"model_path {model_path!r} has no *.safetensors weights "
            "(use load_format='dummy' for random weights)"
        )
    return files


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


class CheckpointReader(Protocol):
    """A checkpoint's float tensors under Hugging Face names (``SafetensorsWeights``,
    ``gguf_loader.GGUFWeights``, ``compressed_tensors.CompressedTensorsWeights``)."""

    def shapes(self, expected: Collection[str]) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of every tensor the checkpoint holds, without reading tensor data (a reader that
        renames uses ``expected``, the model's names, to resolve them; names it cannot map are reported as
        stored)."""
        ...

    def tensors(self, names: Collection[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for each of ``names`` (which ``shapes`` reported), float (dequantized) tensors of
        the reported shapes, one at a time."""
        ...


def checkpoint_reader(config: ModelConfig, load_format: str = "auto") -> CheckpointReader:
    """The reader of ``config``'s weights, by ``config.checkpoint_format``: GGUF, compressed-tensors (over the
    directory's safetensors) or plain safetensors.

    Raises:
        ValueError: ``load_format="safetensors"`` for a GGUF model; as ``safetensors_files``; an unreadable
            GGUF file or quantization_config (naming model_path).
    """
    if config.checkpoint_format == "gguf":
        if load_format == "safetensors":
            raise ValueError(
                f"model_path {config.model_path!r} is a GGUF checkpoint: load_format 'safetensors' cannot read it "
                "(use 'auto')"
            )
        from radixgen.runtime.models.gguf_loader import GGUFWeights

        return GGUFWeights(config)
    weights = SafetensorsWeights(safetensors_files(config.model_path))
    if config.checkpoint_format == "compressed-tensors":
        from radixgen.runtime.models.compressed_tensors import CompressedTensorsWeights

        return CompressedTensorsWeights(weights, config.model_path)
    return weights


class SafetensorsWeights:
    """The tensors of safetensors files by their stored names (a ``CheckpointReader``); the file handles stay
    open (memory-mapped) while the reader lives."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self._handles: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            handle = safe_open(str(file), framework="pt", device="cpu")
            for name in handle.keys():
                self._handles[name] = handle
                self._shapes[name] = tuple(handle.get_slice(name).get_shape())

    def shapes(self, expected: Collection[str]) -> dict[str, tuple[int, ...]]:
        """Every stored tensor's shape (the returned dict is shared: do not modify it)."""
        return self._shapes

    def get(self, name: str) -> torch.Tensor:
        """One stored tensor, as stored (a ``KeyError`` for an unknown name)."""
        return self._handles[name].get_tensor(name)

    def tensors(self, names: Collection[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """The stored tensors among ``names``, in file order."""
        for name in self._shapes:
            if name in names:
                yield name, self.get(name)


def resolve_quantization(
    config: ModelConfig, requested: QuantizationConfig | None, dtype: torch.dtype = torch.float32
) -> QuantizationConfig | None:
    """The weight-only quantization the runner applies after loading (``load_model(quantization=...)``):
    ``requested`` (``--quantization``) when given, else the layout a pre-quantized checkpoint maps onto
    (``config.checkpoint_quantization``: GGUF Q8_0 → int8wo, Q4_0 / Q4_K → int4wo-32, compressed-tensors
    W4A16 group g → int4wo-g). Logs which, e.g. "GGUF Q8_0 tensors mapped onto int8wo (re-quantized per
    channel)" or "GGUF F16 tensors dequantized to float32 (no matching layout)"; nothing for float safetensors.

    Args:
        config: the model's config (``ModelConfig.from_pretrained``).
        requested: the user's ``ServerArgs.quantization_config`` (None: not given).
        dtype: the model dtype the dequantized weights are held in (named in the log).
    """
    stored = config.checkpoint_weight_format
    mapped = config.checkpoint_quantization
    if requested is not None:
        if stored is not None:
            logger.info(
                "%s tensors dequantized, then re-quantized onto %s (--quantization; the checkpoint maps onto %s)",
                stored, requested.name, mapped.name if mapped is not None else "none",
            )
        return requested
    if stored is None:
        return None
    if mapped is None:
        logger.info("%s tensors dequantized to %s (no matching layout)", stored, str(dtype).removeprefix("torch."))
        return None
    how = f"per group of {mapped.group_size}" if mapped.method == "int4wo" else "per channel"
    logger.info("%s tensors mapped onto %s (re-quantized %s)", stored, mapped.name, how)
    return mapped


def _load_checked(model: LlamaForCausalLM, reader: CheckpointReader) -> None:
    """Check the checkpoint's names and shapes against the (full) model before reading any data, then copy each
    tensor's part for this rank."""
    model_path = model.config.model_path
    if model.tp_partition.tp_size == 1:
        views = model.hf_weight_views()
    else:  # the checkpoint holds the full tensors: check against an unsharded model's shapes (meta: no memory)
        with torch.device("meta"):
            views = LlamaForCausalLM(model.config, dtype=model.dtype).hf_weight_views()
    located = reader.shapes(views.keys())

    def ignored(name: str) -> bool:
        return name.endswith("rotary_emb.inv_freq") or (
            name == "lm_head.weight" and model.config.tie_word_embeddings
        )

    unknown = sorted(n for n in located if n not in views and not ignored(n))
    if unknown:
        raise ValueError(f"model_path {model_path!r}: unknown tensors in checkpoint: {_listing(unknown)}")
    missing = sorted(n for n in views if n not in located)
    if missing:
        raise ValueError(f"model_path {model_path!r}: tensors missing from checkpoint: {_listing(missing)}")
    for name, view in views.items():
        shape = located[name]
        if shape != tuple(view.shape):
            raise ValueError(
                f"model_path {model_path!r}: tensor {name!r} has shape {list(shape)}, "
                f"expected {list(view.shape)}"
            )
    _copy_shards(model, reader.tensors(set(views)))


def _copy_shards(model: LlamaForCausalLM, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Store each full checkpoint tensor ``(name, tensor)``'s part for the model's rank (the whole tensor for one
    rank) into the model's ``hf_weight_views``."""
    views, partition = model.hf_weight_views(), model.tp_partition
    for name, tensor in tensors:
        views[name].copy_(partition.shard(name, tensor))


def _init_dummy(model: LlamaForCausalLM, seed: int) -> None:
    """Deterministic random weights: N(0, initializer_range) for matrices, 0 for biases, 1 for norms.

    Values are drawn in float32 from a generator on the parameters' device (in ``named_parameters`` order)
    and then cast, so a seed gives the same model for every dtype on a given device.
    """
    std = model.config.initializer_range
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith("bias"):  # ".bias", and the row-parallel "o_proj_bias" / "down_proj_bias"
            param.zero_()
        else:
            sample = torch.empty(param.shape, dtype=torch.float32, device=device)
            param.copy_(sample.normal_(0.0, std, generator=gen))
