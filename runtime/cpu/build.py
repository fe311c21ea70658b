"""Build and load radixgen's CPU kernels (the ``*.c`` files of this package) with the system C compiler.

One shared library from every C source here, compiled on first use: ``cc -O3 -march=native -fopenmp -shared``
into a cache directory (``$RADIXGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/radixgen`` or ``~/.cache/radixgen``),
keyed by a hash of the sources, the compiler's version, the flags and the CPU's flags, so a changed source or
another machine builds its own copy; concurrent processes build to a temporary name and rename it into place.
The build takes about a second. OpenMP links ``libgomp.so.1``, the runtime torch has already loaded, so the
kernels share torch's thread pool and follow ``torch.set_num_threads``.

A CPU without AVX-512 (F, BW, VL), no compiler, a failed build or ``RADIXGEN_CPU_KERNELS=0``: ``load_library()``
is None (the reason is logged once) and every caller keeps its torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

_SOURCES = sorted(Path(__file__).parent.glob("*.c"))
_HEADERS = sorted(Path(__file__).parent.glob("*.h"))
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-std=c11"]
#: the kernel is written with AVX-512 intrinsics (16 float32 lanes, masked bfloat16 loads)
_REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl")


def _cache_dir() -> Path:
    root = os.environ.get("RADIXGEN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "radixgen"
    )
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


@cache
def load_library() -> ctypes.CDLL | None:
    """Build (once per sources/compiler/CPU) and load the kernels; None with a logged reason when unavailable."""
    return build_library()


@cache
def build_library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """``load_library``'s build with ``extra_flags`` after the usual ones (tests build the code paths of CPUs
    without some instruction set, e.g. ``("-mno-avx512vnni",)``); None with a logged reason when unavailable."""
    if os.environ.get("RADIXGEN_CPU_KERNELS", "1") == "0":
        logger.info("CPU kernels disabled by RADIXGEN_CPU_KERNELS=0")
        return None
    flags = _cpu_flags().split()
    missing = [f for f in _REQUIRED_CPU_FLAGS if f not in flags]
    if missing:
        logger.warning("the CPU lacks %s: the CPU kernels are unavailable, torch ops are used instead", missing)
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: the CPU kernels are unavailable, torch ops are used instead")
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
        source = b"".join(p.read_bytes() for p in (*_SOURCES, *_HEADERS))
        all_flags = [*_FLAGS, *extra_flags]
        key = hashlib.sha256(source + version.encode() + " ".join(all_flags).encode() + _cpu_flags().encode())
        target = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                subprocess.run(
                    [compiler, *all_flags, *map(str, _SOURCES), "-o", str(built)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                os.replace(built, target)
            logger.info("built the CPU kernels: %s", target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
        logger.warning("CPU kernels unavailable (torch ops are used instead): %s", detail)
        return None
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and return types of every exported function (C prototypes in the .c files)."""
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    signatures = {
        "radixgen_paged_attention": [i32, p, i64, p, p, p, i64, p, p, p, i64, i32, i32, i32, f32, i64],
        "radixgen_rms_norm": [i32, p, i64, p, p, p, i64, i64, f32],
        "radixgen_rotary_inplace": [i32, p, i64, p, p, i64, i32, i32, i32],
        "radixgen_silu_and_mul": [i32, p, i64, p, i64, i64],
        "radixgen_argmax_rows": [p, i64, i64, p],
        "radixgen_linear_bf16": [p, p, i64, i32, p, i32, p, p],
        "radixgen_linear_int8": [p, i64, i32, p, p, i32, i32, p, p],
        "radixgen_linear_w8a8": [p, i64, i32, p, p, p, i32, i32, p, p, p, p],
        "radixgen_linear_rows_f32": [p, i64, i32, p, i64, p, p],
        "radixgen_llama_layers": [
            i32,
            i32,
            p,
            i32,
            p,
            p,
            p,
            p,
            p,
            i64,
            p,
            p,
            i64,
            i32,
            i32,
            i32,
            i32,
            i32,
            f32,
            p,
            p,
            p,
            p,
            i64,
            p,
            p,
            f32,
            i64,
            p,
        ],  # fmt: skip
    }
    # the heads: 1 = it wrote the argmax it was given; the layer loop: 0, or -1 for an input id out of range
    returns = {name: i32 for name in ("radixgen_linear_w8a8", "radixgen_linear_bf16", "radixgen_linear_rows_f32")}
    returns["radixgen_llama_layers"] = i32
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.restype = returns.get(name)
        fn.argtypes = argtypes
