"""ServerArgs: every runtime setting in one frozen, validated dataclass; the CLI flags derive from it."""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

from radixgen.runtime.disaggregation import validate_disaggregation
from radixgen.runtime.lora.config import LoRAConfig
from radixgen.runtime.models.checkpoint_path import find_gguf_file
from radixgen.runtime.models.quant_config import QuantizationConfig

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2", "int8")  # = radix.kv_quant.KV_CACHE_DTYPES (that imports torch)
_LOAD_FORMATS = ("auto", "safetensors", "dummy")
_POLICIES = ("fcfs", "lpm")
_ATTENTION_BACKENDS = ("torch", "triton")
_GRAMMAR_BACKENDS = ("xgrammar", "llguidance", "outlines")
_SPEC_ALGORITHMS = ("ngram", "draft")


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
    disable_mixed_chunk: bool = False
    init_new_token_ratio: float = 0.7
    min_new_token_ratio: float = 0.1
    new_token_ratio_decay: float = 0.001
    random_seed: int = 0
    num_threads: int | None = None
    dense_decode_kv_mb: int | None = None
    disable_shared_prefix_attention: bool = False
    # quantization of the linear layers (runtime/models/linear.py): int8wo | int4wo | int4wo-<group> | w8a8_int8
    quantization: str | None = None
    quantize_lm_head: bool = False
    kv_cache_dtype: str = "auto"  # KV pool storage (radix/kv_quant.py): auto | fp8_e4m3 | fp8_e5m2 | int8
    # grammar-constrained decoding (radixgen.grammar)
    grammar_backend: Literal["xgrammar", "llguidance", "outlines"] = "xgrammar"
    grammar_compile_timeout: float = 30.0
    grammar_max_spec_bytes: int = 256 * 1024
    grammar_max_nesting_depth: int = 128
    grammar_any_whitespace: bool = False
    grammar_strict_json_schema: bool = False
    enable_jump_forward: bool = False
    # speculative decoding (runtime/speculative): SGLang's flag names
    speculative_algorithm: Literal["ngram", "draft"] | None = None
    speculative_num_draft_tokens: int = 4
    speculative_draft_model_path: str | None = None
    speculative_ngram_min_match_window_size: int = 1
    speculative_ngram_max_match_window_size: int = 12
    # multi-LoRA serving (runtime/lora): SGLang's flag names
    enable_lora: bool = False
    lora_paths: tuple[str, ...] | None = None
    max_loras_per_batch: int = 8
    max_lora_rank: int | None = None
    lora_target_modules: tuple[str, ...] | None = None
    # parallelism (DESIGN.md "Parallelism"): data-parallel scheduler replicas behind the one HTTP front end
    dp_size: int = 1
    tp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    load_balance_method: Literal["cache_aware", "round_robin", "shortest_queue"] = "cache_aware"
    # prefill/decode disaggregation (runtime/disaggregation): SGLang's flag names
    disaggregation_mode: Literal["null", "prefill", "decode"] = "null"
    disaggregation_bootstrap_port: int = 8998
    disaggregation_transfer_timeout: float = 30.0
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
    # tool calls and reasoning output of /v1/chat/completions (SGLang's flags and parser names)
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_path, str) or not self.model_path:
            raise ValueError("model_path: must be a non-empty path")
        is_gguf_file = self.model_path.endswith(".gguf") and os.path.isfile(self.model_path)
        if not (os.path.isdir(self.model_path) or is_gguf_file):
            raise ValueError(f"model_path: {self.model_path!r} is not a directory or a .gguf file")
        find_gguf_file(self.model_path)  # a directory with several .gguf files: an error naming model_path
        if self.api_key_file is not None and not os.path.isfile(self.api_key_file):
            raise ValueError(f"api_key_file: {self.api_key_file!r} is not a file")
        if self.tokenizer_path is not None and not os.path.isdir(self.tokenizer_path):
            raise ValueError(f"tokenizer_path: {self.tokenizer_path!r} is not a directory")
        _choice("dtype", self.dtype, _DTYPES)
        _choice("kv_cache_dtype", self.kv_cache_dtype, _KV_CACHE_DTYPES)
        if self.kv_cache_dtype.startswith("fp8"):  # needs torch's float8 dtypes (torch imported only for fp8)
            from radixgen.radix.kv_quant import kv_cache_torch_dtype

            kv_cache_torch_dtype(self.kv_cache_dtype, None)
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
            "max_prompts_per_request", "dp_size", "tp_size", "nnodes",
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
        _choice("load_balance_method", self.load_balance_method, ("cache_aware", "round_robin", "shortest_queue"))
        for name in ("grammar_max_spec_bytes", "grammar_max_nesting_depth"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        self._validate_speculative()
        self._validate_lora()
        self._validate_parallel()
        validate_disaggregation(self)
        if self.quantization is not None:
            self.quantization_config  # noqa: B018 - parses and validates, naming the field
        elif self.quantize_lm_head:
            raise ValueError("quantize_lm_head: needs --quantization")
        if self.tool_call_parser is not None:
            _choice("tool_call_parser", self.tool_call_parser, _tool_call_parsers())
        if self.reasoning_parser is not None:
            _choice("reasoning_parser", self.reasoning_parser, _reasoning_parsers())
        t = self.grammar_compile_timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < float("inf"):
            raise ValueError(f"grammar_compile_timeout: must be a positive number of seconds, got {t!r}")

    def _validate_speculative(self) -> None:
        """The speculative_* fields (runtime/speculative); raises ValueError naming the field."""
        if self.speculative_algorithm is not None:
            _choice("speculative_algorithm", self.speculative_algorithm, _SPEC_ALGORITHMS)
        for name in (
            "speculative_num_draft_tokens",
            "speculative_ngram_min_match_window_size",
            "speculative_ngram_max_match_window_size",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if self.speculative_ngram_min_match_window_size > self.speculative_ngram_max_match_window_size:
            raise ValueError(
                "speculative_ngram_min_match_window_size: must not exceed speculative_ngram_max_match_window_size"
            )
        path = self.speculative_draft_model_path
        if self.speculative_algorithm == "draft":
            if path is None:
                raise ValueError("speculative_draft_model_path: --speculative-algorithm draft needs a draft model")
            if not os.path.isdir(path):
                raise ValueError(f"speculative_draft_model_path: {path!r} is not a directory")
        elif path is not None:
            raise ValueError("speculative_draft_model_path: only used with --speculative-algorithm draft")

    def _validate_lora(self) -> None:
        """The LoRA fields (lists given by the Engine become tuples); raises ValueError naming the field."""
        for name in ("lora_paths", "lora_target_modules"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = (v,)
            if v is not None:
                if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
                    raise ValueError(f"{name}: must be a list of strings, got {v!r}")
                object.__setattr__(self, name, tuple(v))
        if self.lora_config is not None and self.speculative_algorithm is not None:
            raise ValueError("speculative_algorithm: speculative decoding is not supported together with LoRA adapters")

    def _validate_parallel(self) -> None:
        """tp_size / nnodes / node_rank / dist_init_addr / dp_size together; raises ValueError naming the field."""
        if self.tp_size % self.nnodes:
            raise ValueError(f"nnodes: tp_size {self.tp_size} must be a multiple of nnodes {self.nnodes}")
        rank = self.node_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.nnodes:
            raise ValueError(f"node_rank: must be in [0, nnodes={self.nnodes}), got {self.node_rank!r}")
        addr = self.dist_init_addr
        if addr is not None:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"dist_init_addr: must be host:port, got {addr!r}")
        elif self.nnodes > 1:
            raise ValueError("dist_init_addr: several nodes need the rendezvous address of node 0 (host:port)")
        if self.tp_size > 1:
            for name, on in (("dp_size", self.dp_size > 1), ("speculative_algorithm", self.speculative_algorithm),
                             ("enable_lora", self.enable_lora or self.lora_paths)):  # fmt: skip
                if on:
                    raise ValueError(f"{name}: not supported together with tp_size > 1 yet")

    @property
    def lora_config(self) -> LoRAConfig | None:
        """The validated ``LoRAConfig`` when LoRA is on (``--enable-lora`` or ``--lora-paths``), else None.

        Raises:
            LoRAError (a ValueError): naming the field; a start-up adapter without a readable config is reported as
                ``lora_paths``.
        """
        if not (self.enable_lora or self.lora_paths):
            for name in ("max_lora_rank", "lora_target_modules"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: needs --enable-lora or --lora-paths")
            return None
        return LoRAConfig.build(
            self.lora_paths, self.max_loras_per_batch, self.max_lora_rank, self.lora_target_modules
        )

    @property
    def quantization_config(self) -> QuantizationConfig | None:
        """``quantization`` and ``quantize_lm_head`` as a validated ``QuantizationConfig`` (None: float weights)."""
        if self.quantization is None:
            return None
        return QuantizationConfig.parse(self.quantization, self.quantize_lm_head)

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


def _tool_call_parsers() -> tuple[str, ...]:
    from radixgen.runtime.function_call.parser import DETECTORS

    return tuple(DETECTORS)


def _reasoning_parsers() -> tuple[str, ...]:
    from radixgen.reasoning import REASONING_FORMATS

    return tuple(REASONING_FORMATS)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


# ---------------------------------------------------------------------------------------------------- CLI
_HELP: dict[str, str] = {
    "model_path": "Hugging Face model directory (config.json, *.safetensors, tokenizer files; float or "
    "compressed-tensors W8A16/W4A16), or a GGUF file (or a directory holding one).",
    "tokenizer_path": "Tokenizer directory; default: the model directory.",
    "dtype": "Weight and KV dtype; auto = float32 on CPU, bfloat16 on CUDA.",
    "kv_cache_dtype": "KV cache storage: auto (the model dtype), int8 (symmetric, a float32 scale per token and KV "
    "head) or fp8_e4m3 / fp8_e5m2 (a scale per layer for K and for V, default 1.0). Quantized KV holds more tokens "
    "in the same memory (int8: 4*head_dim/(head_dim+4) x float32's tokens).",
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
    "num_threads": "torch intra-op threads in the scheduler process (fixed); default on CPU: the cores other "
    "processes leave free, re-checked every second (runtime/cpu_threads.py).",
    "quantization": "Quantize every linear layer at load time: int8wo (per-channel int8 weights), int4wo / "
    "int4wo-32|64|128 (group-wise int4 weights, default group 128), or w8a8_int8 (int8wo's weights times int8 "
    "activations quantized per token: int8 dot products, SGLang's w8a8_int8).",
    "quantize_lm_head": "With --quantization: quantize the LM head too (a quantized copy when embeddings are tied).",
    "dense_decode_kv_mb": "MiB for a dense copy of the decode batch's KV (torch attention backend: no per-step KV "
    "gather; falls back to the gather while the batch does not fit); default: a quarter of the KV pool; 0 disables it.",
    "disable_mixed_chunk": "Alternate whole extend and decode steps instead of running the decoding requests' next "
    "tokens in the same forward as a prefill chunk (mixed batches, on by default; SGLang's --enable-mixed-chunk).",
    "disable_shared_prefix_attention": "Torch attention backend: attend each prefix that several decoding requests "
    "share once per group (cascade decode) — this flag turns that off (every request reads its whole KV).",
    "grammar_backend": "Grammar backend for json_schema / regex / ebnf constraints: xgrammar, llguidance or outlines.",
    "grammar_compile_timeout": "Seconds a request waits for its grammar to compile before it is aborted.",
    "grammar_max_spec_bytes": "Largest json_schema / regex / ebnf accepted, in UTF-8 bytes.",
    "grammar_max_nesting_depth": "Deepest nesting accepted in a JSON schema document, regex or EBNF grammar.",
    "grammar_any_whitespace": "Let JSON constraints allow any whitespace (default: fixed ', ' / ': ' separators).",
    "grammar_strict_json_schema": "Close every object of every JSON schema (additionalProperties: false where the "
    "schema says nothing), as OpenAI's json_schema.strict; default: JSON Schema's semantics (unlisted properties "
    "allowed). vLLM calls this guided_decoding_disable_additional_properties.",
    "enable_jump_forward": "Append grammar-forced text without a forward per token (re-tokenized, re-extended).",
    "speculative_algorithm": "Speculative decoding: ngram (prompt lookup: proposals copied from the request's own "
    "prompt and output) or draft (a smaller model with the same vocabulary proposes); default off.",
    "speculative_num_draft_tokens": "Most draft tokens proposed per request and step (the target verifies them in "
    "one forward over that many + 1 positions).",
    "speculative_draft_model_path": "Draft model directory for --speculative-algorithm draft (same tokenizer and "
    "vocabulary as the target).",
    "speculative_ngram_min_match_window_size": "ngram: shortest suffix n-gram that must match to propose.",
    "speculative_ngram_max_match_window_size": "ngram: longest suffix n-gram tried (the longest match wins).",
    "enable_lora": "Serve LoRA adapters (implied by --lora-paths); adapters can then be loaded at run time "
    "(POST /load_lora_adapter).",
    "lora_paths": "LoRA adapters (PEFT directories) loaded at start: name=path or path (named by itself), several "
    "separated by spaces. Requests pick one by lora_path (native) or model (OpenAI: name or base:name).",
    "max_loras_per_batch": "Adapter slots: most distinct adapters in one batch (base-model requests do not count).",
    "max_lora_rank": "Largest adapter rank served (the slot buffers' size); default: the largest rank of "
    "--lora-paths, or 16.",
    "lora_target_modules": "Projections adapters may adapt: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj "
    "or all-linear (default).",
    "dp_size": "Data parallelism: this many scheduler replicas (each with its own model copy, KV pool and radix cache; "
    "the default KV budget is shared among them) behind the one HTTP front end, which sends each request to the "
    "replica most likely to hold its prefix, balanced against load (SGLang's cache-aware router policy).",
    "tp_size": "Tensor parallelism: shard every layer's heads, MLP and vocabulary (and the KV pool, by KV head) over "
    "this many scheduler processes (torch.distributed: gloo on CPU, NCCL on CUDA); rank 0 schedules and broadcasts "
    "each batch.",
    "nnodes": "Machines the --tp-size ranks span (tp_size / nnodes ranks each); node 0 also runs the HTTP server.",
    "node_rank": "This machine's index among --nnodes (0 serves HTTP; the others run only their ranks).",
    "dist_init_addr": "host:port where the tensor-parallel ranks meet (node 0's address); default: a free local port.",
    "load_balance_method": "How --dp-size routes requests: cache_aware (longest approximate prefix match, else the "
    "least loaded replica; SGLang router's policy), round_robin or shortest_queue (SGLang's DP controller names).",
    "disaggregation_mode": "Prefill/decode disaggregation: prefill (serve prompts' KV to decode servers on "
    "--disaggregation-bootstrap-port) or decode (requests carrying bootstrap_host/bootstrap_port fetch their prompt's "
    "KV from that prefill server, page by page over ZeroMQ); pair them with python -m "
    "radixgen.runtime.disaggregation.router.",
    "disaggregation_bootstrap_port": "Prefill server: TCP port (on --host) where decode servers fetch KV.",
    "disaggregation_transfer_timeout": "Seconds a KV transfer may go without a message from the other server before "
    "it is failed (decode: the request gets a 503; prefill: the KV is released).",
    "host": "HTTP listen address.",
    "port": "HTTP listen port.",
    "served_model_name": "Model name reported by the OpenAI API; default the model path.",
    "chat_template": "Chat template: a built-in name, a Jinja file or inline Jinja; default the tokenizer's own.",
    "api_key": "Require 'Authorization: Bearer <key>' on every route except /health.",
    "log_level": "Logging level of all server processes.",
    "enable_metrics": "Serve Prometheus metrics at GET /metrics (404 otherwise).",
    "stream_interval": "Streamed requests get an update with their first token, then every this many new tokens "
    "(a request's own sampling_params.stream_interval takes precedence); requests that are not streamed send their "
    "tokens to the detokenizer every 50.",
    "max_request_bytes": "Largest HTTP request body in bytes (413 beyond it); default: max(4 MiB, 64 bytes per token "
    "of context).",
    "max_prompts_per_request": "Most prompts × samples one request may carry (a 400 beyond).",
    "api_key_file": "API keys, one a line: KEY REQUESTS_PER_MIN TOKENS_PER_MIN MAX_CONCURRENT [admin] (0 = unlimited); "
    "a key aborts only its own requests unless admin; over budget: 429 with Retry-After.",
    "allowed_origins": "Comma-separated origins allowed to call the server from a browser (CORS); default: none.",
    "tool_call_parser": "Tool-call format of the model's output for /v1/chat/completions tools: qwen25/qwen3/hermes "
    "(<tool_call>), llama3, mistral ([TOOL_CALLS]) or pythonic; calls are parsed and grammar-enforced.",
    "reasoning_parser": "Reasoning format (deepseek-r1, qwen3, ...): /v1/chat/completions splits reasoning_content "
    "from content, and response_format / tool grammars start after the reasoning block.",
    "incremental_streaming_output": "Native /generate streams carry deltas (new text, output_ids and output "
    "logprobs) instead of the cumulative output, as SGLang's flag of the same name.",
}
# flag names that differ from --field-name (SGLang's spelling)
_FLAG_NAMES = {
    "model_path": "--model",
    "tokenizer_path": "--tokenizer",
    "speculative_draft_model_path": "--speculative-draft-model",
}
_CHOICES = {
    "dtype": _DTYPES,
    "load_format": _LOAD_FORMATS,
    "kv_cache_dtype": _KV_CACHE_DTYPES,
    "attention_backend": _ATTENTION_BACKENDS,
    "log_level": ("debug", "info", "warning", "error", "critical"),
    "tool_call_parser": _tool_call_parsers(),
    "reasoning_parser": _reasoning_parsers(),
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
        elif typing.get_origin(base) is tuple:  # a list of strings: --flag a b c
            kwargs.update(nargs="+", type=str, metavar=f.name.upper().removesuffix("S"))
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
