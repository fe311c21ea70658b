"""Import SGLang's own frontend language (the `sglang` package, unmodified) as a test client.

`make setup` installs `sglang` with --no-deps (requirements-sglang.lock): its serving stack is CUDA builds we do not
want. ``import sglang`` still touches three serving-side modules at import time, which this shim replaces with
inert stand-ins before the import — none is on the path a frontend program takes against a remote server:
``sglang.srt.utils.hf_transformers_patches`` (patches transformers for SGLang's model runner), ``IPython.display``
(notebook rendering) and ``aiohttp`` (only the async helper of ``sglang.Runtime``, a local-server launcher).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

# module → its stand-in's attributes; the first is always replaced (the real one imports SGLang's serving stack), the
# others only when they are not installed
_STANDINS: dict[str, dict[str, Any]] = {
    "sglang.srt.utils.hf_transformers_patches": {"apply_all": lambda: None},
    "IPython": {},
    "IPython.display": {"HTML": object, "display": lambda *args, **kwargs: None},
    "aiohttp": {},
}


def import_sglang() -> Any:
    """The ``sglang`` module, imported with the stand-ins above."""
    missing = {top for top in ("IPython", "aiohttp") if top not in sys.modules and not importlib.util.find_spec(top)}
    for name, attrs in _STANDINS.items():
        if name not in sys.modules and (name.startswith("sglang.") or name.split(".")[0] in missing):
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
    saved = dict(os.environ)
    try:
        import sglang  # its import points third-party JIT caches (triton, inductor) at its own directory ...
    finally:
        os.environ.clear()
        os.environ.update(saved)  # ... which the rest of the test session must not inherit
    return sglang
