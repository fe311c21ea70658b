"""ServerArgs: every runtime setting in one frozen, validated dataclass; the CLI flags derive from it."""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_LOAD_FORMATS = ("auto", "safetensors", "dummy")
_POLICIES = ("fcfs", "lpm")
_ATTENTION_BACKENDS = ("torch", "triton")
_GRAMMAR_BACKENDS = ("xgrammar", "outlines")


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
    dense_decode_kv_mb: int | None = None
    disable_shared_prefix_attention: bool = False
    # grammar-constrained decoding (radixgen.grammar)
    grammar_backend: Literal["xgrammar", "outlines"] = "xgrammar"
    grammar_compile_timeout: float = 30.0
    grammar_max_spec_bytes: int = 256 * 1024
    grammar_max_nesting_depth: int = 128
    grammar_any_whitespace: bool = False
    enable_jump_forward: bool = False
    # server (the HTTP process); unused by the offline Engine
    host: str = "127.0.0.1"
    port: int = 30000
    served_model_name: str | None = None
    chat_template: str | None = None
    api_key: str | None = None
    log_level: str = "info"
    enable_metrics: bool = False
    stream_interval: int = 1
    incremental_streaming_output: bool = False
    max_request_bytes: int | None = None
    max_prompts_per_request: int = 1024
    allowed_origins: str | None = None
    api_key_file: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_path, str) or not self.model_path:
            raise ValueError("model_path: must be a non-empty path")
        if not os.path.isdir(self.model_path):
            raise ValueError(f"model_path: {self.model_path!r} is not a directory")
        if self.api_key_file is not None and not os.path.isfile(self.api_key_file):
            raise ValueError(f"api_key_file: {self.api_key_file!r} is not a file")
        if self.tokenizer_path is not None and not os.path.isdir(self.tokenizer_path):
            raise ValueError(f"tokenizer_path: {self.tokenizer_path!r} is not a directory")
        _choice("dtype", self.dtype, _DTYPES)
        _choice("load_format", self.load_format, _LOAD_FORMATS)
        _choice("schedule_policy", self.schedule_policy, _POLICIES)
        if self.attention_backend is not None:
            _choice("attention_backend", self.attention_backend, _ATTENTION_BACKENDS)
        for name in ("context_length", "max_total_tokens", "kv_cache_budget_bytes", "num_threads", "max_request_bytes"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"{name}: must be a positive integer or None, got {v!r}")
        for name in (
            "max_running_requests", "max_prefill_tokens", "chunked_prefill_size", "stream_interval",
            "max_prompts_per_request",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        v = self.dense_decode_kv_mb
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"dense_decode_kv_mb: must be an integer >= 0 or None, got {v!r}")
        if not 0.0 < self.min_new_token_ratio <= self.init_new_token_ratio <= 1.0:
            raise ValueError("init_new_token_ratio/min_new_token_ratio: need 0 < min <= init <= 1")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port: must be in 1..65535, got {self.port!r}")
        _choice("log_level", self.log_level, ("debug", "info", "warning", "error", "critical"))
        if not 0.0 <= self.new_token_ratio_decay < 1.0:
            raise ValueError("new_token_ratio_decay: must be in [0, 1)")
        _choice("grammar_backend", self.grammar_backend, _GRAMMAR_BACKENDS)
        for name in ("grammar_max_spec_bytes", "grammar_max_nesting_depth"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        t = self.grammar_compile_timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < float("inf"):
            raise ValueError(f"grammar_compile_timeout: must be a positive number of seconds, got {t!r}")

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


# ---------------------------------------------------------------------------------------------------- CLI
_HELP: dict[str, str] = {
    "model_path": "Hugging Face model directory (config.json, *.safetensors, tokenizer files).",
    "tokenizer_path": "Tokenizer directory; default: the model directory.",
    "dtype": "Weight and KV dtype; auto = float32 on CPU, bfloat16 on CUDA.",
    "load_format": "Weight loading: auto/safetensors, or dummy (random weights from the config, fixed seed).",
    "device": "Torch device for the model and KV pools, e.g. cpu or cuda:0.",
    "attention_backend": "Attention backend; default triton on CUDA, torch otherwise.",
    "context_length": "Cap on the model context length (prompt + output), in tokens.",
    "max_total_tokens": "KV pool size in tokens; default from --kv-cache-budget-bytes.",
    "kv_cache_budget_bytes": "KV pool memory budget in bytes; default a quarter of available memory.",
    "max_running_requests": "Most requests decoding at once (rows of the request-to-token table).",
    "max_prefill_tokens": "Token budget of one extend (prefill) batch.",
    "chunked_prefill_size": "Prompts longer than this are prefilled in chunks of this many tokens.",
    "schedule_policy": "Waiting-queue order: fcfs, or lpm (longest cached prefix first).",
    "disable_radix_cache": "Disable prefix reuse (same interface, no sharing), for A/B measurement.",
    "init_new_token_ratio": "Initial share of max_new_tokens reserved per running request at admission.",
    "min_new_token_ratio": "Lower bound the reserved share decays to.",
    "new_token_ratio_decay": "Decay of the reserved share per decode step.",
    "random_seed": "Seed for sampling without a per-request seed and for dummy weights.",
    "num_threads": "torch intra-op threads in the scheduler process; default: torch's choice.",
    "dense_decode_kv_mb": "MiB for a dense copy of the decode batch's KV (torch attention backend: no per-step KV "
    "gather; falls back to the gather while the batch does not fit); default: a quarter of the KV pool; 0 disables it.",
    "disable_shared_prefix_attention": "Torch attention backend: attend each prefix that several decoding requests "
    "share once per group (cascade decode) — this flag turns that off (every request reads its whole KV).",
    "grammar_backend": "Grammar backend for json_schema / regex / ebnf constraints: xgrammar or outlines.",
    "grammar_compile_timeout": "Seconds a request waits for its grammar to compile before it is aborted.",
    "grammar_max_spec_bytes": "Largest json_schema / regex / ebnf accepted, in UTF-8 bytes.",
    "grammar_max_nesting_depth": "Deepest nesting accepted in a JSON schema document, regex or EBNF grammar.",
    "grammar_any_whitespace": "Let JSON constraints allow any whitespace (default: fixed ', ' / ': ' separators).",
    "enable_jump_forward": "Append grammar-forced text without a forward per token (re-tokenized, re-extended).",
    "host": "HTTP listen address.",
    "port": "HTTP listen port.",
    "served_model_name": "Model name reported by the OpenAI API; default the model path.",
    "chat_template": "Chat template: a built-in name, a Jinja file or inline Jinja; default the tokenizer's own.",
    "api_key": "Require 'Authorization: Bearer <key>' on every route except /health.",
    "log_level": "Logging level of all server processes.",
    "enable_metrics": "Serve Prometheus metrics at GET /metrics (404 otherwise).",
    "stream_interval": "Streamed requests get an update every this many new tokens (a request's own "
    "sampling_params.stream_interval takes precedence).",
    "max_request_bytes": "Largest HTTP request body in bytes (413 beyond it); default: max(4 MiB, 64 bytes per token "
    "of context).",
    "max_prompts_per_request": "Most prompts × samples one request may carry (a 400 beyond).",
    "api_key_file": "API keys, one a line: KEY REQUESTS_PER_MIN TOKENS_PER_MIN MAX_CONCURRENT [admin] (0 = unlimited); "
    "a key aborts only its own requests unless admin; over budget: 429 with Retry-After.",
    "allowed_origins": "Comma-separated origins allowed to call the server from a browser (CORS); default: none.",
    "incremental_streaming_output": "Native /generate streams carry deltas (new text, output_ids and output "
    "logprobs) instead of the cumulative output, as SGLang's flag of the same name.",
}
# flag names that differ from --field-name (SGLang's spelling)
_FLAG_NAMES = {"model_path": "--model", "tokenizer_path": "--tokenizer"}
_CHOICES = {
    "dtype": _DTYPES,
    "load_format": _LOAD_FORMATS,
    "attention_backend": _ATTENTION_BACKENDS,
    "log_level": ("debug", "info", "warning", "error", "critical"),
}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ServerArgs field: ``--field-name`` (``--model``/``--tokenizer`` for the paths; the
    underscore spelling is accepted too). Bools are ``store_true``; Literal fields and known enums get choices;
    help texts come from ``_HELP``. Defaults are left to the dataclass (unset flags are not passed)."""
    hints = typing.get_type_hints(ServerArgs)
    for f in fields(ServerArgs):
        dashed = "--" + f.name.replace("_", "-")
        names = [_FLAG_NAMES.get(f.name, dashed)]
        names += [n for n in (dashed, "--" + f.name) if n not in names]
        base = _unwrap_optional(hints[f.name])
        default = None if f.default is MISSING else f.default
        help_text = _HELP.get(f.name, "")
        if f.default is not MISSING:
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "default": argparse.SUPPRESS}
        if f.default is MISSING:
            kwargs.update(required=True, default=None)
        if base is bool:
            kwargs["action"] = "store_true"
        else:
            if typing.get_origin(base) is Literal:
                kwargs["choices"] = list(typing.get_args(base))
                base = type(kwargs["choices"][0])
            elif f.name in _CHOICES:
                kwargs["choices"] = list(_CHOICES[f.name])
            kwargs["type"] = base
            kwargs["metavar"] = "PATH" if f.name.endswith("_path") else f.name.upper()
        parser.add_argument(*names, **kwargs)


def server_args_from_cli(argv: Sequence[str] | None = None, prog: str | None = None) -> ServerArgs:
    """Parse command-line flags (see ``add_cli_args``) into ServerArgs.

    Raises:
        SystemExit: unknown flag, missing ``--model``, or an invalid value (argparse prints the message, which
            names the field).
    """
    parser = argparse.ArgumentParser(prog=prog, description="radixgen server")
    add_cli_args(parser)
    ns = parser.parse_args(argv)
    try:
        return ServerArgs(**vars(ns))
    except ValueError as e:
        parser.error(str(e))  # exits with status 2


def _unwrap_optional(tp: Any) -> Any:
    """``X | None`` → ``X`` (None stays the dataclass default; a given flag always takes a value)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp
