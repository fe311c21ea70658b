"""benchmarks/bench_lora.py: its quick mode runs end to end and reports every configuration, ratio, output check and
micro-benchmark figure (the structure, not the timings); its adapter writer produces adapters PEFT itself loads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from shared_paths import REPO, STORIES, load_benchmark


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """bench_lora imports its sibling ``common`` by name, as it does when run from benchmarks/; the thread count
    the benchmark's Engines set is restored afterwards (the suite runs on one thread)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    threads = torch.get_num_threads()
    yield load_benchmark("bench_lora")
    torch.set_num_threads(threads)


def test_quick_run_reports_every_configuration(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "lora.json"
    report = bench.main(["--quick", "--num-threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert len(report["load_before"]) == 3 and len(report["load_after"]) == 3
    assert report["threads"] == 1 and report["rounds"] == 1 and report["batch"] == 16

    t = report["throughput"]
    configs = ["lora-off/base"] + [f"{k}/{m}" for k in ("qv", "all-linear") for m in bench.MODES]
    assert list(t["runs"]) == configs and list(t["summary"]) == configs
    for rows in t["runs"].values():
        assert len(rows) == 1 and "outputs" not in rows[0]
        row = rows[0]
        # the whole batch decodes together: max_new_tokens - 1 decode steps of 16 rows (the first token comes
        # from the prefill)
        assert row["out_tokens"] == 16 * 8 and row["decode_steps"] == 7 and row["decode_mean_batch"] == 16
        assert row["out_tok_s"] > 0 and row["decode_ms_per_step"] > 0
        assert row["decode_tok_s"] == pytest.approx(16_000 / row["decode_ms_per_step"])

    for key in ("qv", "all-linear"):
        ratios = t["ratios"][key]
        assert set(ratios) == {"base vs lora-off", "1 adapter", "8 adapters"}
        for mode, target in (("1 adapter", 0.9), ("8 adapters", 0.75)):
            e = ratios[mode]
            assert e["target"] == target and e["passed"] == (e["ratio"] >= target) and len(e["per_round"]) == 1
            assert e["best_of_rounds"] == pytest.approx(e["ratio"])  # one round: its best is the paired ratio
            paired = t["runs"][f"{key}/{mode}"][0]["out_tok_s"] / t["runs"][f"{key}/base"][0]["out_tok_s"]
            assert e["ratio"] == pytest.approx(paired)
        checks = t["checks"][key]
        # LoRA on changes nothing for base requests; the adapters change the greedy outputs
        assert checks["base_equals_lora_off"] is True
        assert checks["1 adapter: requests differing from base"] > 0
        assert checks["8 adapters: requests differing from base"] > 0
        assert checks["adapter-0 rows"] == 2

    sites = {"qv": ["qkv_proj"], "all-linear": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]}
    for key, m in report["micro"].items():
        assert list(m["sites"]) == sites[key]
        for s in m["sites"].values():
            assert min(s["base_us"], s["lora_1 adapter_us"], s["lora_8 adapters_us"]) > 0
        assert m["per_step_ms_8 adapters"] > 0 and m["per_step_base_gemms_ms"] > 0


def test_written_adapter_loads_in_peft_with_the_same_tensors(bench: ModuleType, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    path = bench.write_peft_adapter(tmp_path / "a", STORIES, modules, r=4, seed=7, alpha=8.0)
    saved = load_file(str(path / "adapter_model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, path)
    cfg = model.peft_config["default"]
    assert isinstance(cfg, LoraConfig) and cfg.r == 4 and cfg.lora_alpha == 8.0
    assert isinstance(cfg.target_modules, set | list) and set(cfg.target_modules) == set(modules)
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert set(loaded) == set(saved) and len(saved) == 2 * len(modules) * base.config.num_hidden_layers
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert all(saved[k].abs().sum() > 0 for k in saved)  # B is not PEFT's zero init: the adapter does something
    with pytest.raises(ValueError, match="lm_head"):
        bench.write_peft_adapter(tmp_path / "b", STORIES, ("lm_head",), r=4, seed=0)
