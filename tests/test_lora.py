"""Multi-LoRA serving (runtime/lora) against Hugging Face transformers + PEFT on stories260K.

Adapters are made by PEFT itself (tests/lora_adapters.py: seeded, non-zero B). A batch mixing three adapters (ranks
4, 8 and 16, one rsLoRA) and the base model, in an order that is not grouped by adapter, gives each request the logits
PEFT gives it alone (1e-4, float32), through prefill and decode, for each target-module set; through the Engine, the
greedy outputs are PEFT's, the radix cache keeps adapters apart, and adapters load and unload at run time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_adapters import ALL, ATTN, MLP, make_adapter, peft_reference, reference_logits
from model_harness import KVHarness
from shared_paths import STORIES

from radixgen.runtime.engine import Engine
from radixgen.runtime.errors import LoRAError
from radixgen.runtime.lora.config import LoRAConfig
from radixgen.runtime.lora.manager import LoRAManager
from radixgen.runtime.models import ModelConfig, load_model

TARGET_SETS = {"qv": ("q_proj", "v_proj"), "attn": ATTN, "mlp": MLP, "all": ALL}
PROMPTS = [[1, 403, 407, 261, 378, 10, 68], [1, 320, 9], [1, 403, 407, 261, 378, 10, 68, 99, 201, 44], [1, 55]]
ORDER = ["b", None, "a", "c"]  # not grouped by adapter: the rows are permuted into slot order


def _adapters(root: Path, targets: tuple[str, ...], seed: int) -> dict[str, Path]:
    return {
        "a": make_adapter(root / "a", targets, r=4, seed=seed),
        "b": make_adapter(root / "b", targets, r=8, seed=seed + 1, use_rslora=True),
        "c": make_adapter(root / "c", targets, r=16, seed=seed + 2, alpha=8.0),
    }


@pytest.fixture(scope="module")
def adapter_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("lora")
    return {name: _adapters(root / name, t, 10 * i) for i, (name, t) in enumerate(TARGET_SETS.items())}


def _harness(adapters: dict[str, Path], num_slots: int = 4, use_triton: bool = False) -> KVHarness:
    cfg = ModelConfig.from_pretrained(str(STORIES))
    model = load_model(cfg, dtype=torch.float32)
    config = LoRAConfig.build(tuple(f"{n}={p}" for n, p in adapters.items()), num_slots, 16, None)
    manager = LoRAManager(config, cfg, torch.float32, torch.device("cpu"))
    manager.use_triton = use_triton
    return KVHarness(model, max_requests=4, lora=manager)


def _check_mixed_batch(harness: KVHarness, ref: torch.nn.Module, decode_steps: int) -> None:
    rows = [harness.new_request() for _ in PROMPTS]
    logits = harness.extend(rows, PROMPTS, ORDER)  # [sum(lens), vocab]
    seqs = [list(p) for p in PROMPTS]
    start = 0
    for seq, name in zip(seqs, ORDER, strict=True):
        got = logits[start : start + len(seq)]
        torch.testing.assert_close(got, reference_logits(ref, name, seq), atol=1e-4, rtol=0, msg=f"prefill {name}")
        seq.append(int(got[-1].argmax()))
        start += len(seq) - 1
    for _ in range(decode_steps):
        logits = harness.decode(rows, [s[-1] for s in seqs], ORDER)  # [4, vocab]
        for i, (seq, name) in enumerate(zip(seqs, ORDER, strict=True)):
            want = reference_logits(ref, name, seq)[-1]
            torch.testing.assert_close(logits[i], want, atol=1e-4, rtol=0, msg=f"decode {name}")
            assert int(logits[i].argmax()) == int(want.argmax())
            seq.append(int(logits[i].argmax()))


@pytest.mark.parametrize("target_set", list(TARGET_SETS))
def test_mixed_batch_matches_peft(adapter_sets: dict[str, dict[str, Path]], target_set: str) -> None:
    adapters = adapter_sets[target_set]
    harness = _harness(adapters)
    _check_mixed_batch(harness, peft_reference(adapters), decode_steps=3)
    assert harness.lora is not None
    harness.lora.check_integrity()


def test_triton_path_matches_peft(adapter_sets: dict[str, dict[str, Path]]) -> None:
    """The CUDA path (radixgen.kernels.lora SGMV kernels, here in the Triton interpreter) inside the model."""
    adapters = adapter_sets["all"]
    _check_mixed_batch(_harness(adapters, use_triton=True), peft_reference(adapters), decode_steps=1)


def test_slots_are_recycled_lru(adapter_sets: dict[str, dict[str, Path]]) -> None:
    """Two slots, three adapters: batches that need the third evict the least recently used one and the logits
    stay PEFT's."""
    adapters = adapter_sets["all"]
    harness = _harness(adapters, num_slots=2)
    manager = harness.lora
    assert manager is not None
    ref = peft_reference(adapters)
    for names in (["a", "b"], ["c", None], ["b", "a"], ["c", "b"]):
        rows = [harness.new_request() for _ in names]
        logits = harness.extend(rows, PROMPTS[:2], names)
        n0 = len(PROMPTS[0])
        torch.testing.assert_close(logits[:n0], reference_logits(ref, names[0], PROMPTS[0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(logits[n0:], reference_logits(ref, names[1], PROMPTS[1]), atol=1e-4, rtol=0)
        manager.check_integrity()
        for row in rows:
            harness.req_pool.free(row)
    with pytest.raises(RuntimeError, match="max-loras-per-batch"):
        manager.prepare(["a", "b", "c"], [1, 1, 1])


# ---------------------------------------------------------------------------------------------------- Engine
@pytest.fixture(scope="module")
def engine(adapter_sets: dict[str, dict[str, Path]]) -> Engine:
    adapters = adapter_sets["all"]
    eng = Engine(str(STORIES), lora_paths=[f"{n}={p}" for n, p in adapters.items()], max_loras_per_batch=2)
    yield eng
    eng.shutdown()


GREEDY = {"max_new_tokens": 8, "temperature": 0.0}


def _greedy_ref(ref: torch.nn.Module, name: str | None, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        seq.append(int(reference_logits(ref, name, seq)[-1].argmax()))
    return seq[len(ids) :]


def test_engine_mixed_batch_greedy_equals_peft(engine: Engine, adapter_sets: dict[str, dict[str, Path]]) -> None:
    """Three adapters and the base model with two slots: the scheduler keeps each batch within two adapters (the
    third waits), and every output is PEFT's greedy output."""
    ref = peft_reference(adapter_sets["all"])
    names = ["a", "b", None, "c", "a"]
    outs = engine.generate(input_ids=[PROMPTS[i % 4] for i in range(5)], sampling_params=GREEDY, lora_path=names)
    for i, (name, out) in enumerate(zip(names, outs, strict=True)):
        assert out["output_ids"] == _greedy_ref(ref, name, PROMPTS[i % 4], 8), name
    engine.scheduler.check_integrity()


def test_cache_keeps_adapters_apart(engine: Engine) -> None:
    prompt = [77, 78, 79, 80, 81, 82, 83, 84]  # no BOS: no prefix shared with the other tests
    first = engine.generate(input_ids=prompt, sampling_params=GREEDY, lora_path="a")
    assert first["meta_info"]["cached_tokens"] == 0
    other = engine.generate(input_ids=prompt, sampling_params=GREEDY, lora_path="b")
    assert other["meta_info"]["cached_tokens"] == 0  # same prompt, other adapter: no shared KV
    base = engine.generate(input_ids=prompt, sampling_params=GREEDY)
    assert base["meta_info"]["cached_tokens"] == 0
    again = engine.generate(input_ids=prompt, sampling_params=GREEDY, lora_path="a")
    assert again["meta_info"]["cached_tokens"] == len(prompt) - 1  # the whole prefix (the last token is recomputed)
    assert again["output_ids"] == first["output_ids"]
    engine.scheduler.check_integrity()


def test_engine_load_unload(engine: Engine, tmp_path: Path) -> None:
    path = make_adapter(tmp_path / "d", ("q_proj", "o_proj"), r=2, seed=99)
    loaded = engine.load_lora_adapter("d", str(path))
    assert set(loaded) == {"a", "b", "c", "d"}
    out = engine.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, lora_path="d")
    assert out["output_ids"] == _greedy_ref(peft_reference({"d": path}), "d", PROMPTS[0], 8)
    with pytest.raises(LoRAError, match="already loaded") as exc:
        engine.load_lora_adapter("d", str(path))
    assert exc.value.param == "lora_name"
    assert "d" not in engine.unload_lora_adapter("d")
    with pytest.raises(LoRAError, match="no LoRA adapter named 'd'") as exc:
        engine.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, lora_path="d")
    assert (exc.value.status, exc.value.param) == (404, "lora_path")
    with pytest.raises(LoRAError) as exc:
        engine.unload_lora_adapter("d")
    assert exc.value.status == 404
    # a reloaded name is a new adapter: nothing cached under the old one is reused
    engine.load_lora_adapter("d", str(make_adapter(tmp_path / "d2", ("v_proj",), r=2, seed=7)))
    out = engine.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, lora_path="d")
    assert out["meta_info"]["cached_tokens"] == 0
    engine.unload_lora_adapter("d")
    engine.scheduler.check_integrity()


def test_unload_waits_for_running_requests(engine: Engine, tmp_path: Path) -> None:
    engine.load_lora_adapter("e", str(make_adapter(tmp_path / "e", ("q_proj",), r=2, seed=5)))
    stream = engine.generate(input_ids=PROMPTS[2], sampling_params={**GREEDY, "max_new_tokens": 20}, lora_path="e",
                             stream=True)
    first = next(stream)
    assert first["meta_info"]["finish_reason"] is None
    manager = engine.model_runner.lora_manager
    assert manager is not None and manager.refs["e"] == 1
    assert "e" not in engine.unload_lora_adapter("e")  # returns once the streamed request has finished
    chunks = list(stream)
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"
    assert len(chunks[-1]["output_ids"]) == 20
    assert "e" not in manager.adapters
    engine.scheduler.check_integrity()


def _write_bad(root: Path, kind: str) -> Path:
    good = make_adapter(root / "good", ("q_proj",), r=4, seed=3)
    path = root / kind
    path.mkdir()
    cfg = (good / "adapter_config.json").read_text()
    tensors = (good / "adapter_model.safetensors").read_bytes()
    if kind == "dora":
        cfg = cfg.replace('"use_dora": false', '"use_dora": true')
    elif kind == "no_weights":
        tensors = b""
    elif kind == "lm_head":
        from safetensors.torch import save_file

        save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64)}, str(path / "w.safetensors"))
        tensors = (path / "w.safetensors").read_bytes()
    elif kind == "bad_json":
        cfg = "{not json"
    (path / "adapter_config.json").write_text(cfg)
    if kind != "no_weights":
        (path / "adapter_model.safetensors").write_bytes(tensors)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("dora", "use_dora"),
        ("no_weights", "no adapter_model.safetensors"),
        ("lm_head", "is not a decoder-layer LoRA weight"),
        ("bad_json", "cannot read"),
    ],
)
def test_bad_adapter_directories(engine: Engine, tmp_path: Path, kind: str, message: str) -> None:
    path = _write_bad(tmp_path, kind)
    with pytest.raises(LoRAError, match=message) as exc:
        engine.load_lora_adapter("bad", str(path))
    assert exc.value.param == "lora_path" and exc.value.status == 400
    with pytest.raises(LoRAError, match="not a directory"):
        engine.load_lora_adapter("bad", str(tmp_path / "missing"))
    with pytest.raises(LoRAError, match="has no adapter_config.json"):
        engine.load_lora_adapter("bad", str(tmp_path))
    assert "bad" not in engine.model_runner.lora_manager.adapters  # type: ignore[union-attr]


def test_rank_and_target_limits(tmp_path: Path) -> None:
    big = make_adapter(tmp_path / "big", ("q_proj",), r=32, seed=1)
    mlp = make_adapter(tmp_path / "mlp", ("down_proj",), r=4, seed=2)
    eng = Engine(str(STORIES), enable_lora=True, max_lora_rank=16, lora_target_modules=["q_proj", "v_proj"])
    try:
        with pytest.raises(LoRAError, match="rank 32 > --max-lora-rank 16"):
            eng.load_lora_adapter("big", str(big))
        with pytest.raises(LoRAError, match="lora-target-modules"):
            eng.load_lora_adapter("mlp", str(mlp))
        with pytest.raises(LoRAError, match="no LoRA adapter named 'x'") as exc:
            eng.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, lora_path="x")
        assert exc.value.status == 404
    finally:
        eng.shutdown()
    # the buffers' rank defaults to the largest start-up adapter's
    assert LoRAConfig.build((f"big={big}", f"m={mlp}"), 4, None, None).max_lora_rank == 32


def test_server_args_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lora_paths"):
        Engine(str(STORIES), lora_paths=[f"x={tmp_path / 'missing'}"])
    with pytest.raises(ValueError, match="max_loras_per_batch"):
        Engine(str(STORIES), enable_lora=True, max_loras_per_batch=0)
    with pytest.raises(ValueError, match="lora_target_modules"):
        Engine(str(STORIES), enable_lora=True, lora_target_modules=["embed_tokens"])
    with pytest.raises(ValueError, match="speculative"):
        Engine(str(STORIES), enable_lora=True, speculative_algorithm="ngram")
    with pytest.raises(ValueError, match="max_lora_rank: needs --enable-lora"):
        Engine(str(STORIES), max_lora_rank=8)
    eng = Engine(str(STORIES))
    try:
        with pytest.raises(ValueError, match="serves no LoRA adapters"):
            eng.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, lora_path="a")
    finally:
        eng.shutdown()


@pytest.mark.parametrize(("dtype", "quantization"), [(torch.bfloat16, None), (torch.float32, "int8wo")])
def test_lora_over_bf16_and_int8_weights(
    adapter_sets: dict[str, dict[str, Path]], dtype: torch.dtype, quantization: str | None
) -> None:
    """The delta is added (in float32) on top of bfloat16 or int8 weight-only projections: every row stays within the
    base model's own quantization error of PEFT's float32 logits, far below the adapters' effect (up to ~20)."""
    from radixgen.runtime.models.quant_config import QuantizationConfig

    adapters = adapter_sets["all"]
    cfg = ModelConfig.from_pretrained(str(STORIES))
    quant = None if quantization is None else QuantizationConfig.parse(quantization, False)
    model = load_model(cfg, dtype=dtype, quantization=quant)
    config = LoRAConfig.build(tuple(f"{n}={p}" for n, p in adapters.items()), 4, 16, None)
    harness = KVHarness(model, max_requests=4, lora=LoRAManager(config, cfg, dtype, torch.device("cpu")))
    ref = peft_reference(adapters)
    logits = harness.extend([harness.new_request() for _ in PROMPTS], PROMPTS, ORDER)
    start = 0
    for prompt, name in zip(PROMPTS, ORDER, strict=True):
        want = reference_logits(ref, name, prompt)
        assert float((logits[start : start + len(prompt)] - want).abs().max()) < 0.5, name
        start += len(prompt)


@pytest.mark.parametrize(
    ("slots", "lens", "layout"),
    [
        ([2, -1, 2], [3, 2, 1], "single"),  # one adapter: plain matmuls, rows scattered back
        ([2, -1], [3, 2], "single"),  # one adapter whose rows come first: accumulated straight into out
        ([1, 0, -1, 3, 0], [1, 1, 1, 1, 1], "bmm"),  # decode: padded bmm over the used slots
        ([0, 1, 3, -1], [40, 1, 1, 2], "grouped"),  # one long prefill row block: _grouped_mm
        ([1, 0], [4, 4], "bmm"),  # slot 1 first: the rows are scattered back out of slot order
    ],
)
def test_site_layouts_match_a_loop(slots: list[int], lens: list[int], layout: str) -> None:
    """``lora_site_torch`` adds ``(x @ A_s) @ B_s`` to each adapter row's fused-part columns in every layout."""
    from radixgen.runtime.lora.ops import LoRASegments, lora_site_torch

    gen = torch.Generator().manual_seed(0)
    num_slots, k, r, outs = 4, 12, 4, [8, 4, 4]
    seg = LoRASegments.build(slots, lens, num_slots)
    got_layout = "single" if seg.single_slot is not None else "bmm" if seg.padded_rows is not None else "grouped"
    assert got_layout == layout
    t = sum(lens)
    x = torch.randn(t, k - 2, generator=gen)  # K padded to 12 in the buffers
    a_buf = torch.zeros(num_slots, k, len(outs) * r)
    a_buf[:, : k - 2] = torch.randn(num_slots, k - 2, len(outs) * r, generator=gen)
    b_bufs = [torch.randn(num_slots, r, o, generator=gen) for o in outs]
    cols = [(0, 8), (8, 12), (12, 16)]
    out = torch.randn(t, 16, generator=gen)
    want = out.clone()
    start = 0
    for s, n in zip(slots, lens, strict=True):
        if s >= 0:
            a = x[start : start + n] @ a_buf[s, : k - 2]  # [n, 3R]
            for i in (0, 2):  # part 1 is not adapted
                want[start : start + n, slice(*cols[i])] += a[:, i * r : (i + 1) * r] @ b_bufs[i][s]
        start += n
    lora_site_torch(x, out, a_buf, b_bufs, cols, r, [0, 2], seg)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
