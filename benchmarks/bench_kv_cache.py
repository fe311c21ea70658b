"""KV cache dtypes (``--kv-cache-dtype auto | int8 | fp8_e4m3 | fp8_e5m2``): capacity, quality and batch-1 TPOT.

1. Capacity: KV tokens that fit in the same budget (256 MiB) per KV dtype, from the engine's own pool sizing
   (``bench_quantization.kv_capacity``) for bench-llama-40m (head_dim 64); bytes per token
   (``TokenToKVPool.bytes_per_token``, what the engine sizes the pool with) for stories260K (head_dim 8), whose
   256 MiB pool would be capped by max_running_requests x context.
2. Quality, teacher-forced against the float32-KV model (same weights, float32 compute):
   - bench-llama-40m with seeded dummy weights over ``--prompts`` ShareGPT prompts (<= 128 tokens; the prompt is
     one extend, whose attention reads the new tokens' K/V as stored): mean KL(f32 || quantized) and top-1
     agreement of the next-token distributions;
   - stories260K (real weights) along its 200-token float32-KV greedy continuation of BOS, decoded token by
     token from the pool: max |logit diff|, mean KL, top-1 agreement, and — free-running — how many of the 200
     greedy tokens match before the first difference.
3. TPOT at batch 1 (bench-llama-40m, dummy weights, ShareGPT prompts joined to ``--context`` tokens): decode
   ms/step for float32, int8 and fp8_e4m3 KV from the scheduler's step timers, median and minimum of ``--repeats``
   runs alternating between the engines, both with the dense decode KV copy (``--dense-decode-kv-mb 64`` for all: it
   holds dequantized K/V, so only the new token is dequantized per step) and with the gather path
   (``--dense-decode-kv-mb 0``: the whole KV is gathered and dequantized every step).

Run: python benchmarks/bench_kv_cache.py [--repeats 7] [--steps 32] [--prompts 4] [--context 1024] [--num-threads 1]
Writes benchmarks/results/kv_cache.json; prints the load average before and after (quote it with the figures).
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import torch
from bench_host_overhead import measure
from bench_quantization import KV_DTYPES, kl_and_top1, kv_capacity
from common import BENCH_MODEL, RESULTS, SHARED, finish_report, sharegpt_prompts
from model_harness import KVHarness, decode_from_bos  # on sys.path through bench_quantization (tests' driver)

from radixgen.radix.memory_pool import TokenToKVPool
from radixgen.runtime import Engine
from radixgen.runtime.fast_tokenizer import load_hf_tokenizer
from radixgen.runtime.models import ModelConfig, load_model

STORIES = SHARED / "models" / "stories260K"
QUANT = tuple(kv for kv in KV_DTYPES if kv != "auto")
# dense decode copy budget of the TPOT runs, the same for every KV dtype (the default, a quarter of the pool's
# bytes, is 4x smaller for a quantized pool of as many tokens, and its dense copy holds float32 K/V)
DENSE_MB = 64


def _extend_logits(model: Any, ids: list[int], kv_cache_dtype: str) -> torch.Tensor:
    h = KVHarness(model, num_slots=len(ids) + 8, kv_cache_dtype=kv_cache_dtype)
    return h.extend([h.new_request()], [ids])  # [len, vocab] float32


def quality(num_prompts: int) -> dict[str, Any]:
    out: dict[str, Any] = {kv: {} for kv in QUANT}
    cfg40 = ModelConfig.from_pretrained(str(BENCH_MODEL))
    m40 = load_model(cfg40, load_format="dummy")
    prompts = sharegpt_prompts(load_hf_tokenizer(str(BENCH_MODEL)), num_prompts, 128)
    refs = [_extend_logits(m40, p, "auto") for p in prompts]
    stories = load_model(ModelConfig.from_pretrained(str(STORIES)))
    st_ref, st_ids = decode_from_bos(stories, 200)
    for kv in QUANT:
        pairs = [kl_and_top1(r, _extend_logits(m40, p, kv)) for r, p in zip(refs, prompts, strict=True)]
        st_got, _ = decode_from_bos(stories, 200, st_ids, kv)
        st_kl, st_top1 = kl_and_top1(st_ref, st_got)
        _, free = decode_from_bos(stories, 200, None, kv)
        same = next((i for i, (a, b) in enumerate(zip(free, st_ids, strict=True)) if a != b), len(st_ids))
        out[kv] = {
            "kl_40m_sharegpt": statistics.mean(k for k, _ in pairs),
            "top1_40m_sharegpt": statistics.mean(t for _, t in pairs),
            "stories_max_abs": (st_got - st_ref).abs().max().item(),
            "stories_kl": st_kl,
            "stories_top1": st_top1,
            "stories_free_running_prefix": same,
        }
    out["prompt_tokens_40m"] = sum(len(p) for p in prompts)
    return out


def tpot(repeats: int, steps: int, context: int, threads: int) -> dict[str, Any]:
    kvs = ("auto", "int8", "fp8_e4m3")
    configs = {f"{kv}/{path}": (kv, mb) for kv in kvs for path, mb in (("dense", DENSE_MB), ("gather", 0))}
    engines = {
        name: Engine(str(BENCH_MODEL), load_format="dummy", max_total_tokens=8192, kv_cache_dtype=kv,
                     num_threads=threads, dense_decode_kv_mb=mb)
        for name, (kv, mb) in configs.items()
    }  # fmt: skip
    joined: list[int] = []
    for ids in sharegpt_prompts(next(iter(engines.values())).tokenizer, 64, 256):
        joined += ids
    prompt = [joined[:context]]
    for name, e in engines.items():
        measure(e, prompt, 2, f"warm-{name}")
    ms: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(repeats):
        for name, e in engines.items():  # alternate: load drifts hit every configuration alike
            ms[name].append(measure(e, prompt, steps, f"{name}-{r}")["total_ms_per_step"])
    medians = {name: statistics.median(v) for name, v in ms.items()}
    return {"prompt_tokens": len(prompt[0]), "ms_per_step": medians, "min_ms_per_step": {n: min(v) for n, v in
            ms.items()}, "runs": ms}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=4, help="ShareGPT prompts of the 40m quality figure")
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens of the TPOT runs")
    parser.add_argument("--num-threads", type=int, default=1, help="intra-op threads of the TPOT engines")
    parser.add_argument("--out", default=str(RESULTS / "kv_cache.json"))
    args = parser.parse_args()
    report: dict[str, Any] = {"load_before": os.getloadavg(), "threads": torch.get_num_threads()}
    report["capacity_40m"] = kv_capacity(str(BENCH_MODEL))
    st = ModelConfig.from_pretrained(str(STORIES))
    st_bytes = {kv: TokenToKVPool.bytes_per_token(st.num_hidden_layers, st.num_key_value_heads, st.head_dim,
                                                  torch.float32, kv) for kv in KV_DTYPES}  # fmt: skip
    report["bytes_per_token_stories260K"] = st_bytes
    print("KV tokens in 256 MiB, bench-llama-40m (ratio to float32 KV, bytes per token):")
    for kv, r in report["capacity_40m"].items():
        print(f"  {kv:9} {r['max_total_tokens']:8d} ({r['ratio_to_f32']:.2f}x, {r['kv_bytes_per_token']} B)")
    print("stories260K bytes per token: " + ", ".join(f"{kv} {b} ({st_bytes['auto'] / b:.2f}x)"
                                                      for kv, b in st_bytes.items()))
    report["quality"] = quality(args.prompts)
    print(f"\nquality vs float32 KV ({report['quality']['prompt_tokens_40m']} ShareGPT prompt tokens on 40m dummy; "
          "stories260K 200 greedy tokens from BOS)")
    for kv in QUANT:
        q = report["quality"][kv]
        print(f"  {kv:9} 40m KL {q['kl_40m_sharegpt']:.2e} top-1 {q['top1_40m_sharegpt']:.3f} | stories max-abs "
              f"{q['stories_max_abs']:.3f} KL {q['stories_kl']:.2e} top-1 {q['stories_top1']:.3f} free-running "
              f"{q['stories_free_running_prefix']}/200")
    report["tpot"] = tpot(args.repeats, args.steps, args.context, args.num_threads)
    print(f"\nTPOT at batch 1 (40m dummy, {report['tpot']['prompt_tokens']}-token prompt, {args.num_threads} "
          f"thread(s)), median of {args.repeats}:")
    for name, ms in report["tpot"]["ms_per_step"].items():
        runs = ", ".join(f"{x:.2f}" for x in report["tpot"]["runs"][name])
        least = report["tpot"]["min_ms_per_step"][name]
        print(f"  {name:16} median {ms:7.2f} ms/step, min {least:7.2f}  (runs {runs})")
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
