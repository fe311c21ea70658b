"""Pre-quantized and foreign checkpoints: GGUF files and compressed-tensors W8A16 / W8A8 / W4A16 directories.

Every checkpoint is written in the test from a float model (stories260K, or a random Llama-family config) the way
its producer writes it (``checkpoint_writers``), loaded through ``ModelConfig.from_pretrained`` + ``load_model``,
and its engine logits (``KVHarness``, teacher-forced over 128 tokens of the golden text) are checked twice:
against a float model holding exactly the values the file stores (dequantized by the format's reference code:
gguf's dequantizers, the compressed-tensors formula) — equal within 1e-5 — and against the float model, within
the tolerance the format's precision allows (max-abs logit error and mean KL(float || loaded), bounds below,
measured values in the comments). The tokenizer built from GGUF metadata must encode like the Hugging Face one.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from checkpoint_writers import ct_pack_int32, ct_quantize, quantize_q4_k, quantize_q6_k, write_gguf
from device_env import ENGINE_KW
from model_harness import KVHarness
from safetensors.torch import save_file
from shared_paths import LLAMA2_TOKENIZER, STORIES
from tokenizers import Tokenizer

from radixgen.runtime.fast_tokenizer import load_hf_tokenizer, load_tokenizer
from radixgen.runtime.models import ModelConfig, load_model
from radixgen.runtime.models.compressed_tensors import unpack_int32
from radixgen.runtime.models.llama import LlamaForCausalLM
from radixgen.runtime.models.loader import resolve_quantization
from radixgen.runtime.server_args import ServerArgs

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType
GOLDEN = (STORIES / "reference_greedy_from_bos_200.txt").read_text()
IDS = [1, *Tokenizer.from_file(str(STORIES / "tokenizer.json")).encode(GOLDEN, add_special_tokens=False).ids[:127]]
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
TEXTS = [
    GOLDEN[:300],
    "Once upon a time, there was a little girl named Lily. She loved to play outside!",
    "Tom's dog: 123 + 4,567 = ?\nNew line\tand tab.",
    "ünïcödé, 数学 and emojis 😀🤖",
]


def logits(model: LlamaForCausalLM, ids: list[int] = IDS) -> torch.Tensor:
    """Engine logits of one teacher-forced extend: float32 ``[len(ids), vocab]``."""
    h = KVHarness(model, num_slots=len(ids) + 8)
    return h.extend([h.new_request()], [ids])


def compare(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(max-abs logit error, mean KL(ref || got))."""
    p, q = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    return (got - ref).abs().max().item(), (p.exp() * (p - q)).sum(-1).mean().item()


def float_weights(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    return {name: view.detach().clone().numpy() for name, view in model.hf_weight_views().items()}


def model_holding(config: ModelConfig, weights: dict[str, np.ndarray]) -> LlamaForCausalLM:
    """A float model of ``config`` with exactly ``weights`` (Hugging Face names)."""
    model = load_model(config, load_format="dummy", process_weights=False)
    views = model.hf_weight_views()
    assert set(views) == set(weights)
    for name, value in weights.items():
        views[name].copy_(torch.from_numpy(value))
    return model


@pytest.fixture(scope="module")
def stories() -> tuple[ModelConfig, dict[str, np.ndarray], torch.Tensor]:
    config = ModelConfig.from_pretrained(str(STORIES))
    model = load_model(config, process_weights=False)
    return config, float_weights(model), logits(model)


def random_config(tmp: Path, family: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A random Llama / Qwen2 / Qwen3 (hidden 256, GQA 2 KV heads, rows that K-quant blocks divide) with random
    biases and norm weights, so a misplaced bias or norm shows in the logits."""
    heads, head_dim = (8, 64) if family == "qwen3" else (4, 64)  # Qwen3: q width 512 != hidden
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family]
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps({
        "architectures": [arch], "model_type": family, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": 2, "head_dim": head_dim,
        "vocab_size": 1000, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "initializer_range": 0.05, "bos_token_id": 1, "eos_token_id": 2,
    }))
    config = ModelConfig.from_pretrained(str(tmp))
    model = load_model(config, load_format="dummy", seed=7, process_weights=False)
    gen = torch.Generator().manual_seed(1)
    for name, view in model.hf_weight_views().items():
        if name.endswith(".bias"):
            view.copy_(torch.randn(view.shape, generator=gen) * 0.1)
        elif name.endswith("norm.weight"):
            view.copy_(1 + torch.randn(view.shape, generator=gen) * 0.1)
    return config, float_weights(model)


# file type -> (type of 2-D tensors, file type, layout, max-abs bound, KL bound) vs float32 stories260K (whose
# logits span about 25); measured on this machine: F32 0 / 0, F16 1.1e-2 / 2.8e-7 (fp16 rounding of the
# weights), Q8_0 0.29 / 2.2e-4, Q4_0 8.7 / 6.8e-2 (stories260K is 64 wide: 4 bits hurt it far more than real models)
STORIES_GGUF = {
    "F32": (Q.F32, FT.ALL_F32, None, 1e-5, 1e-9),
    "F16": (Q.F16, FT.MOSTLY_F16, None, 0.03, 1e-6),
    "Q8_0": (Q.Q8_0, FT.MOSTLY_Q8_0, "int8wo", 0.6, 5e-4),
    "Q4_0": (Q.Q4_0, FT.MOSTLY_Q4_0, "int4wo-32", 15.0, 0.15),
}


@pytest.mark.parametrize("kind", list(STORIES_GGUF))
def test_gguf_stories_matches_safetensors(kind: str, stories, tmp_path, caplog) -> None:
    config, weights, ref = stories
    qtype, file_type, layout, max_abs, max_kl = STORIES_GGUF[kind]
    path = tmp_path / f"stories-{kind}.gguf"
    held = write_gguf(path, config, weights, "llama", lambda name, w: qtype, file_type, STORIES / "tokenizer.model")
    loaded = ModelConfig.from_pretrained(str(path))
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "vocab_size", "context_len", "tie_word_embeddings",
                  "rope_theta", "bos_token_id", "attention_bias", "architecture"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert loaded.checkpoint_format == "gguf" and loaded.checkpoint_weight_format == f"GGUF {kind}"
    assert (loaded.checkpoint_quantization and loaded.checkpoint_quantization.name) == layout
    got = logits(load_model(loaded, process_weights=False))
    assert compare(logits(model_holding(config, held)), got)[0] <= 1e-5  # the stored values, q/k un-permuted
    err, kl = compare(ref, got)
    print(f"GGUF {kind}: max-abs {err:.2e} KL {kl:.2e}")
    assert err <= max_abs and kl <= max_kl, (kind, err, kl)
    # the runner's choice: the mapped layout (logged), unless --quantization says otherwise
    with caplog.at_level(logging.INFO, logger="radixgen.runtime.models.loader"):
        quant = resolve_quantization(loaded, None)
    expected_log = (f"GGUF {kind} tensors mapped onto {layout}" if layout
                    else f"GGUF {kind} tensors dequantized to float32 (no matching layout)")
    assert expected_log in caplog.text
    if quant is not None:
        requantized = load_model(loaded, quantization=quant)
        assert requantized.weight_report()["formats"][quant.name] == 4 * config.num_hidden_layers
        print(f"GGUF {kind} re-quantized onto {quant.name}: max-abs {compare(ref, logits(requantized))[0]:.2e}")


# family -> (qtype of each 2-D tensor, file type, layout, name, bounds vs float (max-abs, KL)); measured:
# llama Q4_K_M 1.06 / 2.0e-2 (the test's min/max K-quant writer, not llama.cpp's search), qwen2 F16 2.6e-3 /
# 1.7e-7, qwen3 Q6_K 0.29 / 2.0e-3
RANDOM_GGUF = {
    "llama": (lambda name, w: Q.Q6_K if ("v_proj" in name or "down_proj" in name or "lm_head" in name) else Q.Q4_K,
              FT.MOSTLY_Q4_K_M, "int4wo-32", "Q4_K_M", (2.0, 0.05)),
    "qwen2": (lambda name, w: Q.F16, FT.MOSTLY_F16, None, "F16", (0.01, 1e-6)),
    "qwen3": (lambda name, w: Q.Q6_K, FT.MOSTLY_Q6_K, "int8wo", "Q6_K", (0.6, 5e-3)),
}


@pytest.mark.parametrize("family", list(RANDOM_GGUF))
def test_gguf_random_families(family: str, tmp_path) -> None:
    """Llama Q4_K_M (Q4_K with Q6_K for v/down/output, GQA so the k permutation is undone per KV head), Qwen2 F16
    (q/k/v biases, no permutation) and Qwen3 Q6_K (q/k norms, head_dim from attention.key_length)."""
    qtype_of, file_type, layout, name, (max_abs, max_kl) = RANDOM_GGUF[family]
    config, weights = random_config(tmp_path / "hf", family)
    held = write_gguf(tmp_path / "m.gguf", config, weights, family, qtype_of, file_type)
    loaded = ModelConfig.from_pretrained(str(tmp_path / "m.gguf"))
    assert (loaded.architecture, loaded.head_dim, loaded.attention_bias, loaded.qk_norm, loaded.vocab_size) == (
        config.architecture, config.head_dim, config.attention_bias, config.qk_norm, config.vocab_size)
    assert loaded.checkpoint_weight_format == f"GGUF {name}"
    assert (loaded.checkpoint_quantization and loaded.checkpoint_quantization.name) == layout
    ids = torch.randint(3, 1000, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    got = logits(load_model(loaded, process_weights=False), ids)
    assert compare(logits(model_holding(config, held), ids), got)[0] <= 1e-4
    err, kl = compare(logits(model_holding(config, weights), ids), got)
    print(f"{family} GGUF {name}: max-abs {err:.2e} KL {kl:.2e}")
    assert err <= max_abs and kl <= max_kl, (family, err, kl)


def test_k_quant_writers_match_ggml_layout() -> None:
    """The test's Q4_K / Q6_K writers round-trip through gguf's dequantizers (a wrong byte layout would not)."""
    w = torch.randn(16, 512, generator=torch.Generator().manual_seed(0)).numpy()
    for quantize, qtype, bound in ((quantize_q4_k, Q.Q4_K, 0.12), (quantize_q6_k, Q.Q6_K, 0.03)):
        back = gguf.dequantize(quantize(w), qtype).reshape(w.shape)
        rel = float(np.sqrt(((back - w) ** 2).mean() / (w**2).mean()))
        assert rel < bound, (qtype.name, rel)


def test_gguf_tokenizer_and_engine(stories, tmp_path) -> None:
    """Tokenizer and chat template from the metadata (stories260K's sentencepiece vocabulary), then the golden
    greedy text from an Engine started on the GGUF file alone."""
    from radixgen.runtime import Engine

    config, weights, _ = stories
    path = tmp_path / "stories.gguf"
    write_gguf(path, config, weights, "llama", lambda n, w: Q.F32, FT.ALL_F32, STORIES / "tokenizer.model",
               CHAT_TEMPLATE)
    hf = load_hf_tokenizer(str(STORIES))
    for tok in (load_hf_tokenizer(str(path)), load_tokenizer(str(tmp_path))):  # the file, or its directory
        assert tok.chat_template == CHAT_TEMPLATE
        assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
        for text in TEXTS:
            assert tok.encode(text) == hf.encode(text), text
            assert tok.decode(tok.encode(text), skip_special_tokens=True) == hf.decode(hf.encode(text),
                                                                                      skip_special_tokens=True)
    engine = Engine(str(path), max_total_tokens=1024, **ENGINE_KW)
    try:
        out = engine.generate(input_ids=[1], sampling_params={"temperature": 0, "max_new_tokens": 200,
                                                               "ignore_eos": True})
        assert out["text"] == GOLDEN
        info = engine.get_server_info()
        assert info["checkpoint_weight_format"] == "GGUF F32" and info["weight_quantization"] is None
    finally:
        engine.shutdown()


def test_gguf_tokenizer_llama2_32k(tmp_path) -> None:
    """The 32k Llama 2 sentencepiece vocabulary written as GGUF metadata encodes like its tokenizer.json. (Runs of
    leading spaces are outside this check: transformers' GGUF converter builds BPE merges from the scores and
    splits "  x" as "▁" "▁x" where the Hugging Face tokenizer gives "▁▁" "x" and sentencepiece "▁▁" "▁x".)"""
    w = gguf.GGUFWriter(str(tmp_path / "llama2-tok.gguf"), "llama")
    for add, value in ((w.add_block_count, 1), (w.add_context_length, 4096), (w.add_embedding_length, 64),
                       (w.add_feed_forward_length, 128), (w.add_head_count, 1)):
        add(value)
    from checkpoint_writers import add_sentencepiece_vocab

    add_sentencepiece_vocab(w, LLAMA2_TOKENIZER / "tokenizer.model", None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok, hf = load_hf_tokenizer(str(tmp_path / "llama2-tok.gguf")), load_hf_tokenizer(str(LLAMA2_TOKENIZER))
    assert len(tok) == len(hf) == 32000
    for text in [*TEXTS, "def f(x):\n\treturn x ** 2 # square", "<s>literal special</s> tokens"]:
        assert tok.encode(text) == hf.encode(text), text


def test_unpack_int32_inverts_the_spec_packer() -> None:
    gen = torch.Generator().manual_seed(0)
    for bits in (2, 3, 4, 8):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1)
        values = torch.randint(lo, hi, (13, 37), generator=gen, dtype=torch.int8)
        assert torch.equal(unpack_int32(ct_pack_int32(values, bits), bits, (13, 37)), values)
        assert torch.equal(unpack_int32(ct_pack_int32(values, bits, 0), bits, (13, 37), 0), values)


def ignored(module: str, ignore: list[str]) -> bool:
    """compressed-tensors' ``ignore`` entries: an exact module name or ``re:<regex>`` matched from the start."""
    return any(re.match(t[3:], module) if t.startswith("re:") else t == module for t in ignore)


# case -> (model, num_bits, group_size, symmetric, format, ignore, activation ordering, scale dtype, layout,
#          bounds vs float (max-abs, KL)); measured: w8a16-int 0.33 / 2.4e-4, w8a16-packed 0.34 / 2.4e-4,
#          w4a16-g32 (down_proj left float) 5.7 / 5.2e-2, w4a16-g128-asym-actorder 1.16 / 3.0e-2
CT_CASES = {
    "w8a16-int": ("stories", 8, None, True, "int-quantized", ["lm_head"], False, torch.float32, "int8wo",
                  (0.6, 5e-4)),
    "w8a16-packed": ("stories", 8, None, True, "pack-quantized", ["lm_head"], False, torch.float16, "int8wo",
                     (0.6, 5e-4)),
    "w8a8-int": ("stories", 8, None, True, "int-quantized", ["lm_head"], False, torch.float32, "w8a8_int8",
                 (0.6, 5e-4)),
    "w4a16-g32": ("stories", 4, 32, True, "pack-quantized", ["lm_head", "re:.*down_proj$"], False, torch.float32,
                  "int4wo-32", (10.0, 0.12)),
    "w4a16-g128-asym-actorder": ("random", 4, 128, False, "pack-quantized", ["lm_head"], True, torch.bfloat16,
                                 "int4wo-128", (2.0, 0.06)),
}


@pytest.mark.parametrize("case", list(CT_CASES))
def test_compressed_tensors_round_trip(case: str, stories, tmp_path) -> None:
    kind, bits, group, symmetric, fmt, ignore, actorder, scale_dtype, layout, (max_abs, max_kl) = CT_CASES[case]
    out = tmp_path / "ct"
    if kind == "stories":
        config, weights, _ = stories
        out.mkdir()
        raw = json.loads((STORIES / "config.json").read_text())
    else:
        config, weights = random_config(out, "llama")
        raw = json.loads((out / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    held = dict(weights)
    gen = torch.Generator().manual_seed(0)
    for name, value in weights.items():
        module = name.removesuffix(".weight")
        w = torch.from_numpy(value)
        if not name.endswith("_proj.weight") or ignored(module, ignore):
            tensors[name] = w
            continue
        perm = torch.randperm(w.shape[1], generator=gen) if actorder else torch.arange(w.shape[1])
        q_perm, scale, zp = ct_quantize(w[:, perm], bits, group, symmetric)
        q = torch.empty_like(q_perm)
        q[:, perm] = q_perm
        g_idx = torch.empty(w.shape[1], dtype=torch.int32)
        g_idx[perm] = torch.arange(w.shape[1], dtype=torch.int32) // (group or w.shape[1])
        scale = scale.to(scale_dtype)
        zero = torch.zeros_like(scale.float()) if zp is None else zp.float()
        cols = g_idx.long() if group else torch.zeros(w.shape[1], dtype=torch.long)
        held[name] = ((q.float() - zero[:, cols]) * scale.float()[:, cols]).numpy()
        if fmt == "pack-quantized":
            tensors[f"{module}.weight_packed"] = ct_pack_int32(q, bits)
            tensors[f"{module}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int64)
        else:
            tensors[f"{module}.weight"] = q
            tensors[f"{module}.weight_zero_point"] = torch.zeros(w.shape[0], 1, dtype=torch.int8)
        tensors[f"{module}.weight_scale"] = scale
        if zp is not None:
            tensors[f"{module}.weight_zero_point"] = ct_pack_int32(zp, bits, packed_dim=0)
        if actorder:
            tensors[f"{module}.weight_g_idx"] = g_idx
    # W8A8: int8 activations quantized per token at run time (llm-compressor's W8A8 int8 preset)
    activations = ({"num_bits": 8, "type": "int", "symmetric": True, "dynamic": True, "strategy": "token"}
                   if case.startswith("w8a8") else None)  # fmt: skip
    weights_scheme = {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False,
                      "strategy": "group" if group else "channel", "group_size": group,
                      "actorder": "group" if actorder else None, "observer": "minmax"}
    raw["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights_scheme,
                                      "input_activations": activations, "output_activations": None}},
        "ignore": ignore, "kv_cache_scheme": None,
    }
    (out / "config.json").write_text(json.dumps(raw))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))

    loaded = ModelConfig.from_pretrained(str(out))
    assert loaded.checkpoint_format == "compressed-tensors"
    assert (loaded.checkpoint_quantization and loaded.checkpoint_quantization.name) == layout
    acts = 8 if activations else 16
    assert loaded.checkpoint_weight_format is not None and f"W{bits}A{acts}" in loaded.checkpoint_weight_format
    ids = IDS if kind == "stories" else torch.randint(3, 1000, (48,), generator=gen).tolist()
    got = logits(load_model(loaded, process_weights=False), ids)
    assert compare(logits(model_holding(config, held), ids), got)[0] <= 1e-5
    err, kl = compare(logits(model_holding(config, weights), ids), got)
    print(f"compressed-tensors {case}: max-abs {err:.2e} KL {kl:.2e}")
    assert err <= max_abs and kl <= max_kl, (case, err, kl)


def test_bad_checkpoints_name_model_path(stories, tmp_path) -> None:
    config, weights, _ = stories
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match=r"model_path .*junk\.gguf is not a readable GGUF file"):
        ModelConfig.from_pretrained(str(junk))
    good = tmp_path / "good" / "m.gguf"
    good.parent.mkdir()
    write_gguf(good, config, weights, "llama", lambda n, w: Q.F32, FT.ALL_F32)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="model_path .*cut.gguf"):
        load_model(ModelConfig.from_pretrained(str(cut)), process_weights=False)
    shutil.copy(good, good.parent / "other.gguf")
    for make in (ModelConfig.from_pretrained, lambda p: ServerArgs(model_path=p)):
        with pytest.raises(ValueError, match="model_path .*holds 2 .gguf files"):
            make(str(good.parent))
    with pytest.raises(ValueError, match="model_path: .* is not a directory or a .gguf file"):
        ServerArgs(model_path=str(tmp_path / "cut.bin"))
    assert ServerArgs(model_path=str(good)).model_path == str(good)
    partial = {k: v for k, v in weights.items() if "layers.1.mlp.down_proj" not in k}
    write_gguf(tmp_path / "partial.gguf", config, partial, "llama", lambda n, w: Q.F32, FT.ALL_F32)
    with pytest.raises(ValueError, match=r"model_path .*partial.gguf.*missing from checkpoint: .*layers\.1\.mlp"):
        load_model(ModelConfig.from_pretrained(str(tmp_path / "partial.gguf")), process_weights=False)
    other = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(other), "gpt2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="model_path .*GGUF architecture 'gpt2' is not supported"):
        ModelConfig.from_pretrained(str(other))
    ct = tmp_path / "ct"
    ct.mkdir()
    raw = json.loads((STORIES / "config.json").read_text())
    for qc, message in (
        ({"quant_method": "awq", "bits": 4}, "quant_method 'awq' is not supported"),
        ({"quant_method": "compressed-tensors", "format": "marlin-24",
          "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4}}}}, "format 'marlin-24'"),
        ({"quant_method": "compressed-tensors", "format": "pack-quantized",
          "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float"}}}},
         "only int weights"),
    ):
        (ct / "config.json").write_text(json.dumps({**raw, "quantization_config": qc}))
        with pytest.raises(ValueError, match=f"model_path .*quantization_config .*{message}"):
            ModelConfig.from_pretrained(str(ct))
    # a scale that does not fit its weight: the module is named
    q, scale, _ = ct_quantize(torch.from_numpy(weights["model.layers.0.self_attn.o_proj.weight"]), 8, None, True)
    tensors = {k: torch.from_numpy(v) for k, v in weights.items() if k != "model.layers.0.self_attn.o_proj.weight"}
    tensors.update({"model.layers.0.self_attn.o_proj.weight": q,
                    "model.layers.0.self_attn.o_proj.weight_scale": scale[:10]})
    save_file(tensors, str(ct / "model.safetensors"))
    qc = {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {
        "g": {"targets": ["re:.*o_proj$"], "weights": {"num_bits": 8, "strategy": "channel"}}}}
    (ct / "config.json").write_text(json.dumps({**raw, "quantization_config": qc}))
    with pytest.raises(ValueError, match=r"model_path .*quantized module 'model\.layers\.0\.self_attn\.o_proj'"):
        load_model(ModelConfig.from_pretrained(str(ct)), process_weights=False)
