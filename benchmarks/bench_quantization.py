"""Quantization: decode speed, KV capacity and quality per weight scheme and KV dtype, side by side in one run.

1. Speed. For each model (bench-llama-40m and the ~220M config of common.py, seeded dummy weights) one offline
   Engine per weight scheme — f32, bf16, int8wo, w8a8_int8, int4wo (float32 model, group 128) — stays loaded; the run
   alternates between them ``--repeats`` times (``+head``: the LM head quantized too, as llama.cpp's Q8_0 / Q4
   files store it) and reports the median decode ms/step at batch 1 (= TPOT) and the
   decode throughput at batch 16 (tokens/s), with ratios to f32. Steps are timed by the scheduler's own phase
   timers (bench_host_overhead.measure): ShareGPT prompts (<= 256 tokens) are prefilled, then ``--steps`` decode
   steps of the full batch are timed.
2. KV capacity. For each ``--kv-cache-dtype`` the KV tokens that fit in the same budget (256 MiB) on each model,
   from the engine's own pool sizing (get_server_info), with the ratio to float32 KV.
3. Quality. KL divergence of the next-token distribution to the float32 model (teacher-forced over ShareGPT
   prompts, bench-llama-40m) per weight scheme, and stories260K (a real model) top-1 agreement with float32
   along its 200-token greedy continuation of BOS.

Run: python benchmarks/bench_quantization.py [--models 40m,220m] [--repeats 3] [--steps 32] [--quick]
Writes benchmarks/results/quantization.json. Say how quiet the machine was when quoting the figures (the
script prints the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from bench_host_overhead import measure
from common import BENCH_220M_CONFIG, BENCH_MODEL, LLAMA2_TOKENIZER, RESULTS, SHARED, finish_report, sharegpt_prompts

from radixgen.runtime import Engine
from radixgen.runtime.models import ModelConfig, load_model
from radixgen.runtime.models.quant_config import QuantizationConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from model_harness import KVHarness  # noqa: E402  (the tests' scheduler-free forward driver)

SCHEMES: dict[str, dict[str, Any]] = {
    "f32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "int8wo": {"dtype": "float32", "quantization": "int8wo"},
    "int8wo+head": {"dtype": "float32", "quantization": "int8wo", "quantize_lm_head": True},
    "w8a8_int8": {"dtype": "float32", "quantization": "w8a8_int8"},
    "w8a8_int8+head": {"dtype": "float32", "quantization": "w8a8_int8", "quantize_lm_head": True},
    "int4wo": {"dtype": "float32", "quantization": "int4wo-128"},
    "int4wo+head": {"dtype": "float32", "quantization": "int4wo-128", "quantize_lm_head": True},
}
KV_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2", "int8")
KV_BUDGET = 256 * 2**20


def config_dir(name: str, root: Path) -> str:
    """A model directory (config + tokenizer) for ``--load-format dummy``."""
    if name == "40m":
        return str(BENCH_MODEL)
    path = root / name
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(BENCH_220M_CONFIG))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (path / f).write_bytes((LLAMA2_TOKENIZER / f).read_bytes())
    return str(path)


def speed(model_dir: str, schemes: list[str], repeats: int, steps: int, batch_sizes: list[int]) -> dict[str, Any]:
    engines = {
        s: Engine(model_dir, load_format="dummy", max_total_tokens=16384, **SCHEMES[s]) for s in schemes
    }
    first = next(iter(engines.values()))
    prompts = sharegpt_prompts(first.tokenizer, max(batch_sizes), 256)
    for s, e in engines.items():
        measure(e, prompts[:2], 2, f"warm-{s}")
    ms: dict[str, dict[int, list[float]]] = {s: {b: [] for b in batch_sizes} for s in schemes}
    for r in range(repeats):
        for bs in batch_sizes:
            for s, e in engines.items():  # alternate schemes within each repeat: load drifts hit all alike
                ms[s][bs].append(measure(e, prompts[:bs], steps, f"{s}-{bs}-{r}")["total_ms_per_step"])
    out: dict[str, Any] = {}
    for s, e in engines.items():
        info = e.get_server_info()
        out[s] = {
            "weight_bytes": info["weight_bytes"],
            "weight_formats": info["weight_formats"],
            **{f"bs{b}_ms_per_step": statistics.median(v) for b, v in ms[s].items()},
            **{f"bs{b}_runs": v for b, v in ms[s].items()},
        }
        for b in batch_sizes:
            out[s][f"bs{b}_tok_per_s"] = b * 1000.0 / out[s][f"bs{b}_ms_per_step"]
    return out


def kv_capacity(model_dir: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in KV_DTYPES:
        try:
            e = Engine(model_dir, load_format="dummy", kv_cache_dtype=kv, kv_cache_budget_bytes=KV_BUDGET)
        except (ValueError, TypeError) as err:  # a KV dtype this build refuses: recorded, not fatal
            out[kv] = {"error": str(err)}
            continue
        info = e.get_server_info()
        out[kv] = {"max_total_tokens": info["max_total_tokens"], "kv_bytes_per_token": info.get("kv_bytes_per_token")}
        del e
    base = out["auto"].get("max_total_tokens")
    for v in out.values():
        if base and "max_total_tokens" in v:
            v["ratio_to_f32"] = v["max_total_tokens"] / base
    return out


def teacher_forced_logits(model: Any, ids: list[int]) -> torch.Tensor:
    h = KVHarness(model, num_slots=len(ids) + 8)
    return h.extend([h.new_request()], [ids])  # [len, vocab] float32


def kl_and_top1(ref: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    p, q = torch.log_softmax(ref, -1), torch.log_softmax(other, -1)
    return (p.exp() * (p - q)).sum(-1).mean().item(), (ref.argmax(-1) == other.argmax(-1)).float().mean().item()


def quality(schemes: list[str], num_prompts: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cfg40 = ModelConfig.from_pretrained(str(BENCH_MODEL))
    from radixgen.runtime.fast_tokenizer import load_hf_tokenizer

    prompts = sharegpt_prompts(load_hf_tokenizer(str(BENCH_MODEL)), num_prompts, 128)
    ref40 = load_model(cfg40, load_format="dummy", process_weights=False)
    refs = [teacher_forced_logits(ref40, p) for p in prompts]
    stories = ModelConfig.from_pretrained(str(SHARED / "models" / "stories260K"))
    ref_st = load_model(stories, process_weights=False)
    h = KVHarness(ref_st, num_slots=220)
    row = h.new_request()
    st_ids, logits = [1], h.extend([row], [[1]])
    for _ in range(200):
        st_ids.append(int(logits[-1].argmax()))
        logits = h.decode([row], [st_ids[-1]])
    st_ref = teacher_forced_logits(ref_st, st_ids)
    for s in schemes:
        spec = SCHEMES[s]
        dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else torch.float32
        quant = (
            QuantizationConfig.parse(spec["quantization"], spec.get("quantize_lm_head", False))
            if "quantization" in spec
            else None
        )
        m40 = load_model(cfg40, dtype=dtype, load_format="dummy", quantization=quant)
        kls = [kl_and_top1(r, teacher_forced_logits(m40, p))[0] for r, p in zip(refs, prompts, strict=True)]
        mst = load_model(stories, dtype=dtype, quantization=quant)
        st_kl, st_top1 = kl_and_top1(st_ref, teacher_forced_logits(mst, st_ids))
        out[s] = {"kl_40m_sharegpt": statistics.mean(kls), "kl_stories": st_kl, "top1_stories": st_top1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="40m,220m")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--quality-prompts", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="smoke run: 40m, 1 repeat, 4 steps, 2 prompts")
    parser.add_argument("--out", default=str(RESULTS / "quantization.json"))
    args = parser.parse_args()
    if args.quick:
        args.models, args.repeats, args.steps, args.quality_prompts = "40m", 1, 4, 2
    schemes = args.schemes.split(",")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    report: dict[str, Any] = {"load_before": os.getloadavg(), "threads": torch.get_num_threads(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model_dir = config_dir(name, Path(tmp))
            res = {"speed": speed(model_dir, schemes, args.repeats, args.steps, sizes), "kv": kv_capacity(model_dir)}
            report["models"][name] = res
            base = res["speed"]["f32"] if "f32" in res["speed"] else None
            print(f"\n{name}: decode, median of {args.repeats} alternating runs x {args.steps} steps")
            print(f"  {'scheme':8} {'weights MiB':>11} " + " ".join(f"{'bs' + str(b) + ' ms/step':>14}" for b in sizes)
                  + " " + " ".join(f"{'bs' + str(b) + ' tok/s':>11} {'vs f32':>6}" for b in sizes))
            for s, r in res["speed"].items():
                cols = " ".join(f"{r[f'bs{b}_ms_per_step']:14.2f}" for b in sizes)
                tps = " ".join(
                    f"{r[f'bs{b}_tok_per_s']:11.1f} "
                    f"{(r[f'bs{b}_tok_per_s'] / base[f'bs{b}_tok_per_s'] if base else float('nan')):5.2f}x"
                    for b in sizes
                )
                print(f"  {s:8} {r['weight_bytes'] / 2**20:11.1f} {cols} {tps}")
            print(f"  KV tokens in {KV_BUDGET // 2**20} MiB:")
            for kv, r in res["kv"].items():
                print(f"    {kv:9} " + (r["error"] if "error" in r else
                      f"{r['max_total_tokens']:8d} tokens ({r.get('ratio_to_f32', float('nan')):.2f}x)"))
    report["quality"] = quality(schemes, args.quality_prompts)
    print("\nquality vs float32 (KL of next-token distributions; stories260K top-1 agreement over 201 positions)")
    for s, q in report["quality"].items():
        print(f"  {s:8} KL 40m/ShareGPT {q['kl_40m_sharegpt']:.2e}  KL stories {q['kl_stories']:.2e}  "
              f"top-1 stories {q['top1_stories']:.3f}")
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
