"""bench_peer.py's pieces that need no server: the seeded checkpoint writer (common.py) and the per-round summary
and table (the benchmark itself is run by hand, it is not part of the suite)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from shared_paths import REPO, STORIES

from radixgen.runtime.models.config import ModelConfig
from radixgen.runtime.models.loader import load_model


@pytest.fixture
def benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_peer.py imports its sibling scripts by name, as it does when run from benchmarks/."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))


def test_write_dummy_checkpoint_holds_radixgen_dummy_weights(tmp_path: Any, benchmarks_on_path: None) -> None:
    import common

    config = json.loads((STORIES / "config.json").read_text())
    out = common.write_dummy_checkpoint(config, tmp_path / "tiny", seed=3)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    mc = ModelConfig.from_pretrained(str(out))
    saved = load_model(mc, torch.float32, "safetensors", process_weights=False).hf_weight_views()
    same_seed = load_model(mc, torch.float32, "dummy", seed=3, process_weights=False).hf_weight_views()
    other_seed = load_model(mc, torch.float32, "dummy", seed=4, process_weights=False).hf_weight_views()
    assert saved.keys() == same_seed.keys()
    assert all(torch.equal(saved[k], same_seed[k]) for k in saved)
    assert not torch.equal(saved["model.embed_tokens.weight"], other_seed["model.embed_tokens.weight"])
    with pytest.raises(FileExistsError):
        common.write_dummy_checkpoint(config, out)
    assert common.BENCH_220M_CONFIG["hidden_size"] == 1024 and common.BENCH_220M_CONFIG["num_hidden_layers"] == 16


def _run(server: str, out_tok_s: float, tpot: float, **extra: Any) -> dict[str, Any]:
    return {
        "server": server,
        "load_before": (1.0, 1.0, 1.0),
        "busy_pct_before": 3.0,
        "completed": 4,
        "failed": 0,
        "errors": [],
        "output_throughput": out_tok_s,
        "request_throughput": out_tok_s / 32,
        "tpot_ms": {"p50": tpot},
        "ttft_ms": {"p50": 10.0},
        "total_output_tokens": 128,
        "cpu_s": 2.0,
        **extra,
    }


def test_summary_ratio_is_median_of_paired_rounds_and_errors_are_kept(benchmarks_on_path: None) -> None:
    import bench_peer
    import peer_report

    wl = bench_peer.workloads(32, quick=False)["sharegpt-c1"]
    rounds = [
        {"radixgen": _run("radixgen", 40.0, 24.0), "llama.cpp": _run("llama.cpp", 100.0, 8.0)},  # 0.4
        {"radixgen": _run("radixgen", 60.0, 20.0), "llama.cpp": _run("llama.cpp", 100.0, 9.0)},  # 0.6
        {"radixgen": _run("radixgen", 90.0, 22.0), "llama.cpp": _run("llama.cpp", 100.0, 8.5)},  # 0.9
        {
            "radixgen": {"server": "radixgen", "load_before": (2.0, 1.0, 1.0), "error": "x\nValueError: bad flag"},
            "llama.cpp": _run("llama.cpp", 50.0, 8.5),
        },
    ]
    s = bench_peer.summarize_workload(wl, rounds)
    assert s["ratios"] == pytest.approx([0.4, 0.6, 0.9]) and s["ratio"] == pytest.approx(0.6)
    assert s["radixgen"]["output_throughput"] == 60.0 and s["radixgen"]["tpot_p50_ms"] == 22.0
    assert s["llama.cpp"]["output_throughput"] == 100.0 and s["llama.cpp"]["tpot_p50_ms"] == 8.5
    assert s["radixgen"]["errors"] == ["x\nValueError: bad flag"]

    row = {
        "model": "40m",
        "precision": "f32",
        "workloads": {"sharegpt-c1": {"runs": rounds, "summary": s}},
        "probes": {},
        "probes_identical": None,
        "gguf_tensor_types": {"F32": 74},
        "radixgen_flags": ["--dtype", "float32"],
    }
    lines = peer_report.table_lines({"rows": [row]})
    assert "| 40m | f32 | sharegpt-c1 (out tok/s) | 60.0 | 100.0 | 0.60x | 22.0 / 8.5 |" in lines[2]
    assert any(line.endswith("radixgen: ValueError: bad flag") for line in lines)
    assert any("load average before runs 1.00-2.00" in line for line in lines)
