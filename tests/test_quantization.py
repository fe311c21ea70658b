"""Quantization (--quantization int8wo | int4wo-<group> | w8a8_int8) and the CPU weight kernels.

Reference: the float32 model with plain ``nn.Linear`` weights (``load_model(..., process_weights=False)``). For
each scheme, the 200-token greedy continuation of BOS by the reference is teacher-forced through the quantized
model; the tests bound the KL divergence of the next-token distributions, require the top-1 token to agree at a
stated share of the 201 positions, and report the max-abs logit error. Measured on stories260K (this machine):

| scheme | max-abs | mean KL | top-1 agreement | greedy prefix equal |
|---|---|---|---|---|
| int8wo | 0.38 | 3.0e-4 | 98.5% | 61 tokens |
| w8a8_int8 | 0.66 | 7.4e-4 | 98.5% | 61 |
| int4wo-32 | 5.2 | 3.8e-2 | 91.5% | 20 |
| int4wo-64 | 5.2 | 4.8e-2 | 92.5% | 30 |
| int4wo-128 | 5.7 | 4.9e-2 | 92.5% | 20 |

stories260K is tiny (hidden 64), so int4 hurts it far more than it hurts real models; the random 256-wide config
below is closer to real layer widths.
"""

from __future__ import annotations

import json

import pytest
import torch
from model_harness import KVHarness
from shared_paths import STORIES

from radixgen.runtime import Engine
from radixgen.runtime.models import ModelConfig, load_model
from radixgen.runtime.models.linear import DenseLinear, OneDNNLinear, convert_linear, cpu_float_kernel
from radixgen.runtime.models.llama import LlamaForCausalLM
from radixgen.runtime.models.quant_config import QuantizationConfig

GOLDEN = (STORIES / "reference_greedy_from_bos_200.txt").read_text()

# scheme -> (max mean KL, min top-1 agreement) on stories260K, float32 activations outside the linears
BOUNDS = {
    "int8wo": (1e-3, 0.97),
    "w8a8_int8": (2e-3, 0.97),
    "int4wo-32": (0.08, 0.88),
    "int4wo-64": (0.08, 0.88),
    "int4wo-128": (0.08, 0.88),
}


def greedy_logits(model: LlamaForCausalLM, steps: int = 200) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation of BOS: the ``steps`` tokens and the float32 logits ``[steps + 1, vocab]``."""
    h = KVHarness(model, num_slots=steps + 8)
    row = h.new_request()
    logits = [h.extend([row], [[1]])[-1]]
    tokens: list[int] = []
    for _ in range(steps):
        tokens.append(int(logits[-1].argmax()))
        logits.append(h.decode([row], [tokens[-1]])[0])
    return tokens, torch.stack(logits)


def teacher_forced(model: LlamaForCausalLM, tokens: list[int]) -> torch.Tensor:
    h = KVHarness(model, num_slots=len(tokens) + 8)
    return h.extend([h.new_request()], [[1, *tokens]])  # [len + 1, vocab]


def compare(ref_logits: torch.Tensor, logits: torch.Tensor) -> tuple[float, float, float]:
    """(max-abs logit error, mean KL(ref || quantized), top-1 agreement share)."""
    p, q = torch.log_softmax(ref_logits, -1), torch.log_softmax(logits, -1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    return (logits - ref_logits).abs().max().item(), kl, top1


@pytest.fixture(scope="module")
def stories_reference() -> tuple[ModelConfig, list[int], torch.Tensor]:
    cfg = ModelConfig.from_pretrained(str(STORIES))
    tokens, logits = greedy_logits(load_model(cfg, process_weights=False))
    return cfg, tokens, logits


@pytest.mark.parametrize("scheme", list(BOUNDS))
def test_quantized_logits_close_to_float32(scheme: str, stories_reference) -> None:
    cfg, tokens, ref = stories_reference
    model = load_model(cfg, quantization=QuantizationConfig.parse(scheme))
    max_abs, kl, top1 = compare(ref, teacher_forced(model, tokens))
    max_kl, min_top1 = BOUNDS[scheme]
    print(f"{scheme}: max-abs {max_abs:.3f} KL {kl:.2e} top-1 {top1:.3f}")
    assert kl <= max_kl and top1 >= min_top1, (scheme, max_abs, kl, top1)
    formats = model.weight_report()["formats"]
    assert formats[scheme] == 4 * cfg.num_hidden_layers  # qkv, o, gate_up, down of every layer


def test_float_kernels_match_reference(stories_reference) -> None:
    """The CPU float32 kernels (the fused loop's row kernel over row-major weights where it runs, else column-major
    MKL GEMMs) give the reference logits (to float32 rounding)."""
    cfg, tokens, ref = stories_reference
    model = load_model(cfg)
    fmt = "float32" if model.fused_layers is not None else "float32-colmajor"
    if cpu_float_kernel(torch.float32) == "colmajor":
        assert model.weight_report()["formats"] == {fmt: 4 * cfg.num_hidden_layers}
    max_abs, kl, top1 = compare(ref, teacher_forced(model, tokens))
    assert max_abs < 1e-4 and top1 >= 0.99  # a different GEMM order may flip an exact near-tie


def test_random_config_int8_close(tmp_path) -> None:
    """A wider random Llama (hidden 256, GQA, odd intermediate size): int8wo logits within 2% of their range."""
    (tmp_path / "config.json").write_text(
        json.dumps({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 680,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "initializer_range": 0.05,
        })
    )
    cfg = ModelConfig.from_pretrained(str(tmp_path))
    ref = load_model(cfg, load_format="dummy", seed=3, process_weights=False)
    ids = torch.randint(3, 1000, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    ref_logits = teacher_forced(ref, ids)
    for scheme, tol in (("int8wo", 0.02), ("w8a8_int8", 0.03), ("int4wo-64", 0.2)):
        quant = QuantizationConfig.parse(scheme, quantize_lm_head=True)
        model = load_model(cfg, load_format="dummy", seed=3, quantization=quant)
        err = (teacher_forced(model, ids) - ref_logits).abs().max().item()
        span = (ref_logits.max() - ref_logits.min()).item()
        assert err <= tol * span, (scheme, err, span)
        assert model.weight_report()["formats"] == {scheme: 4 * 2 + 1}  # the LM head too


def test_convert_linear_pads_odd_shapes() -> None:
    """Shapes the int8 / int4 kernels cannot take directly (K % 16, N % 16) are zero-padded, not refused."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(50, 172, generator=gen) * 0.05
    b = torch.randn(50, generator=gen)
    x = torch.randn(5, 172, generator=gen)
    ref = torch.nn.functional.linear(x, w, b)
    for scheme, tol in (("int8wo", 0.03), ("w8a8_int8", 0.04), ("int4wo-32", 0.15)):
        y = convert_linear(w, b, QuantizationConfig.parse(scheme))(x)
        assert y.shape == (5, 50) and y.dtype == torch.float32
        assert (y - ref).abs().max().item() < tol * ref.abs().max().item(), scheme
    dense = convert_linear(w.half(), None, None)
    assert isinstance(dense, DenseLinear | OneDNNLinear)


@pytest.mark.parametrize("scheme", ["int8wo", "w8a8_int8"])
def test_engine_int8_golden_prefix_and_server_info(scheme: str) -> None:
    """The int8 paths through the whole engine: the golden greedy text's opening, batching invariance, and the
    formats and bytes in get_server_info."""
    engine = Engine(str(STORIES), quantization=scheme)
    out = engine.generate(input_ids=[1], sampling_params={"temperature": 0, "max_new_tokens": 200, "ignore_eos": True})
    golden_ids = engine.tokenizer.encode(GOLDEN, add_special_tokens=False)
    ids = out["output_ids"]
    same = next((i for i, (a, b) in enumerate(zip(ids, golden_ids, strict=False)) if a != b), len(ids))
    assert same >= 48, same  # measured 61 (both): int8 flips a near-tie there (see the module docstring)
    prompts = ["Once upon a time", "The cat sat", "Tom and Lily went to the"]
    params = {"temperature": 0, "max_new_tokens": 24}
    alone = [engine.generate(p, params)["output_ids"] for p in prompts]
    batched = [o["output_ids"] for o in engine.generate(prompts, params)]
    assert alone == batched
    info = engine.get_server_info()
    assert info["quantization"] == scheme and info["weight_formats"][scheme] == 20
    float_bytes = Engine(str(STORIES)).get_server_info()["weight_bytes"]
    assert info["weight_bytes"] < 0.5 * float_bytes


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"quantization": "int3wo"}, "quantization"),
        ({"quantization": "int4wo-48"}, "quantization"),
        ({"quantization": "int8wo-32"}, "quantization"),
        ({"quantization": "w8a8_int8-32"}, "quantization"),
        ({"quantize_lm_head": True}, "quantize_lm_head"),
    ],
)
def test_bad_quantization_flags_name_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        Engine(str(STORIES), **kwargs)
