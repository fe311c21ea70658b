"""ServerArgs: every runtime setting in one frozen, validated dataclass; the CLI flags derive from it."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Literal

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_LOAD_FORMATS = ("auto", "safetensors", "dummy")
_POLICIES = ("fcfs", "lpm")
_ATTENTION_BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class ServerArgs:
    """Runtime configuration shared by the offline Engine and the server.

    Each field's ``metadata["help"]`` becomes the help text of its CLI flag.

    Raises:
        ValueError: an invalid value; the message names the field. A missing model directory is reported
            as ``model_path``.
    """

    model_path: str
    tokenizer_path: str | None = None
    dtype: str = "auto"
    load_format: str = "auto"
    device: str = "cpu"
    attention_backend: str | None = None
    context_length: int | None = None
    max_total_tokens: int | None = None
    kv_cache_budget_bytes: int | None = None
    max_running_requests: int = 256
    max_prefill_tokens: int = 16384
    chunked_prefill_size: int = 2048
    schedule_policy: Literal["fcfs", "lpm"] = "fcfs"
    disable_radix_cache: bool = False
    init_new_token_ratio: float = 0.7
    min_new_token_ratio: float = 0.1
    new_token_ratio_decay: float = 0.001
    random_seed: int = 0
    num_threads: int | None = None
    # server (the HTTP process); unused by the offline Engine
    host: str = "127.0.0.1"
    port: int = 30000
    served_model_name: str | None = None
    chat_template: str | None = None
    api_key: str | None = None
    log_level: str = "info"
    enable_metrics: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model_path, str) or not self.model_path:
            raise ValueError("model_path: must be a non-empty path")
        if not os.path.isdir(self.model_path):
            raise ValueError(f"model_path: {self.model_path!r} is not a directory")
        if self.tokenizer_path is not None and not os.path.isdir(self.tokenizer_path):
            raise ValueError(f"tokenizer_path: {self.tokenizer_path!r} is not a directory")
        _choice("dtype", self.dtype, _DTYPES)
        _choice("load_format", self.load_format, _LOAD_FORMATS)
        _choice("schedule_policy", self.schedule_policy, _POLICIES)
        if self.attention_backend is not None:
            _choice("attention_backend", self.attention_backend, _ATTENTION_BACKENDS)
        for name in ("context_length", "max_total_tokens", "kv_cache_budget_bytes", "num_threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"{name}: must be a positive integer or None, got {v!r}")
        for name in ("max_running_requests", "max_prefill_tokens", "chunked_prefill_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if not 0.0 < self.min_new_token_ratio <= self.init_new_token_ratio <= 1.0:
            raise ValueError("init_new_token_ratio/min_new_token_ratio: need 0 < min <= init <= 1")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port: must be in 1..65535, got {self.port!r}")
        _choice("log_level", self.log_level, ("debug", "info", "warning", "error", "critical"))
        if not 0.0 <= self.new_token_ratio_decay < 1.0:
            raise ValueError("new_token_ratio_decay: must be in [0, 1)")

    @property
    def resolved_tokenizer_path(self) -> str:
        return self.tokenizer_path or self.model_path

    @property
    def resolved_served_model_name(self) -> str:
        return self.served_model_name or self.model_path

    @property
    def resolved_attention_backend(self) -> str:
        """triton on CUDA, torch otherwise, unless set explicitly."""
        if self.attention_backend is not None:
            return self.attention_backend
        return "triton" if self.device.startswith("cuda") else "torch"

    @classmethod
    def from_kwargs(cls, model_path: str, **kwargs: Any) -> ServerArgs:
        """Build from keyword arguments; an unknown keyword is a ValueError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown server argument(s): {', '.join(unknown)}")
        return cls(model_path=model_path, **kwargs)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
