"""The measuring steps of ``gpu_check.py`` (one device run; see there): each runs in its own process,

    python benchmarks/gpu_check_steps.py {env,kernels,offline,serving} --profile {gpu,dry} --result FILE --work DIR

writes its result as JSON to FILE and exits 0 when it ran to the end (its ``checks`` say whether what it measured
is right). The benchmark code is the existing modules', called with this run's sizes: bench_kernels (decode
bandwidth vs copy, extend vs SDPA, bitmask), bench_offline (Engine runs, HF ``generate`` on the same weights),
bench_serving (TTFT/TPOT through a launched server). Sizes are in ``gpu_check_profile.PROFILES``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from bench_serving import _finite
from gpu_check_profile import PROFILES, Profile, write_model_dir

# kernel outputs in bfloat16 against their float32-accumulating torch references: tests/test_kernels.py's tolerance
BF16_ATOL = 3e-2


def step_env(profile: Profile, work: Path) -> dict[str, Any]:
    """Versions, the device, and whether the Triton kernels run compiled (TRITON_INTERPRET unset) or interpreted."""
    from importlib.metadata import version

    from radixgen.kernels import INTERPRET  # picks the Triton mode

    cuda = torch.cuda.is_available()
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: version(name) for name in ("triton", "transformers", "xgrammar")},
        "cuda_available": cuda,
        "triton_interpret": INTERPRET,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        result |= {"capability": list(torch.cuda.get_device_capability()), "memory_gib": props.total_memory / 2**30,
                   "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda}  # fmt: skip
    on_gpu = profile.device == "cuda"
    checks = {"device_available": cuda or not on_gpu}
    checks["kernels_compiled" if on_gpu else "kernels_interpreted"] = INTERPRET != on_gpu
    return {"result": result, "checks": checks}


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def step_kernels(profile: Profile, work: Path) -> dict[str, Any]:
    """The Triton kernels at benchmark shapes: max-abs error against the torch references, then bench_kernels'
    decode bandwidth (bytes moved / s, and K/V bytes alone) against a device copy in the same run, extend
    attention against SDPA, and the token bitmask."""
    import bench_kernels as bk

    from radixgen.kernels import apply_token_bitmask_inplace, decode_attention_fwd, extend_attention_fwd
    from radixgen.kernels.reference import apply_token_bitmask_ref, decode_attention_ref, extend_attention_ref

    dev, p = profile.device, profile
    torch.manual_seed(0)
    # accuracy: decode at the bandwidth shape, extend over a cached prefix, the bitmask (exact)
    shape = bk.AttnShape(batch=p.decode_batch, prefix=p.decode_context, extend=0)
    t = bk._pool(shape, torch.bfloat16, dev)
    q = torch.randn(shape.batch, shape.num_heads, shape.head_dim, device=dev, dtype=torch.bfloat16)
    seq_lens = torch.full((shape.batch,), shape.prefix, device=dev)
    dec_args = (q, t["k_buffer"], t["v_buffer"], t["req_to_token"], t["req_pool_indices"], seq_lens)
    dec_err = _max_abs(decode_attention_fwd(*dec_args), decode_attention_ref(*dec_args))
    ext_shape = bk.AttnShape(**p.extend_check_shape)
    t = bk._pool(ext_shape, torch.bfloat16, dev)
    keys = ("q", "k", "v", "k_buffer", "v_buffer", "req_to_token", "req_pool_indices", "prefix_lens", "extend_lens",
            "extend_start_loc")  # fmt: skip
    ext_args = [t[k] for k in keys]
    ext_out = extend_attention_fwd(*ext_args, max_extend_len=ext_shape.extend)
    ext_err = _max_abs(ext_out, extend_attention_ref(*ext_args))
    logits = torch.randn(p.bitmask_batch, p.bitmask_vocab, device=dev)
    mask = torch.randint(-(2**31), 2**31 - 1, (p.bitmask_batch, (p.bitmask_vocab + 31) // 32), device=dev,
                         dtype=torch.int32)  # fmt: skip
    bitmask_equal = torch.equal(apply_token_bitmask_inplace(logits.clone(), mask),
                                apply_token_bitmask_ref(logits.clone(), mask))  # fmt: skip
    accuracy = {
        "decode_attention": {"shape": vars(shape), "max_abs_err": dec_err, "atol": BF16_ATOL},
        "extend_attention": {"shape": vars(ext_shape), "max_abs_err": ext_err, "atol": BF16_ATOL},
        "token_bitmask": {"batch": p.bitmask_batch, "vocab": p.bitmask_vocab, "equal_to_reference": bitmask_equal},
    }
    # speed
    decode = bk.bench_decode(p.decode_batch, p.decode_context, p.quick, dev)
    kv_bytes = 2 * shape.batch * shape.prefix * shape.num_kv_heads * shape.head_dim * 2  # K and V, bfloat16
    for row in decode:
        row["kv_GB/s"] = kv_bytes / row["ms"] / 1e6
    best = max(decode, key=lambda r: r["ratio"])
    shapes = None if p.extend_bench_shapes is None else [bk.AttnShape(**s) for s in p.extend_bench_shapes]
    extend = bk.bench_extend(p.quick, dev, shapes)
    bitmask = bk.bench_bitmask(p.bitmask_batch, p.bitmask_vocab, dev)
    result = {
        "accuracy": accuracy,
        "decode": decode,
        "extend": extend,
        "bitmask": bitmask,
        "decode_best": {"num_kv_splits": best["num_kv_splits"], "GB/s": best["GB/s"], "kv_GB/s": best["kv_GB/s"],
                        "copy GB/s": best["copy GB/s"], "ratio_vs_copy": best["ratio"]},  # fmt: skip
    }
    targets = {"decode_bandwidth_vs_copy": {"value": best["ratio"], "target": ">= 0.60", "met": best["ratio"] >= 0.6}}
    sdpa = [r for r in extend if "ratio" in r]
    if sdpa:
        worst = max(r["ratio"] for r in sdpa)
        targets["extend_time_vs_sdpa"] = {"value": worst, "target": "<= 1.5", "met": worst <= bk.SDPA_TARGET}
    checks = {
        "decode_attention_within_atol": dec_err <= BF16_ATOL,
        "extend_attention_within_atol": ext_err <= BF16_ATOL,
        "token_bitmask_exact": bitmask_equal,
        "decode_bandwidth_positive": all(r["GB/s"] > 0 and r["copy GB/s"] > 0 for r in decode),
    }
    return {"result": result, "targets": targets, "checks": checks}


def step_offline(profile: Profile, work: Path) -> dict[str, Any]:
    """Offline Engine throughput of the benchmark model (dummy weights) with all of ``batch`` requests submitted
    at once, for each batch size; then Engine vs Hugging Face ``generate`` (static batches, same weights, same
    device and dtype), alternating, with the greedy agreement of their first 8 tokens."""
    from bench_offline import hf_model_with_engine_weights, run_engine, run_hf
    from common import sharegpt_prompts

    from radixgen.runtime import Engine

    p = profile
    model = write_model_dir(work, p)
    engine = Engine(str(model), load_format="dummy", device=p.device, dtype=p.dtype,
                    max_total_tokens=p.max_total_tokens, max_running_requests=max(p.offline_batches))  # fmt: skip
    prompts = sharegpt_prompts(engine.tokenizer, max(*p.offline_batches, p.hf_prompts), p.max_prompt_tokens)
    batches = []
    for batch in p.offline_batches:
        run_engine(engine, prompts[:batch], 2)  # warm-up at this batch size (Triton compiles its variants)
        engine.flush_cache()
        seconds, outs = run_engine(engine, prompts[:batch], p.output_len)
        tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
        batches.append({"batch": batch, "seconds": seconds, "output_tokens": tokens, "out_tok_s": tokens / seconds,
                        "prompt_tokens": sum(len(x) for x in prompts[:batch])})  # fmt: skip
    hf = hf_model_with_engine_weights(engine)
    run_hf(hf, prompts[:2], 2, 2, pad_id=0)  # warm-up
    runs = []
    for _ in range(p.hf_repeats):
        engine.flush_cache()
        t_ours, outs = run_engine(engine, prompts[: p.hf_prompts], p.output_len)
        t_hf, hf_outs = run_hf(hf, prompts[: p.hf_prompts], p.output_len, p.hf_batch_size, pad_id=0)
        n_ours = sum(o["meta_info"]["completion_tokens"] for o in outs)
        n_hf = sum(len(o) for o in hf_outs)
        runs.append({"engine_s": t_ours, "engine_out_tok_s": n_ours / t_ours, "hf_s": t_hf,
                     "hf_out_tok_s": n_hf / t_hf, "speedup": (n_ours / t_ours) / (n_hf / t_hf)})  # fmt: skip
    agree = sum(o["output_ids"][:8] == h[:8] for o, h in zip(outs, hf_outs, strict=True)) / len(outs)
    mid = sorted(runs, key=lambda r: r["speedup"])[len(runs) // 2]
    params = sum(x.numel() for x in engine.model_runner.model.parameters())
    result = {
        "model": {**p.model, "parameters": params, "dtype": p.dtype, "device": p.device},
        "output_len": p.output_len,
        "batches": batches,
        "vs_hf": {"prompts": p.hf_prompts, "hf_batch_size": p.hf_batch_size, **mid,
                  "speedup_runs": [r["speedup"] for r in runs], "first8_greedy_agreement": agree},  # fmt: skip
    }
    checks = {
        "every_batch_completed": all(b["output_tokens"] == b["batch"] * p.output_len for b in batches),
        "throughput_positive": all(b["out_tok_s"] > 0 for b in batches) and mid["hf_out_tok_s"] > 0,
    }
    engine.shutdown()
    return {"result": result, "checks": checks}


def step_serving(profile: Profile, work: Path) -> dict[str, Any]:
    """TTFT / TPOT / ITL through one launched server (OpenAI streaming completions, bench_serving's client) at
    each concurrency of ``profile.serving_runs``, ShareGPT prompts, fixed output length (ignore_eos)."""
    import bench_serving
    from native_client import launched

    p = profile
    model = write_model_dir(work, p)
    extra = ["--device", p.device, "--dtype", p.dtype, "--max-total-tokens", str(p.max_total_tokens)]
    runs = []
    with launched(str(model), "dummy", extra) as (_, base):
        for concurrency, prompts in p.serving_runs:
            report = bench_serving.main([
                "--base-url", base, "--tokenizer", str(model), "--workload", "sharegpt", "--num-prompts",
                str(prompts), "--max-prompt-tokens", str(p.max_prompt_tokens), "--output-len", str(p.output_len),
                "--max-concurrency", str(concurrency),
            ])  # fmt: skip
            m = report["runs"][0]
            runs.append({"max_concurrency": concurrency, "num_prompts": prompts, **{k: m[k] for k in (
                "completed", "failed", "errors", "duration_s", "output_throughput", "total_throughput", "ttft_ms",
                "tpot_ms", "itl_ms", "e2e_ms")}})  # fmt: skip
    checks = {
        "all_requests_completed": all(r["completed"] == r["num_prompts"] and r["failed"] == 0 for r in runs),
        "latencies_positive": all(r["ttft_ms"]["p50"] > 0 and r["tpot_ms"]["p50"] > 0 for r in runs),
    }
    return {"result": {"output_len": p.output_len, "runs": runs}, "checks": checks}


STEPS = {"env": step_env, "kernels": step_kernels, "offline": step_offline, "serving": step_serving}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--profile", choices=sorted(PROFILES), required=True)
    parser.add_argument("--result", required=True, help="JSON file to write the step's result to")
    parser.add_argument("--work", required=True, help="scratch directory (model configs)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if profile.device == "cpu":
        torch.set_num_threads(2)
    out = STEPS[args.step](profile, Path(args.work))
    Path(args.result).write_text(json.dumps(_finite(out), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
