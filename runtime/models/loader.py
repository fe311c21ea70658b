"""Build a model from a ``ModelConfig``: weights from safetensors files, or random ("dummy") weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from radixgen.runtime.models.config import ModelConfig
from radixgen.runtime.models.llama import LlamaForCausalLM

LOAD_FORMATS: tuple[str, ...] = ("auto", "safetensors", "dummy")
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
_MAX_LISTED = 20


def load_model(
    config: ModelConfig,
    dtype: torch.dtype = torch.float32,
    load_format: str = "auto",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LlamaForCausalLM:
    """Create the model for ``config`` on ``device`` with ``dtype`` parameters, in eval mode, without grads.

    Args:
        config: model configuration (``ModelConfig.from_pretrained``).
        dtype: float32 (default), bfloat16 or float16; checkpoint tensors are cast to it.
        load_format: ``"auto"`` / ``"safetensors"``: read ``*.safetensors`` in ``config.model_path`` (one
            file, or the shards listed by ``model.safetensors.index.json``). ``"dummy"``: random weights from
            the config alone (no files read), deterministic for ``seed`` on a given device: linear and
            embedding weights ~ N(0, initializer_range), biases 0, norm weights 1.
        device: where the parameters live. On CPU the decoder-layer projection weights are stored column-major
            (``LlamaForCausalLM.use_column_major_linears``).
        seed: the dummy-weights seed.

    Checkpoint names are the Hugging Face ones (``model.embed_tokens.weight``,
    ``model.layers.N.self_attn.q_proj.weight``, ``...mlp.gate_proj.weight``, ``model.norm.weight``,
    ``lm_head.weight``...). ``*rotary_emb.inv_freq`` buffers are ignored, and so is ``lm_head.weight`` when
    the embeddings are tied (some tied checkpoints store a copy).

    Raises:
        ValueError: unsupported ``dtype`` or ``load_format``; no safetensors file in ``model_path``; a shard
            named by the index is absent; the checkpoint has unknown tensors or lacks expected ones (both
            listed); a tensor's shape differs from the model's (the tensor is named).
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"load_model: dtype {dtype} not supported (supported: {list(SUPPORTED_DTYPES)})")
    if load_format not in LOAD_FORMATS:
        raise ValueError(
            f"load_model: load_format {load_format!r} not supported (supported: {list(LOAD_FORMATS)})"
        )
    files = None if load_format == "dummy" else safetensors_files(config.model_path)
    # Build on the meta device (no allocation, no default init), then allocate on the target device.
    with torch.device("meta"):
        model = LlamaForCausalLM(config, dtype=dtype)
    model = model.to_empty(device=device)
    model.requires_grad_(False)
    with torch.no_grad():
        if files is None:
            _init_dummy(model, seed)
        else:
            _load_safetensors(model, files)
    if torch.device(device).type == "cpu":
        model.use_column_major_linears()  # faster CPU GEMMs at small batch; see its docstring
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


def _load_safetensors(model: LlamaForCausalLM, files: list[Path]) -> None:
    """Check the checkpoint's names and shapes against the model before reading any data, then copy."""
    from safetensors import safe_open

    model_path = model.config.model_path
    views = model.hf_weight_views()
    located: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                located[name] = (file, tuple(f.get_slice(name).get_shape()))

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
        shape = located[name][1]
        if shape != tuple(view.shape):
            raise ValueError(
                f"model_path {model_path!r}: tensor {name!r} has shape {list(shape)}, "
                f"expected {list(view.shape)}"
            )
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name in views and located[name][0] == file:
                    views[name].copy_(f.get_tensor(name))


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
        elif name.endswith(".bias"):
            param.zero_()
        else:
            sample = torch.empty(param.shape, dtype=torch.float32, device=device)
            param.copy_(sample.normal_(0.0, std, generator=gen))
