"""LoRA settings: the server's (``LoRAConfig``, from ServerArgs) and one adapter's (``PeftAdapterConfig``, PEFT's
``adapter_config.json``), and where LoRA attaches to a Llama-family model (``LORA_SITES``). Torch-free.

Adapters are PEFT's ``LoraConfig`` format (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models";
rsLoRA: Kalajdzievski 2023, scaling ``alpha / sqrt(r)`` instead of ``alpha / r``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from radixgen.runtime.errors import LoRAError

#: the projections an adapter may target, by PEFT module name, grouped by the fused projection of
#: ``runtime/models/llama.py`` they add to (in the fused weight's output order)
LORA_SITES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}
LORA_TARGET_MODULES: tuple[str, ...] = tuple(m for mods in LORA_SITES.values() for m in mods)
SITE_OF_MODULE: dict[str, str] = {m: site for site, mods in LORA_SITES.items() for m in mods}

# PEFT LoraConfig fields whose non-default values change the computation and are not implemented here
_UNSUPPORTED_PEFT = {
    "use_dora": False,
    "fan_in_fan_out": False,
    "alpha_pattern": {},
    "modules_to_save": None,
    "lora_bias": False,
    "use_qalora": False,
}


def parse_lora_path(spec: str) -> tuple[str, str]:
    """One ``--lora-paths`` entry: ``name=path`` (SGLang's spelling), or a bare ``path`` named by itself.

    Raises:
        LoRAError: an empty name or path (field ``lora_paths``).
    """
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = spec, spec
    if not name or not path:
        raise LoRAError("lora_paths", f"lora_paths: {spec!r} must be name=path or path")
    return name, path


@dataclass(frozen=True)
class LoRAConfig:
    """The server's multi-LoRA settings (SGLang's flag names).

    Attributes:
        lora_paths: ``(name, path)`` adapters loaded at start.
        max_loras_per_batch: adapter slots in the stacked weight buffers = most distinct adapters in one batch.
        max_lora_rank: the rank the slot buffers are sized for (tokens of lower-rank adapters are zero-padded).
        lora_target_modules: the modules the buffers cover (adapters targeting others are refused).
    """

    lora_paths: tuple[tuple[str, str], ...]
    max_loras_per_batch: int
    max_lora_rank: int
    lora_target_modules: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("max_loras_per_batch", "max_lora_rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise LoRAError(name, f"{name}: must be a positive integer, got {v!r}")
        bad = [m for m in self.lora_target_modules if m not in LORA_TARGET_MODULES]
        if bad or not self.lora_target_modules:
            raise LoRAError(
                "lora_target_modules",
                f"lora_target_modules: {bad or 'empty'}; allowed: {', '.join(LORA_TARGET_MODULES)} or all-linear",
            )
        names = [n for n, _ in self.lora_paths]
        if len(set(names)) != len(names):
            raise LoRAError("lora_paths", f"lora_paths: adapter names must be distinct, got {names}")

    @classmethod
    def build(
        cls,
        lora_paths: tuple[str, ...] | None,
        max_loras_per_batch: int,
        max_lora_rank: int | None,
        lora_target_modules: tuple[str, ...] | None,
    ) -> LoRAConfig:
        """From the ServerArgs fields. ``max_lora_rank`` defaults to the largest rank of the start-up adapters
        (16 without any); ``lora_target_modules`` to all seven projections (``all-linear``).

        Raises:
            LoRAError: naming the field (an unreadable start-up adapter is reported as ``lora_paths``).
        """
        paths = tuple(parse_lora_path(s) for s in lora_paths or ())
        rank = max_lora_rank
        if rank is None:
            rank = max((PeftAdapterConfig.read(p, "lora_paths").r for _, p in paths), default=16)
        targets = tuple(lora_target_modules or ("all-linear",))
        if "all-linear" in targets:
            targets = LORA_TARGET_MODULES
        return cls(paths, max_loras_per_batch, rank, tuple(dict.fromkeys(targets)))


@dataclass(frozen=True)
class PeftAdapterConfig:
    """The parts of a PEFT ``adapter_config.json`` that define the computation.

    Attributes:
        r: the rank (modules listed in ``rank_pattern`` take their own rank from their tensors' shapes).
        lora_alpha: the scaling numerator; ``use_rslora``: divide by ``sqrt(r)`` instead of ``r``.
        target_modules: the configured targets as written (a list, a regex string or ``all-linear``); the modules
            actually adapted are read from the weight file.
    """

    r: int
    lora_alpha: float
    use_rslora: bool
    target_modules: Any

    def scaling(self, rank: int) -> float:
        """The factor on ``B @ A`` of a module of rank ``rank``: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)."""
        return self.lora_alpha / (rank**0.5 if self.use_rslora else rank)

    @classmethod
    def read(cls, path: str, field: str = "lora_path") -> PeftAdapterConfig:
        """Parse ``<path>/adapter_config.json``.

        Raises:
            LoRAError: not a directory, no or unreadable config, not a LoRA adapter, a bad rank or alpha, or a PEFT
                option this server does not implement (DoRA, fan_in_fan_out, alpha_pattern, modules_to_save, LoRA
                bias); ``param`` is ``field``.
        """
        if not os.path.isdir(path):
            raise LoRAError(field, f"{field}: {path!r} is not a directory")
        cfg_file = os.path.join(path, "adapter_config.json")
        try:
            with open(cfg_file, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise LoRAError(field, f"{field}: {path!r} has no adapter_config.json (not a PEFT adapter)") from None
        except (OSError, ValueError) as e:
            raise LoRAError(field, f"{field}: cannot read {cfg_file}: {e}") from None
        if not isinstance(raw, dict):
            raise LoRAError(field, f"{field}: {cfg_file} is not a JSON object")
        peft_type = raw.get("peft_type", "LORA")
        if str(peft_type).upper() != "LORA":
            raise LoRAError(field, f"{field}: {path!r} is a {peft_type} adapter; only LORA adapters are served")
        for key, default in _UNSUPPORTED_PEFT.items():
            if raw.get(key, default) not in (default, None, {}, [], False):
                raise LoRAError(field, f"{field}: {path!r} uses {key}={raw[key]!r}, which this server does not support")
        if raw.get("bias", "none") != "none":
            raise LoRAError(field, f"{field}: {path!r} trains biases (bias={raw['bias']!r}); only 'none' is served")
        r, alpha = raw.get("r", 8), raw.get("lora_alpha", 8)
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise LoRAError(field, f"{field}: {cfg_file}: r must be a positive integer, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
            raise LoRAError(field, f"{field}: {cfg_file}: lora_alpha must be a positive number, got {alpha!r}")
        return cls(r, float(alpha), bool(raw.get("use_rslora", False)), raw.get("target_modules"))
