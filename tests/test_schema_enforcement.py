"""Issue 17 in CI: the MaskBench-style check of benchmarks/bench_schema_enforcement.py on a spread sample of the
three shipped JSONSchemaBench subsets, default backend (the full run is the benchmark itself)."""

from __future__ import annotations

import json

from shared_paths import LLAMA2_TOKENIZER, load_benchmark
from transformers import AutoTokenizer


def test_maskbench_sample_on_the_default_path() -> None:
    bench = load_benchmark("bench_schema_enforcement")
    rows = bench.load_rows(bench.SUBSETS, None, every=200)  # ~21 schemas spread over the three subsets
    assert {r["unique_id"].split("--")[0] for r in rows} == set(bench.SUBSETS)
    table = bench.instance_table(rows, cache=None)
    tokenizer = AutoTokenizer.from_pretrained(str(LLAMA2_TOKENIZER))
    r = bench.run_backend("xgrammar", tokenizer, rows, table)
    assert r["valid_instances"] >= 10 * len(rows) // 2 and r["invalid_instances"] >= 5 * len(rows), r
    assert r["invalid_accepted"] == 0, r["failures"]
    assert r["passing"] >= 0.9, (r["passing"], r["top_refusals"], r["failures"])
    assert r["fill_steps"] > 100 and r["fill_us_p50"] < 1000  # timed on every compiled schema


def test_instances_are_labelled_by_the_validator_not_by_construction() -> None:
    instances = load_benchmark("schema_instances")
    schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 5}}, "required": ["a"]}
    valid, invalid = instances.instances(json.dumps(schema))
    check = instances.validator(schema)
    assert valid and invalid
    assert all(check.is_valid(json.loads(v)) for v in valid)
    assert not any(check.is_valid(json.loads(v)) for v in invalid)
    assert any('"zz_extra"' in v for v in valid)  # an added property of an open object stays valid
    assert any("\n" in v for v in valid) and any('":' in v and '": ' not in v for v in valid)  # whitespace forms
