"""One LoRA adapter read from a PEFT directory into host memory, in the orientation the slot buffers use.

PEFT stores, per adapted projection ``W [out, in]``, ``lora_A.weight [r, in]`` and ``lora_B.weight [out, r]`` under
``base_model.model.model.layers.<i>.(self_attn|mlp).<module>``; the adapted layer computes
``W x + scaling * B (A x)`` (Hu et al. 2021). Here each pair is kept as ``A^T [in, r]`` and ``scaling * B^T [r, out]``
(float32), so a row vector ``x`` gets ``(x @ A^T) @ (scaling B^T)``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from radixgen.runtime.errors import LoRAError
from radixgen.runtime.lora.config import LORA_TARGET_MODULES, PeftAdapterConfig
from radixgen.runtime.models.config import ModelConfig

_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


def module_shape(cfg: ModelConfig, module: str) -> tuple[int, int]:
    """``(in_features, out_features)`` of a target projection of ``cfg``'s decoder layers."""
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    return {
        "q_proj": (hidden, cfg.q_size),
        "k_proj": (hidden, cfg.kv_size),
        "v_proj": (hidden, cfg.kv_size),
        "o_proj": (cfg.q_size, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }[module]


def _read_tensors(path: str, field_name: str) -> dict[str, torch.Tensor]:
    st = os.path.join(path, "adapter_model.safetensors")
    binary = os.path.join(path, "adapter_model.bin")
    try:
        if os.path.isfile(st):
            from safetensors.torch import load_file

            return load_file(st)
        if os.path.isfile(binary):
            loaded = torch.load(binary, map_location="cpu", weights_only=True)
            if isinstance(loaded, dict):
                return loaded
            raise LoRAError(field_name, f"{field_name}: {binary} does not hold a tensor dictionary")
    except LoRAError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable weight file is the adapter's fault: a 400 naming it
        raise LoRAError(field_name, f"{field_name}: cannot read the weights of {path!r}: {e}") from None
    raise LoRAError(field_name, f"{field_name}: {path!r} has no adapter_model.safetensors (or adapter_model.bin)")


@dataclass
class LoRAAdapter:
    """A loaded adapter.

    Attributes:
        name: the name requests use (``lora_path`` / OpenAI ``model``); path: its directory.
        uid: unique per load (a reloaded name gets a new one), the radix cache's namespace of its KV.
        rank: the largest rank among its modules; modules: the PEFT module names it adapts.
        weights: ``(layer, module) → (A^T float32 [in, r], scaling * B^T float32 [r, out])``.
    """

    name: str
    path: str
    uid: int
    rank: int
    modules: frozenset[str]
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @classmethod
    def load(
        cls,
        name: str,
        path: str,
        uid: int,
        model_config: ModelConfig,
        max_rank: int,
        target_modules: tuple[str, ...],
        field_name: str = "lora_path",
    ) -> LoRAAdapter:
        """Read and check ``path`` against the base model.

        Raises:
            LoRAError (``param`` = ``field_name``): see ``PeftAdapterConfig.read``; an unreadable weight file; a
                tensor that is not a decoder-layer LoRA pair (embedding / LM-head adapters are not served); a layer
                or shape that does not fit the base model; a rank above ``max_rank`` (``--max-lora-rank``); a
                module outside ``target_modules`` (``--lora-target-modules``); an A without its B; no tensors.
        """
        cfg = PeftAdapterConfig.read(path, field_name)
        pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        for key, tensor in _read_tensors(path, field_name).items():
            m = _KEY.search(key)
            if m is None:
                raise LoRAError(field_name, f"{field_name}: {path!r}: {key!r} is not a decoder-layer LoRA weight")
            layer, module, which = int(m.group(1)), m.group(2), m.group(3)
            if module not in LORA_TARGET_MODULES:
                raise LoRAError(field_name, f"{field_name}: {path!r} adapts {module!r}; served: {LORA_TARGET_MODULES}")
            if module not in target_modules:
                raise LoRAError(
                    field_name,
                    f"{field_name}: {path!r} adapts {module}, which --lora-target-modules {list(target_modules)} "
                    "leaves out",
                )
            if layer >= model_config.num_hidden_layers:
                num_layers = model_config.num_hidden_layers
                raise LoRAError(field_name, f"{field_name}: {path!r} has layer {layer}; the model has {num_layers}")
            pairs.setdefault((layer, module), {})[which] = tensor
        if not pairs:
            raise LoRAError(field_name, f"{field_name}: {path!r} holds no LoRA weights")
        weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        rank = 0
        for (layer, module), ab in sorted(pairs.items()):
            if set(ab) != {"A", "B"}:
                missing = ({"A", "B"} - set(ab)).pop()
                raise LoRAError(field_name, f"{field_name}: {path!r}: layer {layer} {module} has no lora_{missing}")
            a, b = ab["A"], ab["B"]
            fan_in, fan_out = module_shape(model_config, module)
            r = a.shape[0]
            if a.dim() != 2 or b.dim() != 2 or tuple(a.shape) != (r, fan_in) or tuple(b.shape) != (fan_out, r):
                raise LoRAError(
                    field_name,
                    f"{field_name}: {path!r}: layer {layer} {module}: lora_A {tuple(a.shape)} / lora_B "
                    f"{tuple(b.shape)} do not fit the model's [{fan_out}, {fan_in}] projection",
                )
            if r > max_rank:
                raise LoRAError(field_name, f"{field_name}: {path!r} has rank {r} > --max-lora-rank {max_rank}")
            rank = max(rank, r)
            scale = cfg.scaling(r)
            weights[(layer, module)] = (
                a.to(torch.float32).t().contiguous(),  # [in, r]
                (b.to(torch.float32) * scale).t().contiguous(),  # [r, out]
            )
        return cls(name, path, uid, rank, frozenset(m for _, m in weights), weights)
