"""The DSL client (``import radixgen``) loads none of the runtime: no torch, FastAPI, ZeroMQ, uvicorn, transformers."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "fastapi", "zmq", "uvicorn", "transformers", "radixgen.runtime")

# runs in a fresh interpreter (-P: the repository root must not shadow installed packages); prints what it loaded
_PROBE = """
import sys
import radixgen
import radixgen.backends.base, radixgen.backends.openai_backend, radixgen.backends.runtime
import radixgen.backends.runtime_endpoint
from radixgen.chat_template import get_chat_template
from radixgen.chat_templates import resolve_chat_template
assert get_chat_template("chatml").stop == ("<|im_end|>",)
assert resolve_chat_template("llama-2").name == "llama-2"
heavy = {heavy!r}
print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy)))
"""


def test_import_radixgen_loads_no_runtime() -> None:
    out = subprocess.run(
        [sys.executable, "-P", "-c", _PROBE.format(heavy=HEAVY)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import radixgen loaded runtime modules: {out.stdout}"
