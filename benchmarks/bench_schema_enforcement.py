"""How faithfully each grammar backend enforces real JSON schemas: a MaskBench-style check (issue 17).

For every schema of the shipped JSONSchemaBench subsets (``../shared/datasets/jsonschemabench``: Github_trivial,
Github_easy, Glaiveai2K; Geng et al. 2025, arXiv:2501.10868), through the server's own path —
``GrammarManager.validate`` (size, meta-schema, normalisation, keyword checks) then the backend's ``compile``:

* refused: validation raised a GrammarError (the 400 a client gets); compiled: a grammar came back;
* the instance check (``schema_instances.py``): every valid instance is tokenized with the Llama-2 32k tokenizer
  and fed to a fresh matcher token by token, then eos; it must be accepted to the end and terminate. Every
  invalid instance must be refused somewhere (a token or eos). A schema *passes* when it compiled, no valid
  instance was rejected and no invalid one accepted. Figures: % compiled, % refused, % passing, valid instances
  rejected, invalid instances accepted (the number that must stay 0: a refused schema accepts nothing);
* compile time (validation + compile, ms, p50 / p99 over compiled schemas) and mask fill time
  (``fill_next_token_bitmask`` of one row of the 32k-token bitmask, µs, p50 / p99 over every step of the first
  valid instance of each compiled schema). Both are CPU time of the process (``time.process_time``: the
  benchmark runs nothing else meanwhile, and a backend's helper threads count too), so the figures hold on a
  loaded shared machine, where wall-clock time also counts the time spent waiting for a core.

Instances are drawn once and cached in ``benchmarks/results/schema_instances.json`` (``--refresh`` redraws).

    python benchmarks/bench_schema_enforcement.py [--backends xgrammar llguidance outlines] [--limit N]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))  # the sibling script below (appended: shadows nothing)
from schema_instances import instances, validator  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "datasets" / "jsonschemabench"
TOKENIZER = SHARED / "tokenizers" / "llama2-32k"
SUBSETS = ("Github_trivial", "Github_easy", "Glaiveai2K")
BACKENDS = ("xgrammar", "llguidance", "outlines")
CACHE = Path(__file__).resolve().parent / "results" / "schema_instances.json"
VOCAB = 32000
EOS = 2


def load_rows(subsets: tuple[str, ...] | list[str], limit: int | None, every: int = 1) -> list[dict[str, Any]]:
    """``{"unique_id", "json_schema"}`` rows: every ``every``-th of the first ``limit`` of each subset."""
    rows: list[dict[str, Any]] = []
    for name in subsets:
        lines = [json.loads(x) for x in (DATA / f"{name}.jsonl").read_text().splitlines() if x.strip()]
        rows += lines[: limit or None][::every]
    return rows


def instance_table(rows: list[dict[str, Any]], cache: Path | None, refresh: bool = False) -> dict[str, Any]:
    """``unique_id -> [valid, invalid]`` (serialized instances) for ``rows``, read from / added to ``cache``."""
    from radixgen.grammar.schema_normalize import normalize_schema

    table: dict[str, Any] = {}
    if cache is not None and cache.exists() and not refresh:
        table = json.loads(cache.read_text())
    missing = [r for r in rows if r["unique_id"] not in table]
    for i, r in enumerate(missing):
        try:
            normalized = normalize_schema(json.loads(r["json_schema"]))
        except Exception:  # noqa: BLE001 - an unsatisfiable schema: order keys by the schema itself
            normalized = None
        table[r["unique_id"]] = list(instances(r["json_schema"], normalized))
        if cache is not None and (i % 100 == 99 or i == len(missing) - 1):  # saved as it goes: resumable
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(table))
    return table


def relabel(schema: str, valid: list[str], invalid: list[str]) -> tuple[list[str], list[str]]:
    """The cached instances labelled again by the current validator (``schema_instances.validator``), so a
    cache drawn by an older labelling stays usable."""
    check = validator(json.loads(schema))
    ok = {text: check.is_valid(json.loads(text)) for text in [*valid, *invalid]}
    return [t for t, good in ok.items() if good], [t for t, good in ok.items() if not good]


def accepts(backend: Any, compiled: Any, text: str) -> bool:
    """Whether a fresh matcher of ``compiled`` accepts ``text`` (tokenized by ``backend``) and then eos."""
    m = compiled.matcher()
    return all(m.accept_token(t) for t in backend.encode(text)) and m.accept_token(EOS) and m.is_terminated()


def fill_times_us(backend: Any, compiled: Any, text: str, bitmask: Any) -> list[float]:
    """µs per ``fill_next_token_bitmask`` along ``text`` (one fill before each token and before eos)."""
    m = compiled.matcher()
    out: list[float] = []
    for t in [*backend.encode(text), EOS]:
        t0 = time.process_time_ns()
        m.fill_next_token_bitmask(bitmask, 0)
        out.append((time.process_time_ns() - t0) / 1000)
        if not m.accept_token(t):
            break
    return out


def check_schema(manager: Any, backend: Any, schema: str, valid: list[str], invalid: list[str], bitmask: Any) -> dict:
    """One schema through validation, compile and the instance check (module docstring)."""
    from radixgen.grammar import GrammarError

    t0 = time.process_time()
    try:
        prepared = manager.validate("json_schema", schema)
    except GrammarError as e:
        return {"status": "refused", "reason": str(e)[:160]}
    try:
        compiled = backend.compile(prepared.kind, prepared.spec)
    except GrammarError as e:
        return {"status": "compile_error", "reason": str(e)[:160]}
    compile_ms = (time.process_time() - t0) * 1000
    rejected = [v for v in valid if not accepts(backend, compiled, v)]
    accepted = [v for v in invalid if accepts(backend, compiled, v)]
    fills = fill_times_us(backend, compiled, valid[0], bitmask) if valid else []
    return {
        "status": "compiled",
        "compile_ms": compile_ms,
        "valid_rejected": rejected,
        "invalid_accepted": accepted,
        "fill_us": fills,
        "n_valid": len(valid),
        "n_invalid": len(invalid),
    }


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_backend(name: str, tokenizer: Any, rows: list[dict[str, Any]], table: dict[str, Any]) -> dict[str, Any]:
    """Every row through ``name``'s default path; returns the summary and per-schema failures."""
    from radixgen.grammar import GrammarManager, allocate_token_bitmask, backend_class

    backend = backend_class(name)(tokenizer, VOCAB, [EOS])
    manager = GrammarManager(name, lambda: backend)
    bitmask = allocate_token_bitmask(1, VOCAB)
    results = {}
    for r in rows:
        valid, invalid = relabel(r["json_schema"], *table[r["unique_id"]])
        results[r["unique_id"]] = check_schema(manager, backend, r["json_schema"], valid, invalid, bitmask)
    manager.shutdown()
    done = [x for x in results.values() if x["status"] == "compiled"]
    passing = [x for x in done if not x["valid_rejected"] and not x["invalid_accepted"]]
    fills = [t for x in done for t in x["fill_us"]]
    compile_ms = [x["compile_ms"] for x in done]
    reasons = collections.Counter(x["reason"][:90] for x in results.values() if x["status"] != "compiled")
    n = len(rows)
    return {
        "backend": name,
        "schemas": n,
        "compiled": len(done) / n,
        "refused": sum(x["status"] == "refused" for x in results.values()) / n,
        "compile_error": sum(x["status"] == "compile_error" for x in results.values()) / n,
        "passing": len(passing) / n,
        "passing_of_compiled": len(passing) / len(done) if done else float("nan"),
        "valid_instances": sum(x["n_valid"] for x in done),
        "invalid_instances": sum(x["n_invalid"] for x in done),
        "valid_rejected": sum(len(x["valid_rejected"]) for x in done),
        "invalid_accepted": sum(len(x["invalid_accepted"]) for x in done),
        "compile_ms_p50": _pct(compile_ms, 0.5),
        "compile_ms_p99": _pct(compile_ms, 0.99),
        "fill_us_p50": _pct(fills, 0.5),
        "fill_us_p99": _pct(fills, 0.99),
        "fill_steps": len(fills),
        "top_refusals": reasons.most_common(8),
        "slowest_fills": sorted(
            ((uid, max(x["fill_us"])) for uid, x in results.items() if x["status"] == "compiled" and x["fill_us"]),
            key=lambda t: -t[1],
        )[:10],
        "failures": {
            uid: {k: x[k][:3] for k in ("valid_rejected", "invalid_accepted")}
            for uid, x in results.items()
            if x["status"] == "compiled" and (x["valid_rejected"] or x["invalid_accepted"])
        },
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--subsets", nargs="+", default=list(SUBSETS), choices=SUBSETS)
    p.add_argument("--limit", type=int, default=None, help="only the first N schemas of each subset")
    p.add_argument("--every", type=int, default=1, help="only every k-th schema (a spread sample)")
    p.add_argument("--cache", default=str(CACHE), help="instance cache ('' = none)")
    p.add_argument("--refresh", action="store_true", help="redraw the cached instances")
    p.add_argument("--out", default=None, help="write the results (with per-schema failures) as JSON here")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    rows = load_rows(args.subsets, args.limit, args.every)
    t0 = time.perf_counter()
    table = instance_table(rows, Path(args.cache) if args.cache else None, args.refresh)
    print(f"{len(rows)} schemas, instances ready in {time.perf_counter() - t0:.1f}s")
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    results = []
    for name in args.backends:
        t0 = time.perf_counter()
        r = run_backend(name, tokenizer, rows, table)
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        print(
            f"{name:10s} compiled {r['compiled']:6.1%}  refused {r['refused']:6.1%}  compile-error "
            f"{r['compile_error']:5.1%}  passing {r['passing']:6.1%}  valid rejected {r['valid_rejected']}/"
            f"{r['valid_instances']}  invalid accepted {r['invalid_accepted']}/{r['invalid_instances']}  compile "
            f"p50/p99 {r['compile_ms_p50']:.1f}/{r['compile_ms_p99']:.1f} ms  fill p50/p99 "
            f"{r['fill_us_p50']:.1f}/{r['fill_us_p99']:.1f} us ({r['fill_steps']} steps, {r['wall_s']:.0f}s)"
        )
        for reason, count in r["top_refusals"]:
            print(f"    {count:5d}  {reason}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
