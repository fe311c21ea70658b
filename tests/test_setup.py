"""Set-up: the repository root never shadows installed packages, and the ``radixgen`` console script.

The top-level folders (``kernels/``, ``grammar/``, ...) share names with real packages: Hugging Face's ``kernels``
is imported by transformers when it loads a model. Code is run through console scripts or ``python -P``, which do
not put the working directory on ``sys.path``; these tests run from the repository root to prove it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from shared_paths import REPO, STORIES

from radixgen.runtime.env_report import env_report, read_lock

BIN = Path(sys.executable).parent


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_hf_kernels_is_installed_and_the_root_would_shadow_it() -> None:
    """The hazard is real here: Hugging Face ``kernels`` is installed, and a plain ``python -c`` from the root
    (which prepends the working directory) resolves ``kernels`` to the project's folder instead."""
    assert metadata.version("kernels")
    res = _run([sys.executable, "-c", "import kernels; print(kernels.__file__)"])
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).resolve() == REPO / "kernels" / "__init__.py"


def test_model_loads_through_transformers_and_radixgen_from_the_repo_root() -> None:
    script = f"""
import kernels, torch
from transformers import AutoModelForCausalLM
from transformers.integrations import hub_kernels  # imports `kernels` (CUDAProperties, ...)
from radixgen.runtime import Engine
print("KERNELS", kernels.__file__)
hf = AutoModelForCausalLM.from_pretrained({str(STORIES)!r})
ids = torch.tensor([[1, 403, 407, 261, 378]])
hf_next = int(hf(ids).logits[0, -1].argmax())
with Engine({str(STORIES)!r}, max_total_tokens=2048) as eng:
    out = eng.generate(input_ids=ids[0].tolist(), sampling_params={{"max_new_tokens": 1, "temperature": 0}})
print("NEXT", hf_next, out["output_ids"][0])
"""
    res = _run([sys.executable, "-P", "-c", script])
    assert res.returncode == 0, res.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines() if line.startswith(("KERNELS", "NEXT")))
    assert "site-packages" in lines["KERNELS"] and not lines["KERNELS"].startswith(str(REPO) + "/kernels")
    hf_next, rg_next = lines["NEXT"].split()
    assert hf_next == rg_next


def test_console_script_help_lists_commands() -> None:
    res = _run([str(BIN / "radixgen"), "--help"])
    assert res.returncode == 0, res.stderr
    for command in ("serve", "generate", "env"):
        assert any(line.split()[:1] == [command] and len(line.split()) > 1 for line in res.stdout.splitlines()), (
            res.stdout
        )
    bad = _run([str(BIN / "radixgen"), "nonsense"])
    assert bad.returncode == 2 and "invalid choice: 'nonsense'" in bad.stderr


def test_console_script_generate_matches_engine(engine) -> None:  # type: ignore[no-untyped-def]
    prompt = "Once upon a time, there was a little"
    res = _run([str(BIN / "radixgen"), "generate", "--model", str(STORIES), "--prompt", prompt,
                "--max-new-tokens", "24", "--max-total-tokens", "2048"])
    assert res.returncode == 0, res.stderr[-3000:]
    expected = engine.generate(prompt, {"max_new_tokens": 24, "temperature": 0})["text"]
    assert expected and res.stdout == expected + "\n"
    bad = _run([str(BIN / "radixgen"), "generate", "--model", str(STORIES), "--prompt", "x", "--temperature", "-1"])
    assert bad.returncode == 2 and "temperature" in bad.stderr


def test_env_report_compares_with_a_lock(tmp_path: Path) -> None:
    torch_version = metadata.version("torch")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"torch=={torch_version} \\\n    --hash=sha256:00\n    # via radixgen\nNumPy==0.0.1\n")
    assert read_lock(lock) == {"torch": torch_version, "numpy": "0.0.1"}
    report = env_report(str(lock))
    assert f"torch: {torch_version}" in report.splitlines()
    assert "differences from" in report and "(1 of 2 packages)" in report
    assert f"  numpy: lock 0.0.1, installed {metadata.version('numpy')}" in report.splitlines()
