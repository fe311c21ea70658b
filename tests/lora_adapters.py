"""Test helper: PEFT LoRA adapters over stories260K, created with PEFT itself (seeded, non-zero B matrices), and the
Hugging Face transformers + PEFT reference model that applies them."""

from __future__ import annotations

from pathlib import Path

import torch
from shared_paths import STORIES

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ALL = ATTN + MLP


def make_adapter(
    out_dir: Path,
    target_modules: tuple[str, ...],
    r: int,
    seed: int,
    alpha: float = 16.0,
    use_rslora: bool = False,
    base: str | Path = STORIES,
) -> Path:
    """Save a PEFT LoRA adapter over ``base`` into ``out_dir`` (created): PEFT initialises A, B is filled with seeded
    normal noise (PEFT's default B is zero, which would make the adapter a no-op). Returns ``out_dir``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(target_modules), use_rslora=use_rslora, lora_dropout=0.0
    )
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(out_dir)
    return out_dir


def peft_reference(adapters: dict[str, Path], base: str | Path = STORIES) -> torch.nn.Module:
    """transformers' model with every adapter loaded by PEFT under its name (``set_adapter`` picks one;
    ``disable_adapter()`` gives the base model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    names = list(adapters)
    peft_model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(adapters[name], adapter_name=name)
    peft_model.eval()
    return peft_model


def reference_logits(peft_model: torch.nn.Module, adapter: str | None, token_ids: list[int]) -> torch.Tensor:
    """float32 ``[len(token_ids), vocab]`` logits of ``token_ids`` under ``adapter`` (None: the base model)."""
    ids = torch.tensor([token_ids])  # [1, L]
    with torch.no_grad():
        if adapter is None:
            with peft_model.disable_adapter():
                return peft_model(input_ids=ids).logits[0].float()
        peft_model.set_adapter(adapter)
        return peft_model(input_ids=ids).logits[0].float()
