"""Multi-LoRA serving (issue 20): a batch spread over adapters vs the same batch on the base model, side by side.

1. Throughput. bench-llama-40m with seeded dummy weights, float32. Three offline Engines stay loaded in one
   process: LoRA off; LoRA on with 8 rank-16 adapters on PEFT's default Llama targets (``q_proj``, ``v_proj``;
   ``--lora-target-modules q_proj v_proj``); LoRA on with 8 rank-16 adapters on all seven projections
   (``all-linear``, the harder case). Each LoRA engine runs the same 16 requests (ShareGPT prompts cut to exactly
   ``--prompt-len`` tokens, ``--max-new-tokens`` each, greedy, ignore_eos) three ways: all on the base model,
   all on one adapter, spread over the 8 adapters (request ``i`` on adapter ``i % 8``, so the batch is not in slot
   order); the LoRA-off engine runs them on the base model. The seven configurations alternate within each of
   ``--rounds`` rounds (the order rotated per round, the radix cache flushed after every run), so load drift hits
   all alike. Per run: output tokens / wall second (prefill included) and the decode ms per step of the full batch
   (scheduler phase timers, runtime/step_timing.py). Ratios: median over rounds of the paired ratio to the same
   engine's base run (PASS / MISS; beside it the ratio of the best rounds, sturdier when outside load hit some
   rounds); targets (issue 20): 8 adapters >= 0.75x, 1 adapter >= 0.9x. Greedy outputs are compared: adapter runs
   differ from the base model (the adapters act), the LoRA engine's base rows equal the LoRA-off engine's, and
   the spread batch's adapter-0 rows are compared with the one-adapter batch.
2. Where the time goes. The segmented matmul of one decode step at batch 16 (``runtime/lora/ops.py``
   ``lora_site_torch`` through ``LoRABatchInfo.apply``: one adapter = two plain matmuls, 8 adapters = the padded
   ``bmm`` layout) per fused projection, against the model's own base projection GEMM, and the per-step
   ``LoRAManager.prepare``; then the LoRA cost per decode step these imply (layers x sites) against the measured
   step-time difference.

Adapters are PEFT directories (``adapter_config.json`` + ``adapter_model.safetensors`` under PEFT's key names, seeded
tensors; ``write_peft_adapter``), loadable by PEFT itself (tests/test_bench_lora.py checks that).

Run: python benchmarks/bench_lora.py [--rounds 5] [--prompt-len 64] [--max-new-tokens 64] [--quick]
Writes benchmarks/results/lora.json. Prints the load average before and after and other processes' CPU use during
the run, and warns when other jobs were running (quote the figures with them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import torch
from common import BENCH_MODEL, RESULTS, finish_report, sharegpt_prompts

from radixgen.runtime import Engine
from radixgen.runtime.lora.adapter import module_shape
from radixgen.runtime.lora.config import LORA_SITES, LORA_TARGET_MODULES
from radixgen.runtime.models.config import ModelConfig

TARGET_SETS: dict[str, tuple[str, ...]] = {"qv": ("q_proj", "v_proj"), "all-linear": LORA_TARGET_MODULES}
MODES = ("base", "1 adapter", "8 adapters")
TARGETS = {"1 adapter": 0.9, "8 adapters": 0.75}  # issue 20: throughput vs the base model, same batch
NUM_ADAPTERS, RANK, BATCH = 8, 16, 16


def write_peft_adapter(
    out_dir: Path, model_dir: str | Path, target_modules: tuple[str, ...], r: int, seed: int, alpha: float = 32.0
) -> Path:
    """Write a PEFT LoRA adapter over the model of ``model_dir`` (its config.json) into ``out_dir`` (created).

    Tensors as PEFT saves them: ``base_model.model.model.layers.<i>.(self_attn|mlp).<module>.lora_A.weight``
    ``[r, in]`` (uniform in +-1/sqrt(in), PEFT's Kaiming-uniform bound) and ``lora_B.weight`` ``[out, r]`` (normal,
    std 0.02; PEFT's own B starts at zero, which would make the adapter a no-op), float32, seeded by ``seed``.
    ``adapter_config.json`` holds PEFT's LoraConfig fields (``lora_alpha`` / ``r`` scaling, no rsLoRA).

    Raises:
        ValueError: a module outside ``LORA_TARGET_MODULES``, or ``r`` < 1; ValueError from ``ModelConfig`` for an
            unreadable model directory.
    """
    from safetensors.torch import save_file

    bad = [m for m in target_modules if m not in LORA_TARGET_MODULES]
    if bad or r < 1:
        raise ValueError(f"write_peft_adapter: modules {bad} / rank {r}; allowed {LORA_TARGET_MODULES}, r >= 1")
    cfg = ModelConfig.from_pretrained(str(model_dir))
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(cfg.num_hidden_layers):
        for module in target_modules:
            fan_in, fan_out = module_shape(cfg, module)
            block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{block}.{module}"
            bound = fan_in**-0.5
            tensors[f"{key}.lora_A.weight"] = (torch.rand(r, fan_in, generator=gen) * 2 - 1) * bound
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * 0.02
    out_dir.mkdir(parents=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(model_dir),
        "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(target_modules), "bias": "none",
        "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "inference_mode": True,
        "modules_to_save": None, "init_lora_weights": True,
    }  # fmt: skip
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def fixed_length_prompts(tokenizer: Any, n: int, length: int) -> list[list[int]]:
    """``n`` ShareGPT prompts cut to exactly ``length`` tokens (shorter ones skipped). Raises ValueError if the set
    has too few long prompts."""
    pool = sharegpt_prompts(tokenizer, 8 * n, length)
    out = [p for p in pool if len(p) == length][:n]
    if len(out) < n:
        raise ValueError(f"only {len(out)} ShareGPT prompts have {length} tokens; use a shorter --prompt-len")
    return out


def build_engines(tmp: Path, args: argparse.Namespace) -> tuple[dict[str, Engine], dict[str, list[str]]]:
    """The LoRA-off engine and one LoRA engine per target set, with their adapter names."""
    common = {
        "load_format": "dummy", "max_total_tokens": 8192, "max_running_requests": BATCH,
        "num_threads": args.num_threads, "chunked_prefill_size": 4096,
    }  # fmt: skip
    engines = {"lora-off": Engine(str(BENCH_MODEL), **common)}
    names: dict[str, list[str]] = {"lora-off": []}
    for key, modules in TARGET_SETS.items():
        specs = []
        for i in range(NUM_ADAPTERS):
            path = write_peft_adapter(tmp / f"{key}-{i}", BENCH_MODEL, modules, RANK, seed=100 * len(modules) + i)
            specs.append(f"{key}{i}={path}")
        names[key] = [s.split("=")[0] for s in specs]
        engines[key] = Engine(
            str(BENCH_MODEL), **common, lora_paths=specs, max_loras_per_batch=NUM_ADAPTERS, max_lora_rank=RANK,
            lora_target_modules=list(modules),
        )  # fmt: skip
    return engines, names


def lora_paths_for(mode: str, names: list[str]) -> list[str | None]:
    """Per-request adapter of a mode: none, all on the first adapter, or request ``i`` on adapter ``i % 8``."""
    if mode == "base":
        return [None] * BATCH
    return [names[0 if mode == "1 adapter" else i % len(names)] for i in range(BATCH)]


def run_once(engine: Engine, prompts: list[list[int]], lora: list[str | None], max_new: int) -> dict[str, Any]:
    """Generate ``prompts`` in one batch; wall throughput, decode step timing and the outputs."""
    params = {"temperature": 0, "max_new_tokens": max_new, "ignore_eos": True}
    engine.reset_step_timing()
    t0 = time.perf_counter()
    res = engine.generate(input_ids=prompts, sampling_params=params, lora_path=lora)
    wall = time.perf_counter() - t0
    outputs = [o["output_ids"] for o in res]  # type: ignore[index]
    if any(len(o) != max_new for o in outputs):
        raise RuntimeError(f"expected {max_new} tokens per request, got {[len(o) for o in outputs]}")
    decode = engine.get_server_info()["step_timing"]["decode"]
    if not engine.flush_cache():
        raise RuntimeError("flush_cache refused: requests still in flight")
    ms = decode["total_ms_per_step"]
    return {
        "wall_s": wall, "out_tokens": BATCH * max_new, "out_tok_s": BATCH * max_new / wall,
        "decode_steps": decode["steps"], "decode_mean_batch": decode["mean_batch_size"],
        "decode_ms_per_step": ms, "decode_forward_ms_per_step": decode["ms_per_step"]["forward"],
        "decode_prepare_ms_per_step": decode["ms_per_step"]["prepare"],
        "decode_tok_s": decode["mean_batch_size"] * 1000.0 / ms if ms else 0.0, "outputs": outputs,
    }  # fmt: skip


def throughput(
    engines: dict[str, Engine], names: dict[str, list[str]], prompts: list[list[int]], args: argparse.Namespace
) -> dict[str, Any]:
    """Part 1: the seven configurations alternated over ``args.rounds`` rounds; runs, medians, ratios, checks."""
    configs = [("lora-off", "base")] + [(k, m) for k in TARGET_SETS for m in MODES]
    for key, mode in configs:  # warm-up: buffers, every adapter in its slot
        run_once(engines[key], prompts, lora_paths_for(mode, names[key]), 4)
    runs: dict[str, list[dict[str, Any]]] = {f"{k}/{m}": [] for k, m in configs}
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for key, mode in order:
            row = run_once(engines[key], prompts, lora_paths_for(mode, names[key]), args.max_new_tokens)
            runs[f"{key}/{mode}"].append(row)
            print(f"  round {r} {key + '/' + mode:24} {row['out_tok_s']:8.1f} out tok/s  "
                  f"decode {row['decode_ms_per_step']:6.2f} ms/step", flush=True)  # fmt: skip
    fields = ("out_tok_s", "decode_ms_per_step", "decode_tok_s", "decode_forward_ms_per_step",
              "decode_prepare_ms_per_step", "decode_mean_batch")  # fmt: skip
    summary = {c: {f: statistics.median(x[f] for x in rows) for f in fields} for c, rows in runs.items()}
    ratios: dict[str, Any] = {}
    off = runs["lora-off/base"]
    for key in TARGET_SETS:
        base = runs[f"{key}/base"]
        ratios[key] = {"base vs lora-off": _paired(base, off, "out_tok_s")}
        ratios[key]["base vs lora-off"]["decode"] = _paired(base, off, "decode_tok_s")["ratio"]
        for mode, target in TARGETS.items():
            rows = runs[f"{key}/{mode}"]
            entry = _paired(rows, base, "out_tok_s")
            entry.update(decode=_paired(rows, base, "decode_tok_s")["ratio"],
                         vs_lora_off=_paired(rows, off, "out_tok_s")["ratio"], target=target,
                         passed=entry["ratio"] >= target)  # fmt: skip
            ratios[key][mode] = entry
    checks = output_checks(runs)
    for row in (x for rows in runs.values() for x in rows):
        del row["outputs"]
    return {"runs": runs, "summary": summary, "ratios": ratios, "checks": checks}


def _paired(rows: list[dict[str, Any]], ref: list[dict[str, Any]], field: str) -> dict[str, Any]:
    """Median over rounds of ``rows[r][field] / ref[r][field]``, the per-round ratios, and the ratio of the best
    rounds (outside load only slows a run down, so on a shared machine the best runs are the least disturbed)."""
    per_round = [a[field] / b[field] for a, b in zip(rows, ref, strict=True)]
    best = max(a[field] for a in rows) / max(b[field] for b in ref)
    return {"ratio": statistics.median(per_round), "per_round": per_round, "best_of_rounds": best}


def output_checks(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Greedy-output comparisons of the first round (see the module docstring)."""
    out: dict[str, Any] = {}
    off, rows0 = runs["lora-off/base"][0]["outputs"], range(0, BATCH, NUM_ADAPTERS)
    for key in TARGET_SETS:
        base = runs[f"{key}/base"][0]["outputs"]
        one = runs[f"{key}/1 adapter"][0]["outputs"]
        spread = runs[f"{key}/8 adapters"][0]["outputs"]
        out[key] = {
            "base_equals_lora_off": base == off,
            "1 adapter: requests differing from base": sum(a != b for a, b in zip(one, base, strict=True)),
            "8 adapters: requests differing from base": sum(a != b for a, b in zip(spread, base, strict=True)),
            "adapter-0 rows of the spread batch equal to the 1-adapter batch": sum(spread[i] == one[i] for i in rows0),
            "adapter-0 rows": len(rows0),
        }
    return out


def time_us(fns: dict[str, Callable[[], object]], iters: int, blocks: int = 7) -> dict[str, float]:
    """Microseconds per call of each function: the median over ``blocks`` blocks of ``iters`` calls, the functions'
    blocks interleaved so that a burst of outside load hits them all alike (after a warm-up of each)."""
    for fn in [f for f in fns.values() for _ in range(max(3, iters // 10))]:  # warm-up
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(blocks):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            samples[k].append(1e6 * (time.perf_counter() - t0) / iters)
    return {k: statistics.median(v) for k, v in samples.items()}


@torch.inference_mode()
def micro(engine: Engine, names: list[str], iters: int) -> dict[str, Any]:
    """Part 2 for one LoRA engine: per-site base GEMM vs ``LoRABatchInfo.apply`` at decode batch 16 (one token per
    request), the per-step ``LoRAManager.prepare``, and the per-step totals these imply (layer 0's figures x
    layers)."""
    runner = engine.model_runner
    mgr = runner.lora_manager
    assert mgr is not None
    cfg, layer = runner.model_config, runner.model.model.layers[0]
    proj = {"qkv_proj": layer.self_attn.qkv_proj, "o_proj": layer.self_attn.o_proj,
            "gate_up_proj": layer.mlp.gate_up_proj, "down_proj": layer.mlp.down_proj}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    ones = [1] * BATCH
    infos = {m: mgr.prepare(lora_paths_for(m, names), ones) for m in ("1 adapter", "8 adapters")}
    fns: dict[str, Callable[[], object]] = {}
    shapes = {}
    for site in mgr.sites[0]:
        x = torch.randn(BATCH, module_shape(cfg, LORA_SITES[site][0])[0], generator=gen)  # [16, in]
        y = proj[site](x)  # [16, out_total]
        shapes[site] = f"[{BATCH}, {x.shape[1]}] x [{x.shape[1]}, {y.shape[1]}]"
        fns[f"{site}/base"] = partial(proj[site], x)
        for mode, info in infos.items():
            assert info is not None
            fns[f"{site}/{mode}"] = partial(info.apply, 0, site, x, y)
    for mode in infos:
        fns[f"prepare/{mode}"] = partial(mgr.prepare, lora_paths_for(mode, names), ones)
    us = time_us(fns, iters)
    sites = {site: {"shape": shapes[site], "base_us": us[f"{site}/base"],
                    **{f"lora_{m}_us": us[f"{site}/{m}"] for m in infos}} for site in mgr.sites[0]}  # fmt: skip
    out: dict[str, Any] = {
        "sites": sites,
        "prepare_us": {m: us[f"prepare/{m}"] for m in infos},
    }
    layers = cfg.num_hidden_layers
    for mode in infos:
        lora_ms = layers * sum(s[f"lora_{mode}_us"] for s in out["sites"].values()) / 1000
        out[f"per_step_ms_{mode}"] = lora_ms + out["prepare_us"][mode] / 1000
    out["per_step_base_gemms_ms"] = layers * sum(s["base_us"] for s in out["sites"].values()) / 1000
    return out


def busy_cpu_s() -> tuple[float, float]:
    """(CPU seconds the whole machine has spent busy, CPU seconds of this process) since boot / start."""
    t = psutil.cpu_times()
    mine = psutil.Process().cpu_times()
    idle = sum(getattr(t, f, 0.0) for f in ("idle", "iowait", "guest", "guest_nice"))  # guest is counted in user
    return sum(t) - idle, mine.user + mine.system


def quietness(report: dict[str, Any], start: tuple[float, float], wall_s: float) -> None:
    """Record other processes' CPU use during the run (machine busy time minus this process's, over the run's
    wall time x cores), and warn when it or the load average before the run says other jobs competed for the cores
    (the load average after includes this run's own threads, so it is not the test)."""
    cores = os.cpu_count() or 1
    end = busy_cpu_s()
    others = max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / (wall_s * cores)
    report["others_cpu_pct"] = 100 * others
    print(f"\nother processes' CPU use during the run: {100 * others:.0f}% of {cores} cores")
    if report["load_before"][0] > cores / 2 or others > 0.25:
        print(f"WARNING: load average {report['load_before'][0]:.2f} before the run, others' CPU {100 * others:.0f}% "
              "during it: other jobs were running, the timings are noisy (rerun on a quiet machine)")  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    """The tables of parts 1 and 2."""
    t = report["throughput"]
    print(f"\nmedians of {report['rounds']} rounds; batch {BATCH}, prompt {report['prompt_len']} tokens, "
          f"{report['max_new_tokens']} out, rank {RANK}")  # fmt: skip
    print(f"  {'configuration':26} {'out tok/s':>10} {'decode ms/step':>15} {'decode tok/s':>13}")
    for c, s in t["summary"].items():
        print(f"  {c:26} {s['out_tok_s']:10.1f} {s['decode_ms_per_step']:15.2f} {s['decode_tok_s']:13.1f}")
    for key, rs in t["ratios"].items():
        b = rs["base vs lora-off"]
        print(f"  {key}: base with LoRA on / LoRA off {b['ratio']:.3f}x (decode {b['decode']:.3f}x)")
        for mode in TARGETS:
            e = rs[mode]
            verdict = "PASS" if e["passed"] else "MISS"
            print(f"  {key}: {mode} / base {e['ratio']:.3f}x (best of rounds {e['best_of_rounds']:.3f}x; "
                  f"decode {e['decode']:.3f}x, vs LoRA off {e['vs_lora_off']:.3f}x) target >= {e['target']}x "
                  f"{verdict}")  # fmt: skip
        print(f"    outputs: {json.dumps(t['checks'][key])}")
    for key, m in report["micro"].items():
        print(f"\nsegmented matmul, {key}, decode batch {BATCH}, layer 0 (us per call)")
        for site, s in m["sites"].items():
            print(f"  {site:13} {s['shape']:26} base {s['base_us']:7.1f}  LoRA 1 adapter "
                  f"{s['lora_1 adapter_us']:7.1f}  8 adapters {s['lora_8 adapters_us']:7.1f}")  # fmt: skip
        print(f"  prepare per step: {json.dumps({k: round(v, 1) for k, v in m['prepare_us'].items()})} us")
        step = {mode: t["summary"][f"{key}/{mode}"]["decode_ms_per_step"] for mode in MODES}
        measured = {mode: step[mode] - step["base"] for mode in TARGETS}
        print(f"  per decode step: base GEMMs {m['per_step_base_gemms_ms']:.2f} ms; LoRA adds 1 adapter "
              f"{m['per_step_ms_1 adapter']:.2f} ms, 8 adapters {m['per_step_ms_8 adapters']:.2f} ms (measured in "
              f"part 1: {measured['1 adapter']:+.2f}, {measured['8 adapters']:+.2f} ms/step)")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (``argv`` as on the command line); returns the report it writes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-iters", type=int, default=200, help="calls per timed block of part 2")
    parser.add_argument("--num-threads", type=int, default=2, help="torch intra-op threads (fixed)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 16-token prompts, 8 out")
    parser.add_argument("--out", default=str(RESULTS / "lora.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.prompt_len, args.max_new_tokens, args.micro_iters = 1, 16, 8, 10
    load_before, start, t0 = os.getloadavg(), busy_cpu_s(), time.perf_counter()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": load_before, "rounds": args.rounds,
        "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens, "batch": BATCH,
        "adapters": NUM_ADAPTERS, "rank": RANK, "quick": args.quick,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        engines, names = build_engines(Path(tmp), args)
        try:
            report["threads"] = torch.get_num_threads()
            prompts = fixed_length_prompts(engines["lora-off"].tokenizer, BATCH, args.prompt_len)
            report["throughput"] = throughput(engines, names, prompts, args)
            report["micro"] = {k: micro(engines[k], names[k], args.micro_iters) for k in TARGET_SETS}
        finally:
            for engine in engines.values():
                engine.shutdown()
    print_report(report)
    quietness(report, start, time.perf_counter() - t0)
    finish_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
