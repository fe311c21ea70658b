"""Offline throughput of the Engine, measured side by side in one run (bench-llama-40m, dummy weights).

(a) 64 ShareGPT prompts (<= 256 tokens), 128 fixed output tokens: radixgen Engine (all requests at once,
    continuous batching) vs Hugging Face transformers ``generate`` on the same weights in static batches of 16.
(b) Shared prefix: 4 groups x 16 requests, each group a ~1000-token GSM8K few-shot prefix + one test question,
    32 output tokens: radix cache on vs off; cache hit rate vs the ideal (each group's prefix computed once).

Run: python benchmarks/bench_offline.py [--repeats N] [--out results.json]. Prints a table and the ratios; writes
JSON. With ``--repeats N`` Engine and HF runs alternate N times and the median ratio is reported.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from common import BENCH_MODEL, gsm8k_few_shot_groups, sharegpt_prompts

from radixgen.runtime import Engine


def run_engine(engine: Engine, prompts: list[list[int]], max_new_tokens: int) -> tuple[float, list[dict[str, Any]]]:
    params = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    return time.perf_counter() - t0, outs  # type: ignore[return-value]


def hf_model_with_engine_weights(engine: Engine) -> torch.nn.Module:
    """A transformers LlamaForCausalLM holding exactly the Engine's (dummy) weights, with the Engine's model
    config, dtype and device.

    The Engine's own projections are repacked for their kernels (``process_weights_after_loading``), so the
    weights are loaded once more as plain tensors with the Engine's load format, seed, dtype and device (dummy
    weights are deterministic for a seed on a device) and copied under the Hugging Face names."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from radixgen.runtime.models import load_model

    runner = engine.model_runner
    config = AutoConfig.from_pretrained(runner.model_config.model_path)
    hf = AutoModelForCausalLM.from_config(config, dtype=runner.dtype).to(runner.device).eval()
    plain = load_model(runner.model_config, runner.dtype, runner.args.load_format, runner.device,
                       seed=runner.args.random_seed, process_weights=False)  # fmt: skip
    state = {name: t.detach().clone() for name, t in plain.hf_weight_views().items()}
    del plain
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"weight transfer failed: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf


def run_hf(hf: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, batch_size: int, pad_id: int):
    """Static batches, left padding, greedy, exactly ``max_new_tokens`` new tokens each (on ``hf``'s device)."""
    outputs: list[list[int]] = []
    device = next(hf.parameters()).device
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(chunk), width), dtype=torch.int64)
        for j, p in enumerate(chunk):
            ids[j, width - len(p) :] = torch.tensor(p)
            mask[j, width - len(p) :] = 1
        with torch.inference_mode():
            gen = hf.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        outputs.extend(gen[:, width:].tolist())
    return time.perf_counter() - t0, outputs


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    engine = Engine(str(BENCH_MODEL), load_format="dummy", max_total_tokens=65536, chunked_prefill_size=4096)
    prompts = sharegpt_prompts(engine.tokenizer, args.num_prompts, args.max_prompt_tokens)
    run_engine(engine, prompts[:4], 4)  # warm-up
    hf = hf_model_with_engine_weights(engine)
    run_hf(hf, prompts[:2], 2, 2, 0)  # warm-up
    # Engine and HF runs alternate, so on a shared machine both see the same background load; the ratio reported
    # is the median of the per-repeat ratios
    runs = []
    for _ in range(args.repeats):
        engine.flush_cache()
        t_ours, outs = run_engine(engine, prompts, args.output_len)
        n_out = sum(o["meta_info"]["completion_tokens"] for o in outs)
        t_hf, hf_outs = run_hf(hf, prompts, args.output_len, args.hf_batch_size, pad_id=0)
        n_hf = sum(len(o) for o in hf_outs)
        runs.append({"radixgen_s": t_ours, "hf_s": t_hf, "speedup": (n_out / t_ours) / (n_hf / t_hf)})
    mid = sorted(runs, key=lambda r: r["speedup"])[len(runs) // 2]
    # honesty check: same weights, greedy → the first tokens should agree (float reductions can flip late ties)
    agree = sum(o["output_ids"][:8] == h[:8] for o, h in zip(outs, hf_outs, strict=True)) / len(outs)
    return {
        "prompts": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "output_len": args.output_len,
        "radixgen_s": mid["radixgen_s"],
        "radixgen_out_tok_s": n_out / mid["radixgen_s"],
        "hf_s": mid["hf_s"],
        "hf_out_tok_s": n_hf / mid["hf_s"],
        "speedup": mid["speedup"],
        "speedup_runs": [r["speedup"] for r in runs],
        "first8_greedy_agreement": agree,
    }


def bench_shared_prefix(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, disable in (("cache_on", False), ("cache_off", True)):
        engine = Engine(
            str(BENCH_MODEL),
            load_format="dummy",
            max_total_tokens=98304,
            disable_radix_cache=disable,
            chunked_prefill_size=4096,
            schedule_policy=args.policy,
        )
        prompts, prefix_lens = gsm8k_few_shot_groups(engine.tokenizer, args.groups, args.per_group)
        run_engine(engine, [prompts[0][:16]], 2)  # warm-up on an unrelated short prompt
        engine.flush_cache()
        dt, outs = run_engine(engine, prompts, args.prefix_output_len)
        prompt_tokens = sum(len(p) for p in prompts)
        cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
        ideal = sum(prefix_lens) - sum(prefix_lens[:: args.per_group])  # each group's prefix computed once
        results[label] = {
            "seconds": dt,
            "out_tok_s": sum(o["meta_info"]["completion_tokens"] for o in outs) / dt,
            "prompt_tokens": prompt_tokens,
            "cached_tokens": cached,
            "hit_rate": cached / prompt_tokens,
            "ideal_hit_rate": ideal / prompt_tokens,
        }
        del engine
    on, off = results["cache_on"], results["cache_off"]
    results["speedup"] = off["seconds"] / on["seconds"]
    results["hit_rate_vs_ideal"] = on["hit_rate"] / on["ideal_hit_rate"]
    results["mean_prefix_tokens"] = sum(prefix_lens) / len(prefix_lens)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="alternating Engine / HF runs; median ratio")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--per-group", type=int, default=16)
    parser.add_argument("--prefix-output-len", type=int, default=32)
    parser.add_argument("--policy", default="lpm", choices=["fcfs", "lpm"])
    parser.add_argument("--skip", choices=["throughput", "shared-prefix"], default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    report: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    if args.skip != "throughput":
        tp = bench_throughput(args)
        report["throughput"] = tp
        print(
            f"(a) {tp['prompts']} ShareGPT prompts ({tp['prompt_tokens']} prompt tokens), {tp['output_len']} out each"
        )
        print(f"    radixgen Engine : {tp['radixgen_out_tok_s']:8.1f} out tok/s ({tp['radixgen_s']:.1f} s)")
        print(f"    HF generate x16 : {tp['hf_out_tok_s']:8.1f} out tok/s ({tp['hf_s']:.1f} s)")
        print(
            f"    speedup {tp['speedup']:.2f}x (runs: {', '.join(f'{x:.2f}' for x in tp['speedup_runs'])}; "
            f"target >= 4x); first-8-token greedy agreement "
            f"{tp['first8_greedy_agreement']:.0%}"
        )
    if args.skip != "shared-prefix":
        sp = bench_shared_prefix(args)
        report["shared_prefix"] = sp
        on, off = sp["cache_on"], sp["cache_off"]
        print(
            f"(b) shared prefix {args.groups}x{args.per_group}, ~{sp['mean_prefix_tokens']:.0f}-token prefixes, "
            f"{args.prefix_output_len} out, policy {args.policy}"
        )
        print(
            f"    cache on : {on['seconds']:6.2f} s  hit rate {on['hit_rate']:.3f} (ideal {on['ideal_hit_rate']:.3f})"
        )
        print(f"    cache off: {off['seconds']:6.2f} s  hit rate {off['hit_rate']:.3f}")
        print(
            f"    speedup {sp['speedup']:.2f}x (target >= 3x); hit rate {sp['hit_rate_vs_ideal']:.1%} of ideal "
            f"(target >= 90%)"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
