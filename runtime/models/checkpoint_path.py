"""Which checkpoint a model path names: a GGUF file, or a Hugging Face directory (no torch, no file reads beyond
listing a directory), for ServerArgs validation, the model config and the tokenizer loader."""

from __future__ import annotations

from pathlib import Path


def find_gguf_file(model_path: str) -> Path | None:
    """The GGUF file a model path names, or None for a Hugging Face directory (no torch, no file reads).

    ``model_path`` is GGUF when it is a ``*.gguf`` file, or a directory holding ``*.gguf`` files and no
    ``*.safetensors`` (a GGUF repository may ship the original config.json beside the file); such a directory
    must hold exactly one.

    Raises:
        ValueError: a directory with several ``.gguf`` files (split GGUFs included: merge them with llama.cpp's
            ``llama-gguf-split --merge``); the message names ``model_path`` and lists the files.
    """
    path = Path(model_path)
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    found = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(found) > 1:
        raise ValueError(
            f"model_path {model_path!r} holds {len(found)} .gguf files ({', '.join(p.name for p in found)}); "
            "pass the one to load as model_path (split GGUFs must be merged: llama-gguf-split --merge)"
        )
    return found[0] if found else None
