"""benchmarks/gpu_check.sh, the one prepared device run, proven on the CPU: ``--dry-run`` runs every step (the
CUDA tests, the kernel accuracy and bandwidth measurement, offline Engine vs HF, serving TTFT/TPOT) with tiny sizes
and the Triton interpreter, and the JSON must carry a real result for each, not just keys. Also: the global time
budget skips what it cannot fit, and the device bundle lays radixgen out from pyproject.toml's package-dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from shared_paths import REPO, load_benchmark

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "kernel_tests", "model_tests", "kernels", "offline", "serving"]


def _env(out: Path) -> dict[str, str]:
    # the script sets the profile's variables itself; drop the test session's own device settings
    drop = ("TRITON_INTERPRET", "RADIXGEN_TEST_DEVICE", "RADIXGEN_SLOW_TESTS", "PYTEST_CURRENT_TEST")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OUT": str(out), "PYTHON": sys.executable}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gpu_check_out")
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=_env(out), capture_output=True, text=True,
                         timeout=400)  # fmt: skip
    path = out / "gpu_check.json"
    assert path.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    return res, json.loads(path.read_text()), out


def _tests(step: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["test"].rsplit("::", 1)[1]: t for t in step["result"]["tests"]}


def test_dry_run_every_step_ok(dry_run) -> None:
    res, record, out = dry_run
    summary = record["summary"]
    assert res.returncode == 0, json.dumps(summary, indent=1) + res.stdout[-4000:]
    assert record["profile"] == "dry" and list(record["steps"]) == STEPS
    for name, step in record["steps"].items():
        assert step["status"] == "ok", (name, step.get("output_tail"))
        assert step["checks"] and all(step["checks"].values()), (name, step["checks"])
        assert 0 < step["seconds"] <= step["timeout_s"]
    assert summary["steps_not_ok"] == {} and summary["checks_failed"] == []
    log = (out / "gpu_check.log").read_text()
    assert all(f"== {name}: ok" in log for name in STEPS)
    assert "[model_tests]" in log and "gpu_check.sh: exit status 0" in log


def test_dry_run_tests_and_kernels_results(dry_run) -> None:
    steps = dry_run[1]["steps"]
    env = steps["env"]["result"]
    assert env["triton_interpret"] is True and env["cuda_available"] is False and env["torch"]
    kernel_tests = steps["kernel_tests"]["result"]
    assert kernel_tests["passed"] >= 5 and kernel_tests["failed"] == kernel_tests["error"] == 0
    tests = _tests(steps["model_tests"])
    for name in ("test_golden_with_triton_backend", "test_golden_greedy_from_bos", "test_batching_invariance",
                 "test_prefix_reuse_reports_cached_tokens", "test_bfloat16_on_test_device_matches_transformers"):
        assert tests[name]["outcome"] == "passed", tests[name]  # fmt: skip
    golden = tests["test_golden_with_triton_backend"]["properties"]
    assert int(golden["golden_tokens"]) == 4
    assert int(golden["golden_chars_matched"]) == int(golden["golden_chars_generated"]) >= 8
    bf16 = tests["test_bfloat16_on_test_device_matches_transformers"]["properties"]
    assert bf16["device"] == "cpu" and 0 < float(bf16["bf16_max_abs_err"]) <= 3 * float(bf16["hf_bf16_max_abs_err"])
    assert float(bf16["top1_agreement"]) >= 0.95
    kernels = steps["kernels"]["result"]
    for name in ("decode_attention", "extend_attention"):
        acc = kernels["accuracy"][name]
        assert 0 <= acc["max_abs_err"] <= acc["atol"] == 3e-2, acc
    assert kernels["accuracy"]["token_bitmask"]["equal_to_reference"] is True
    best = kernels["decode_best"]
    assert best["GB/s"] > best["kv_GB/s"] > 0 and best["copy GB/s"] > 0
    assert best["ratio_vs_copy"] == pytest.approx(best["GB/s"] / best["copy GB/s"])
    assert kernels["extend"][0]["ms"] > 0 and kernels["extend"][0]["sdpa ms"] > 0 and kernels["bitmask"][0]["GB/s"] > 0
    assert steps["kernels"]["targets"]["decode_bandwidth_vs_copy"]["target"] == ">= 0.60"


def test_dry_run_benchmark_results(dry_run) -> None:
    steps = dry_run[1]["steps"]
    offline = steps["offline"]["result"]
    assert [b["batch"] for b in offline["batches"]] == [1, 2, 4]
    for b in offline["batches"]:
        assert b["out_tok_s"] > 0 and b["output_tokens"] == b["batch"] * offline["output_len"]
    vs_hf = offline["vs_hf"]
    assert vs_hf["engine_out_tok_s"] > 0 and vs_hf["hf_out_tok_s"] > 0 and vs_hf["speedup"] > 0
    # same dummy weights in float32: HF generate must produce the Engine's greedy tokens
    assert vs_hf["first8_greedy_agreement"] == 1.0
    assert offline["model"]["parameters"] > 0 and offline["model"]["device"] == "cpu"
    runs = steps["serving"]["result"]["runs"]
    assert [r["max_concurrency"] for r in runs] == [1, 4]
    for r in runs:
        assert r["completed"] == r["num_prompts"] and r["failed"] == 0
        assert r["ttft_ms"]["p50"] > 0 and r["tpot_ms"]["p50"] > 0 and r["output_throughput"] > 0


def test_budget_skips_steps_it_cannot_fit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--budget-s", "5", "--only", "env,serving"],
                         env=_env(out), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["budget_s"] == 5 and list(record["steps"]) == ["env", "serving"]
    assert all(s["status"] == "skipped" and "budget" in s["reason"] for s in record["steps"].values())
    assert record["summary"]["steps_not_ok"] == {"env": "skipped", "serving": "skipped"}
    bad = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only", "nope"], env=_env(out), capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--only: unknown step(s) ['nope']" in bad.stdout  # the script logs both streams


def test_bundle_links_radixgen_from_pyproject(tmp_path: Path) -> None:
    """The device-side layout: radixgen's packages under the target resolve to this tree's folders."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import gpu_check_bundle as b; from pathlib import Path; "
        "print(b.link_package(b.REPO, Path(sys.argv[2])))"
    )
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-P", "-c", script, str(REPO / "benchmarks"), str(target)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    probe = "import radixgen, radixgen.runtime.models, radixgen.kernels as k; print(radixgen.__file__, k.__file__)"
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-P", "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    init, kernels = res.stdout.split()
    assert init == str(target / "radixgen" / "__init__.py") and kernels == str(target / "radixgen/kernels/__init__.py")
    assert Path(kernels).resolve() == REPO / "kernels" / "__init__.py"
    (info,) = target.glob("radixgen-*.dist-info")
    assert (info / "METADATA").read_text().startswith("Metadata-Version: 2.1\nName: radixgen\n")


def _ends_soon(pid: int) -> bool:
    """True once ``pid`` is gone or a zombie (killed, not yet reaped by whoever inherited it), within 5 s."""
    for _ in range(50):
        try:
            if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_step_process_timeout_ends_its_whole_group(tmp_path: Path) -> None:
    """A step past its timeout is ended with everything it started (a server left running, say)."""
    proc_mod = load_benchmark("gpu_check_process")
    marker = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    res = proc_mod.run_step_process("t", [sys.executable, "-c", script], tmp_path, dict(os.environ), timeout=2.0)
    assert res.returncode is None and res.lines == ["started"] and 1.9 < res.seconds < 15
    assert _ends_soon(int(marker.read_text())), "the step's grandchild outlived the step's timeout"
    done = proc_mod.run_step_process("t", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path, dict(os.environ),
                                     timeout=30.0)  # fmt: skip
    assert done.returncode == 3 and done.cpu_s > 0
