"""Speculative decoding (issue 19): n-gram and draft-model speculation against no speculation, side by side.

Part 1 — n-gram (``--speculative-algorithm ngram``) on stories260K (a real 260K-parameter Llama, context 512):
    * ``copy``: a story passage followed by the start of the same passage again, so the greedy continuation copies
      the prompt (the extraction / editing / RAG case prompt lookup is made for);
    * ``sharegpt``: ShareGPT first-turn prompts (<= 200 tokens with the stories tokenizer);
    * ``loop-40m``: the same kind of prompts on bench-llama-40m with its seeded dummy weights, whose greedy
      continuation soon repeats one token: not a real workload, but an acceptance length near K + 1 on a model
      whose forward costs milliseconds, i.e. the speedup the mechanism gives where outputs repeat (lists, tables,
      loops, long verbatim copies).
  At batch 1 (requests one after another) and concurrency 8 (8 requests in one engine batch): output tokens per
  decode-phase target forward (SGLang's ``spec_accept_length``), draft acceptance rate, wall time and the speedup
  over the same requests without speculation, measured in the same run.

Part 2 — draft model (``--speculative-algorithm draft``): target bench-llama-40m (dummy weights written as a
  checkpoint) with drafts of controlled agreement: the target's own weights plus Gaussian noise of ``sigma`` times
  each tensor's standard deviation (sigma 0 = the target itself, acceptance 100%). A draft of the target's size
  costs as much per token as the target, so the measured speedups show the verify overhead rather than a useful
  configuration; the script also reports the measured costs (one draft step, one verify forward) and the
  break-even acceptance rate they imply for a draft ``c`` times cheaper than the target, from the expected tokens
  per forward ``(1 - a^(K+1)) / (1 - a)`` (Leviathan et al. 2023, eq. 1) at batch 1 and 16.

Greedy outputs with and without speculation are compared token for token in every configuration.

    python benchmarks/bench_speculative.py [--quick] [--k 4] [--num-threads 2]

Writes ``benchmarks/results/bench_speculative.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import BENCH_MODEL, RESULTS, model_config, sharegpt_prompts, write_dummy_checkpoint

from radixgen.runtime import Engine

STORIES = BENCH_MODEL.parent / "stories260K"


def copy_prompts(tokenizer: Any, n: int, passage: int = 120, restart: int = 12) -> list[list[int]]:
    """``n`` prompts: a passage of ``passage`` tokens from the golden story text (different offsets), then its
    first ``restart`` tokens again."""
    ids = tokenizer.encode((STORIES / "reference_greedy_from_bos_200.txt").read_text())
    out = []
    for i in range(n):
        start = (13 * i) % max(1, len(ids) - passage)
        p = ids[start : start + passage]
        out.append([1, *p, *p[:restart]])
    return out


def run(engine: Engine, prompts: list[list[int]], max_new: int, concurrency: int) -> dict[str, Any]:
    """Greedy generation of every prompt, ``concurrency`` at a time; wall time, outputs and spec statistics."""
    params = {"temperature": 0, "max_new_tokens": max_new, "ignore_eos": True}
    sched = engine.scheduler
    spec = sched.spec
    st = spec.stats if spec is not None else None
    before = (st.verify_forwards, st.emitted, st.proposed, st.accepted) if st is not None else None
    outs: list[list[int]] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), concurrency):
        res = engine.generate(input_ids=prompts[i : i + concurrency], sampling_params=params)
        outs.extend(o["output_ids"] for o in res)  # type: ignore[index]
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"wall_s": wall, "out_tokens": sum(map(len, outs)), "outputs": outs}
    if spec is not None and before is not None:
        s = spec.stats
        verify, emitted = s.verify_forwards - before[0], s.emitted - before[1]
        proposed, accepted = s.proposed - before[2], s.accepted - before[3]
        row["accept_length"] = emitted / verify if verify else 0.0
        row["acceptance_rate"] = accepted / proposed if proposed else 0.0
    engine.flush_cache()
    return row


def ngram_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    common = {"max_total_tokens": 16384, "max_running_requests": 16, "num_threads": args.num_threads}
    n = 4 if args.quick else 16
    stories = {"model_path": str(STORIES)}
    bench = {"model_path": str(BENCH_MODEL), "load_format": "dummy"}
    off = Engine(**stories, **common)
    bench_off = Engine(**bench, **common)
    workloads = {  # name: (model, prompts)
        "copy": (stories, copy_prompts(off.tokenizer, n)),
        "sharegpt": (stories, sharegpt_prompts(off.tokenizer, n, max_tokens=200, seed=0)),
        "loop-40m": (bench, sharegpt_prompts(bench_off.tokenizer, n, max_tokens=200, seed=0)),
    }
    engines = {id(stories): off, id(bench): bench_off}
    rows = []
    for name, (model, prompts) in workloads.items():
        base_engine = engines[id(model)]
        on = Engine(**model, **common, speculative_algorithm="ngram", speculative_num_draft_tokens=args.k)
        for conc in (1, 8):
            run(on, prompts[:2], 8, conc)  # warm-up
            base = run(base_engine, prompts, args.max_new, conc)
            spec = run(on, prompts, args.max_new, conc)
            rows.append({
                "workload": name, "concurrency": conc, "requests": len(prompts),
                "accept_length": spec["accept_length"], "acceptance_rate": spec["acceptance_rate"],
                "off_s": base["wall_s"], "on_s": spec["wall_s"], "speedup": base["wall_s"] / spec["wall_s"],
                "greedy_equal": base["outputs"] == spec["outputs"],
            })  # fmt: skip
            print(json.dumps(rows[-1]))
        on.scheduler.shutdown()
    return rows


def noisy_copy(src: Path, out: Path, sigma: float, seed: int) -> Path:
    """A copy of checkpoint ``src`` whose every tensor got N(0, (sigma * its std)^2) noise."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    gen = torch.Generator().manual_seed(seed)
    w = load_file(str(src / "model.safetensors"))
    noisy = {k: (v + torch.randn(v.shape, generator=gen) * sigma * float(v.float().std())).contiguous()
             for k, v in w.items()}  # fmt: skip
    save_file(noisy, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def draft_part(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    target = write_dummy_checkpoint(model_config(BENCH_MODEL), tmp / "target", seed=0)
    common = {"max_total_tokens": 32768, "max_running_requests": 32, "num_threads": args.num_threads}
    off = Engine(str(target), **common)
    prompts = sharegpt_prompts(off.tokenizer, 16, max_tokens=64, seed=1)
    sigmas = (0.0, 0.3) if args.quick else (0.0, 0.1, 0.3, 1.0)
    max_new = 32
    results: dict[str, Any] = {"points": []}
    base = {c: run(off, prompts if c > 1 else prompts[:4], max_new, c) for c in (1, 16)}
    # measured costs: one verify forward ~ one extend of K+1 tokens per request; one draft step ~ one decode step
    # (same-size draft): derived from the no-speculation decode rate
    for c in (1, 16):
        reqs = 16 if c > 1 else 4
        results[f"off_decode_ms_per_step_c{c}"] = 1000 * base[c]["wall_s"] / (max_new * reqs / c)
    for i, sigma in enumerate(sigmas):
        draft = noisy_copy(target, tmp / f"draft{i}", sigma, seed=10 + i)
        on = Engine(str(target), **common, speculative_algorithm="draft", speculative_draft_model_path=str(draft),
                    speculative_num_draft_tokens=args.k)  # fmt: skip
        for c in (1, 16):
            sel = prompts if c > 1 else prompts[:4]
            spec = run(on, sel, max_new, c)
            point = {
                "sigma": sigma, "concurrency": c, "acceptance_rate": spec["acceptance_rate"],
                "accept_length": spec["accept_length"], "off_s": base[c]["wall_s"], "on_s": spec["wall_s"],
                "speedup": base[c]["wall_s"] / spec["wall_s"], "greedy_equal": spec["outputs"] == base[c]["outputs"],
            }  # fmt: skip
            results["points"].append(point)
            print(json.dumps(point))
        on.scheduler.shutdown()
        shutil.rmtree(draft)
    # break-even under the cost model: time per verify round = t_verify + K * c * t_step (draft c times cheaper)
    k = args.k
    for c in (1, 16):
        pts = [p for p in results["points"] if p["concurrency"] == c and p["sigma"] == 0.0]
        if not pts:
            continue
        # at sigma 0 every draft is accepted: on_s = rounds * (t_verify + K * t_draft) with t_draft = t_step
        t_step = results[f"off_decode_ms_per_step_c{c}"]
        rounds = max_new / (k + 1)
        round_ms = 1000 * pts[0]["on_s"] / ((16 if c > 1 else 4) / c) / rounds
        t_verify = max(round_ms - k * t_step, t_step)
        table = {}
        for ratio in (1, 4, 10, 50):
            cost = t_verify + k * t_step / ratio
            a_lo, a_hi = 0.0, 1.0
            for _ in range(40):  # smallest acceptance rate whose expected tokens per round pay for the round
                a = (a_lo + a_hi) / 2
                tokens = (1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1
                a_lo, a_hi = (a, a_hi) if tokens * t_step < cost else (a_lo, a)
            table[f"draft_{ratio}x_cheaper"] = round(a_hi, 3)
        results[f"break_even_acceptance_c{c}"] = {"t_step_ms": t_step, "t_verify_ms": t_verify, **table}
        print(f"concurrency {c}: {json.dumps(results[f'break_even_acceptance_c{c}'])}")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer prompts and drafts")
    ap.add_argument("--k", type=int, default=4, help="speculative_num_draft_tokens")
    ap.add_argument("--max-new", type=int, default=96, help="output tokens per request (n-gram part)")
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--skip-draft", action="store_true", help="only the n-gram part")
    ap.add_argument("--skip-ngram", action="store_true", help="only the draft-model part")
    args = ap.parse_args()
    torch.set_num_threads(args.num_threads)
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "k": args.k}
    if not args.skip_ngram:
        out["ngram"] = ngram_part(args)
    if not args.skip_draft:
        with tempfile.TemporaryDirectory() as tmp:
            out["draft"] = draft_part(args, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_speculative.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
