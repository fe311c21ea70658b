"""One prepared device run of radixgen's GPU path: CUDA tests and benchmarks, results as JSON and a log.

    bash benchmarks/gpu_check.sh [--dry-run] [--budget-s S] [--only STEP,...]    (OUT=dir, default ./gpu_check_out)

Steps, each in its own process with its own time cap, inside one global budget (a step that fails or runs out of
time is recorded and the run goes on; steps the budget no longer admits are recorded as skipped):

  env           device, versions, Triton compiled (GPU) or interpreted (dry run)
  kernel_tests  pytest tests/test_kernels.py: every Triton kernel against its torch reference, compiled on CUDA
  model_tests   pytest: the stories260K golden text through the triton backend, batching invariance (plain,
                chunked, retraction), prefix reuse, bfloat16 against transformers, all on RADIXGEN_TEST_DEVICE
  kernels       max-abs errors at benchmark shapes; decode attention bandwidth vs a device copy (batch 64, 2k
                context), extend vs SDPA, bitmask (bench_kernels.py)
  offline       ~220M random Llama, bf16: Engine throughput at batch 1 / 32 / 128; Engine vs HF generate
  serving       TTFT / TPOT / ITL through the server at concurrency 1 and 64 (bench_serving.py)

The JSON ($OUT/gpu_check.json) is rewritten after every step: ``steps.<name>`` holds status (ok / failed /
timeout / skipped), seconds, the result, its ``checks`` (named booleans: is what was measured right) and, for
benchmarks, ``targets`` (the issue's goals, reported, not enforced). ``summary`` lists failed steps and checks;
the exit status is 0 only when every step ran and every check passed. ``--dry-run`` runs the same steps on the
CPU with tiny sizes (gpu_check_profile.DRY) so that the script is proven before device time is spent on it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpu_check_process import ProcessResult, kill_all, run_step_process
from gpu_check_profile import PROFILES, Profile

# a step: (its name, the profile, a scratch directory, the environment, its timeout in s) -> its JSON record
Runner = Callable[[str, Profile, Path, dict[str, str], float], dict[str, Any]]

REPO = Path(__file__).resolve().parents[1]
STEPS_SCRIPT = Path(__file__).resolve().parent / "gpu_check_steps.py"
MIN_STEP_S = 10.0  # a step is not started with less of the budget left
OUTPUT_TAIL = 40  # lines of a failed step's output kept in the JSON


class Terminated(Exception):
    """SIGTERM reached the driver (gpu_check.sh's hard time limit): running steps are ended, the JSON kept."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def parse_junit(path: Path) -> dict[str, Any]:
    """pytest's JUnit XML (xunit1) → counts, and per test: outcome, seconds, the test's ``record_property``
    values, and the first line of a failure message."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, message = {"failure": "failed"}.get(tag, tag), (node.get("message") or "").split("\n")[0]
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        test: dict[str, Any] = {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                                "seconds": float(case.get("time") or 0.0)}  # fmt: skip
        if props:
            test["properties"] = props
        if message:
            test["message"] = message[:300]
        tests.append(test)
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {**counts, "tests": tests}


def pytest_step(args: tuple[str, ...], workers: int = 1) -> Runner:
    """A step running pytest on ``args`` (from the repository root, so pyproject's pytest settings apply), with
    ``workers`` pytest-xdist workers when more than one is asked for and xdist is installed."""

    def run(name: str, profile: Profile, work: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
        junit = work / f"{name}.xml"
        xdist = ["-n", str(workers)] if workers > 1 and importlib.util.find_spec("xdist") is not None else []
        cmd = [sys.executable, "-P", "-m", "pytest", *args, *xdist, "-p", "no:cacheprovider",
               f"--junitxml={junit}", "-o", "junit_family=xunit1", "-rfEs"]  # fmt: skip
        proc = run_step_process(name, cmd, REPO, env, timeout)
        record: dict[str, Any] = {"command": " ".join(["pytest", *args, *xdist])}
        if junit.is_file():
            result = parse_junit(junit)
            record["result"] = result
            record["checks"] = {"no_failures": result["failed"] + result["error"] == 0,
                                "tests_ran": result["passed"] > 0}  # fmt: skip
        return _finish(record, proc)

    return run


def script_step(name: str, profile: Profile, work: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run step ``name`` of gpu_check_steps.py (its result file carries result / checks / targets)."""
    out = work / f"{name}.json"
    cmd = [sys.executable, str(STEPS_SCRIPT), name, "--profile", profile.name, "--result", str(out),
           "--work", str(work)]  # fmt: skip
    proc = run_step_process(name, cmd, REPO, env, timeout)
    record: dict[str, Any] = {}
    if proc.returncode == 0 and out.is_file():
        record |= json.loads(out.read_text())
    return _finish(record, proc)


def _finish(record: dict[str, Any], proc: ProcessResult) -> dict[str, Any]:
    """Status (ok: exit 0 with checks; timeout; failed), wall and CPU seconds, and the output's tail if not ok."""
    rc = proc.returncode
    status = "timeout" if rc is None else "ok" if rc == 0 and "checks" in record else "failed"
    record = {"status": status, "exit_status": rc, **record, "seconds": proc.seconds, "cpu_s": proc.cpu_s}
    if status != "ok":
        record["output_tail"] = proc.lines[-OUTPUT_TAIL:]
    return record


def step_runners(profile: Profile) -> dict[str, Runner]:
    """The profile's steps, in order."""
    runners = {
        "kernel_tests": pytest_step(profile.kernel_tests, profile.kernel_test_workers),
        "model_tests": pytest_step(profile.model_tests),
    }
    return {name: runners.get(name, script_step) for name in profile.steps}


def step_env(profile: Profile) -> dict[str, str]:
    """The environment of every step: ours with the profile's variables set (or removed, for ``None``)."""
    env = {k: v for k, v in os.environ.items() if k not in profile.env or profile.env[k] is not None}
    env |= {k: v for k, v in profile.env.items() if v is not None}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def summarize(steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Failed / timed-out / skipped steps and failed checks (``step.check``)."""
    return {
        "steps_ok": [n for n, s in steps.items() if s["status"] == "ok"],
        "steps_not_ok": {n: s["status"] for n, s in steps.items() if s["status"] != "ok"},
        "checks_failed": [f"{n}.{c}" for n, s in steps.items() for c, ok in s.get("checks", {}).items() if not ok],
        "targets": {f"{n}.{t}": v for n, s in steps.items() for t, v in s.get("targets", {}).items()},
    }


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


class Run:
    """One run of ``steps``: ``profile.parallel_steps`` at a time (1 on the GPU: measurements must not overlap),
    each within the global ``budget`` seconds; the JSON at ``path`` is rewritten after every step."""

    def __init__(self, profile: Profile, steps: list[str], budget: float, path: Path) -> None:
        self.profile, self.steps, self.budget, self.path = profile, steps, budget, path
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.record: dict[str, Any] = {
            "profile": profile.name, "device": profile.device, "dtype": profile.dtype, "budget_s": budget,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": _git_commit(),
            "steps": {name: {"status": "pending"} for name in steps},
        }  # fmt: skip
        self.env = step_env(profile)
        self.runners = step_runners(profile)

    def execute(self) -> None:
        """Run every step (in profile order as lanes free up) and write the final JSON."""
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp, ThreadPoolExecutor(
            self.profile.parallel_steps
        ) as pool:
            futures = [pool.submit(self._step, name, Path(tmp)) for name in self.steps]
            try:
                while not all(f.done() for f in futures):  # the main thread stays free for SIGTERM
                    time.sleep(0.2)
            except BaseException:  # Terminated, KeyboardInterrupt: end the running steps before the pool waits
                kill_all()
                raise
            for f in futures:
                f.result()
        self.finish(None)

    def _step(self, name: str, work: Path) -> None:
        left = self.budget - (time.monotonic() - self.start)
        if left < MIN_STEP_S:
            self._store(name, {"status": "skipped", "reason": f"global budget: {left:.0f} s left"})
            return
        timeout = min(self.profile.caps[name], left)
        print(f"== {name} (up to {timeout:.0f} s)", flush=True)
        try:
            step = self.runners[name](name, self.profile, work, self.env, timeout)
        except Exception as e:  # the driver's own failure on this step (the step's process is already gone)
            step = {"status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": 0.0, "cpu_s": 0.0}
        self._store(name, {**step, "timeout_s": timeout})
        print(f"== {name}: {step['status']} in {step['seconds']:.1f} s ({step['cpu_s']:.1f} CPU s)", flush=True)

    def _store(self, name: str, step: dict[str, Any]) -> None:
        with self.lock:
            self.record["steps"][name] = step
            self._write()

    def finish(self, reason: str | None) -> None:
        """Mark steps still pending (``reason``: why the run stopped) and write the JSON."""
        with self.lock:
            if reason is not None:
                for step in self.record["steps"].values():
                    if step["status"] == "pending":
                        step.update(status="timeout", reason=reason)
            self._write()

    def _write(self) -> None:
        self.record["summary"] = summarize(self.record["steps"])
        self.record["seconds"] = time.monotonic() - self.start
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str))
        tmp.replace(self.path)  # a reader (or a kill) never sees half a file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter")
    parser.add_argument("--budget-s", type=float, default=None, help="global time budget (default: gpu 430, dry 240)")
    parser.add_argument("--only", default=None, help="comma-separated steps to run (default: all)")
    args = parser.parse_args(argv)
    profile = PROFILES["dry" if args.dry_run else "gpu"]
    budget = args.budget_s if args.budget_s is not None else (240.0 if args.dry_run else 430.0)
    if budget <= 0:
        parser.error(f"--budget-s: must be > 0, got {budget}")
    only = profile.steps if args.only is None else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(only) - set(profile.steps))
    if unknown or not only:
        parser.error(f"--only: unknown step(s) {unknown}; steps are {', '.join(profile.steps)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(profile, [n for n in profile.steps if n in only], budget, out / "gpu_check.json")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run.execute()
    except Terminated:
        run.finish("SIGTERM (the hard time limit)")
        return 124
    summary = run.record["summary"]
    print(json.dumps({k: summary[k] for k in ("steps_ok", "steps_not_ok", "checks_failed")}, indent=2))
    print(f"wrote {run.path} ({run.record['seconds']:.0f} s)")
    return 0 if not summary["steps_not_ok"] and not summary["checks_failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
