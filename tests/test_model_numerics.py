"""Numerics of radixgen's Llama-family models against Hugging Face transformers (the reference).

Tiny random models of every supported family are built with transformers, saved as safetensors, loaded with
radixgen's ModelConfig/load_model, and run through ForwardBatches over the KV pool (prefill, chunked prefill,
greedy decode, batched extend + decode); logits must match transformers' within 1e-4. Also: the real
stories260K checkpoint (also in bfloat16 on RADIXGEN_TEST_DEVICE, with that device's attention backend, against
transformers), dummy weights for bench-llama-40m, and the loader's error messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from device_env import TEST_DEVICE
from model_harness import KVHarness, hf_logits
from safetensors.torch import load_file, save_file
from shared_paths import BENCH_40M, STORIES
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from radixgen.runtime.attention import create_attention_backend
from radixgen.runtime.models import ModelConfig, load_model

ATOL = 1e-4
DECODE_STEPS = 20

BASE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)
CASES: dict[str, tuple[type, dict]] = {
    "llama_gqa_tied": (LlamaConfig, dict(tie_word_embeddings=True)),
    "llama_mha_untied_bias": (
        LlamaConfig,
        dict(num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    ),
    "llama_rope_linear": (LlamaConfig, dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama_rope_llama3": (
        LlamaConfig,
        dict(
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "mistral_sliding_window": (MistralConfig, dict(sliding_window=48)),
    "qwen2_qkv_bias": (Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3_qk_norm": (Qwen3Config, dict(head_dim=32, num_key_value_heads=1)),
}


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny models: one intra-op thread is fastest, and immune to oversubscription on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build_hf(config_cls: type, overrides: dict) -> torch.nn.Module:
    """A transformers model with all weights randomised (norms around 1, biases nonzero): a strong test."""
    torch.manual_seed(0)
    hf_config = config_cls(**{**BASE, **overrides})
    hf = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    return hf


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(name, transformers model, our model) for one family variant, saved and reloaded via safetensors."""
    name = request.param
    hf = _build_hf(*CASES[name])
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path)
    ours = load_model(ModelConfig.from_pretrained(str(path)))
    return name, hf, ours


def _prompt(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_prefill_and_greedy_decode_match_transformers(case) -> None:
    _, hf, ours = case
    ids = _prompt(12, ours.config.vocab_size, seed=1)
    harness = KVHarness(ours)
    row = harness.new_request()
    logits = harness.extend([row], [ids])  # [12, vocab]
    torch.testing.assert_close(logits, hf_logits(hf, ids), atol=ATOL, rtol=0)
    assert logits.abs().max() > 0.5, "test signal too weak to catch errors"
    seq = list(ids)
    for _ in range(DECODE_STEPS):
        seq.append(int(logits[-1].argmax()))
        logits = harness.decode([row], [seq[-1]])  # [1, vocab]
        torch.testing.assert_close(logits[0], hf_logits(hf, seq)[-1], atol=ATOL, rtol=0)


def test_chunked_prefill_over_cached_prefix_matches_transformers(case) -> None:
    _, hf, ours = case
    ids = _prompt(12, ours.config.vocab_size, seed=2)
    harness = KVHarness(ours)
    row = harness.new_request()
    first = harness.extend([row], [ids[:7]])  # [7, vocab]
    second = harness.extend([row], [ids[7:]])  # [5, vocab]
    torch.testing.assert_close(torch.cat([first, second]), hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_batched_extend_and_decode_equal_each_alone(case) -> None:
    _, _, ours = case
    prompts = [_prompt(12, ours.config.vocab_size, seed=3), _prompt(7, ours.config.vocab_size, seed=4)]
    steps = 8
    alone: list[list[torch.Tensor]] = []
    for prompt in prompts:
        h = KVHarness(ours, seed=5)
        row = h.new_request()
        out = [h.extend([row], [prompt])]
        for _ in range(steps):
            out.append(h.decode([row], [int(out[-1][-1].argmax())]))
        alone.append(out)

    h = KVHarness(ours, seed=6)
    rows = [h.new_request(), h.new_request()]
    logits = h.extend(rows, prompts)  # [12 + 7, vocab]
    torch.testing.assert_close(logits[:12], alone[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[12:], alone[1][0], atol=1e-5, rtol=0)
    last = torch.stack([logits[11], logits[18]])  # [2, vocab]
    for step in range(1, steps + 1):
        last = h.decode(rows, last.argmax(dim=-1).tolist())  # [2, vocab]
        torch.testing.assert_close(last[0], alone[0][step][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(last[1], alone[1][step][0], atol=1e-5, rtol=0)


def test_config_and_rope_match_transformers(case) -> None:
    name, hf, ours = case
    cfg = ours.config
    assert torch.equal(ours.rotary_emb.inv_freq, hf.model.rotary_emb.inv_freq.cpu())
    hf_head_dim = getattr(hf.config, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert cfg.head_dim == hf_head_dim
    if name == "mistral_sliding_window":
        assert cfg.sliding_window == 48 and cfg.context_len == 48 and cfg.max_position_embeddings == 128
    else:
        assert cfg.context_len == 128
    if name == "qwen2_qkv_bias":
        assert cfg.attention_bias and not cfg.o_proj_bias and cfg.tie_word_embeddings
    if name == "qwen3_qk_norm":
        assert cfg.qk_norm and cfg.head_dim == 32
    if name.startswith("llama_rope"):
        assert cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == name.rsplit("_", 1)[1]
    assert not any(p.requires_grad for p in ours.parameters()) and not ours.training


def test_sharded_checkpoint_loads_like_single_file(tmp_path: Path) -> None:
    hf = _build_hf(*CASES["qwen2_qkv_bias"])
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a = load_model(ModelConfig.from_pretrained(str(tmp_path / "single")))
    b = load_model(ModelConfig.from_pretrained(str(tmp_path / "sharded")))
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


# ---- the real model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories():
    if not STORIES.is_dir():
        pytest.skip(f"{STORIES} not present")
    hf = AutoModelForCausalLM.from_pretrained(STORIES, attn_implementation="eager", dtype=torch.float32)
    return hf.eval(), load_model(ModelConfig.from_pretrained(str(STORIES)))


def test_stories260k_config(stories) -> None:
    cfg = stories[1].config
    assert cfg.architecture == "LlamaForCausalLM" and cfg.tie_word_embeddings
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (8, 4, 8)
    assert cfg.eos_token_ids == (2, 1) and cfg.bos_token_id == 1 and cfg.context_len == 512


def test_stories260k_logits_match_transformers(stories) -> None:
    hf, ours = stories
    ids = [1, 403, 407, 261, 263, 278, 266, 392, 263, 300, 349, 360, 301]
    harness = KVHarness(ours)
    row = harness.new_request()
    torch.testing.assert_close(harness.extend([row], [ids]), hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_stories260k_greedy_reproduces_reference_text(stories) -> None:
    from transformers import AutoTokenizer

    _, ours = stories
    reference = (STORIES / "reference_greedy_from_bos_200.txt").read_text()
    harness = KVHarness(ours, num_slots=256)
    row = harness.new_request()
    logits = harness.extend([row], [[1]])
    out: list[int] = []
    for _ in range(200):
        out.append(int(logits[-1].argmax()))
        logits = harness.decode([row], [out[-1]])
    text = AutoTokenizer.from_pretrained(STORIES).decode(out)
    assert text.strip() == reference.strip()


def test_bfloat16_load_runs_close_to_float32(stories) -> None:
    _, ours32 = stories
    ours16 = load_model(ours32.config, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours16.parameters())
    ids = [1, 403, 407, 261, 263, 278]
    h32, h16 = KVHarness(ours32), KVHarness(ours16)
    ref = h32.extend([h32.new_request()], [ids])
    got = h16.extend([h16.new_request()], [ids])  # float32 logits of a bfloat16 model
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.5, rtol=0.05)


def test_bfloat16_on_test_device_matches_transformers(stories, record_property: Callable[[str, object], None]) -> None:
    """bfloat16 stories260K on RADIXGEN_TEST_DEVICE with that device's attention backend (triton on CUDA, torch
    on CPU): a 48-token prefill and 16 decode steps over the golden text, against transformers' float32 logits
    on the same device. Its error may be at most 3x transformers' own bfloat16 error (measured on CPU: 0.57 vs
    0.29, logits up to 22), and the greedy token must agree at (nearly) every position."""
    from transformers import AutoTokenizer

    golden = (STORIES / "reference_greedy_from_bos_200.txt").read_text()
    ids = [1, *AutoTokenizer.from_pretrained(STORIES).encode(golden, add_special_tokens=False)[:63]]
    refs = {
        dtype: AutoModelForCausalLM.from_pretrained(STORIES, attn_implementation="eager", dtype=dtype)
        .to(TEST_DEVICE)
        .eval()
        for dtype in (torch.float32, torch.bfloat16)
    }
    ours = load_model(stories[1].config, dtype=torch.bfloat16, device=TEST_DEVICE)
    backend = create_attention_backend("triton" if TEST_DEVICE.startswith("cuda") else "torch")
    harness = KVHarness(ours, backend=backend)
    row = harness.new_request()
    got = [harness.extend([row], [ids[:48]])]  # [48, vocab]
    got += [harness.decode([row], [t]) for t in ids[48:]]  # 16 x [1, vocab]
    logits = torch.cat(got)  # [64, vocab] float32
    ref32, ref16 = (hf_logits(refs[d], ids) for d in (torch.float32, torch.bfloat16))
    ours_err = float((logits - ref32).abs().max())
    hf_err = float((ref16 - ref32).abs().max())
    top1 = float((logits.argmax(-1) == ref32.argmax(-1)).float().mean())
    for name, value in (("device", TEST_DEVICE), ("bf16_max_abs_err", ours_err), ("hf_bf16_max_abs_err", hf_err),
                        ("logit_max_abs", float(ref32.abs().max())), ("top1_agreement", top1)):  # fmt: skip
        record_property(name, value)
    assert logits.device.type == torch.device(TEST_DEVICE).type
    assert 0 < ours_err <= 3 * hf_err, (ours_err, hf_err)
    assert top1 >= 0.95


# ---- dummy weights -----------------------------------------------------------------------------------


def test_dummy_load_of_bench_model_is_deterministic() -> None:
    if not BENCH_40M.is_dir():
        pytest.skip(f"{BENCH_40M} not present")
    cfg = ModelConfig.from_pretrained(str(BENCH_40M))
    assert cfg.vocab_size == 32000 and cfg.num_hidden_layers == 8 and cfg.tie_word_embeddings
    with pytest.raises(ValueError, match="bench-llama-40m"):
        load_model(cfg)  # no weights file
    a, b, c = (load_model(cfg, load_format="dummy", seed=s) for s in (0, 0, 1))
    for (name, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if name.endswith("norm.weight"):
            assert torch.all(pa == 1.0), name
        else:
            assert not torch.equal(pa, pc), name
    emb = a.model.embed_tokens.weight
    assert abs(float(emb.std()) - cfg.initializer_range) < 1e-3 and abs(float(emb.mean())) < 1e-3


# ---- errors --------------------------------------------------------------------------------------------


@pytest.fixture
def saved_llama(tmp_path: Path) -> Path:
    hf = _build_hf(*CASES["llama_gqa_tied"])
    hf.save_pretrained(tmp_path)
    return tmp_path


def test_missing_model_dir_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="no-such-model"):
        ModelConfig.from_pretrained(str(missing))
    with pytest.raises(ValueError, match="config.json"):
        ModelConfig.from_pretrained(str(tmp_path))


def test_unsupported_architecture_names_it_and_lists_supported(saved_llama: Path) -> None:
    raw = json.loads((saved_llama / "config.json").read_text())
    raw["architectures"], raw["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (saved_llama / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as info:
        ModelConfig.from_pretrained(str(saved_llama))
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert arch in str(info.value)


def test_unsupported_rope_scaling_is_rejected(saved_llama: Path) -> None:
    raw = json.loads((saved_llama / "config.json").read_text())
    raw.pop("rope_parameters", None)
    raw["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (saved_llama / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="rope_scaling"):
        ModelConfig.from_pretrained(str(saved_llama))


def _rewrite_weights(path: Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_unknown_tensor_is_named(saved_llama: Path) -> None:
    extra = "model.layers.0.mlp.extra_proj.weight"
    _rewrite_weights(saved_llama, lambda t: t.update({extra: torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.extra_proj\.weight"):
        load_model(ModelConfig.from_pretrained(str(saved_llama)))


def test_missing_tensor_is_named(saved_llama: Path) -> None:
    _rewrite_weights(saved_llama, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        load_model(ModelConfig.from_pretrained(str(saved_llama)))


def test_shape_mismatch_is_named(saved_llama: Path) -> None:
    _rewrite_weights(saved_llama, lambda t: t.update({"model.norm.weight": torch.ones(3)}))
    with pytest.raises(ValueError, match=r"model\.norm\.weight"):
        load_model(ModelConfig.from_pretrained(str(saved_llama)))


def test_inv_freq_buffer_in_checkpoint_is_ignored(saved_llama: Path) -> None:
    _rewrite_weights(saved_llama, lambda t: t.update({"model.rotary_emb.inv_freq": torch.ones(8)}))
    load_model(ModelConfig.from_pretrained(str(saved_llama)))


def test_bad_load_format_and_dtype_are_rejected(saved_llama: Path) -> None:
    cfg = ModelConfig.from_pretrained(str(saved_llama))
    with pytest.raises(ValueError, match="load_format"):
        load_model(cfg, load_format="gguf")
    with pytest.raises(ValueError, match="dtype"):
        load_model(cfg, dtype=torch.int8)
