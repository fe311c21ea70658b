"""The JSONSchemaBench benchmark on a small sample: every completed document validates."""

from __future__ import annotations

import math

from shared_paths import load_benchmark


def test_jsonschemabench_sample_all_completed_documents_valid() -> None:
    main = load_benchmark("bench_jsonschemabench").main

    # objects closed: stories260K never ends an open object (JSON Schema's default), it keeps adding properties;
    # tests/test_schema_enforcement.py checks the default (open) path's masks against every instance instead
    argv = ["--limit", "40", "--num-generate", "10", "--max-new-tokens", "160", "--enable-jump-forward"]
    results = main([*argv, "--grammar-strict-json-schema"])
    assert [r["subset"] for r in results] == ["Github_trivial", "Github_easy", "Glaiveai2K"]
    for r in results:
        assert r["generated"] == 10 and r["accepted"] >= 0.7, r
        assert r["completed"] + r["cut_by_length"] == r["generated"] and r["aborted"] == 0, r
        assert r["completed"] > 0 and not math.isnan(r["valid_of_completed"])
        assert r["valid_of_completed"] == 1.0, r["invalid_examples"]
