"""Typed messages between the runtime's parts (tokenizer manager → scheduler → detokenizer).

msgspec Structs, encoded as msgpack on the ZeroMQ sockets; the offline Engine passes them in-process. One class
per message; receivers dispatch on the class through a type → handler table. Outputs carry deltas (new token
ids since the last message), never whole sequences. This module imports neither torch nor numpy.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from radixgen.runtime.sampling_params import SamplingParams


class FinishReason(msgspec.Struct, frozen=True):
    """Why a request ended (SGLang's native ``meta_info.finish_reason``).

    Attributes:
        type: ``stop`` (eos, a stop token id, a stop string, or a complete grammar), ``length`` (max_new_tokens
            or the context), ``abort`` (aborted by a client, or failed, e.g. a grammar compile error).
        matched: with ``stop``, the token id or the stop string that ended it.
        length: with ``length``, the number of generated tokens.
        message: with ``abort``, why.
    """

    type: Literal["stop", "length", "abort"]
    matched: int | str | None = None
    length: int | None = None
    message: str | None = None

    @classmethod
    def stopped(cls, matched: int | str) -> FinishReason:
        return cls("stop", matched=matched)

    @classmethod
    def length_reached(cls, length: int) -> FinishReason:
        return cls("length", length=length)

    @classmethod
    def aborted(cls, message: str) -> FinishReason:
        return cls("abort", message=message)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the native API: ``{"type": "stop", "matched": ...}``,
        ``{"type": "length", "length": n}`` or ``{"type": "abort", "message": ...}``."""
        if self.type == "stop":
            return {"type": "stop", "matched": self.matched}
        if self.type == "length":
            return {"type": "length", "length": self.length}
        return {"type": "abort", "message": self.message}


class TokenizedGenerateReq(msgspec.Struct, tag=True):
    """A new request, planned and validated (``generate_request.plan_requests``): prompt token ids and typed,
    validated sampling parameters (one sample: ``n`` is already expanded)."""

    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False
    token_ids_logprob: list[int] | None = None
    lora_path: str | None = None  # the LoRA adapter's name (SGLang's field); None: the base model
    # prefill/decode disaggregation (SGLang's fields): the prefill server whose bootstrap port serves the prompt's KV
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None


class AbortReq(msgspec.Struct, tag=True):
    """Abort a queued or running request (or, with ``abort_all``, every one); everything it holds is freed."""

    rid: str
    abort_all: bool = False


class FlushCacheReq(msgspec.Struct, tag=True):
    """Drop every cached prefix (only when no request is running or queued)."""


class LoadLoRAAdapterReq(msgspec.Struct, tag=True):
    """Load a PEFT adapter directory under a name (SGLang's / vLLM's ``/load_lora_adapter`` body)."""

    lora_name: str
    lora_path: str


class UnloadLoRAAdapterReq(msgspec.Struct, tag=True):
    """Unload an adapter; answered when the last request using it has finished."""

    lora_name: str


class LoRAUpdateOut(msgspec.Struct, tag=True):
    """Reply to Load/UnloadLoRAAdapterReq: success, or the error (message, HTTP status, field); the adapters
    requests may use afterwards (name → path)."""

    success: bool
    loaded_adapters: dict[str, str]
    error_message: str = ""
    status: int = 200
    param: str | None = None


class ReqOutput(msgspec.Struct):
    """What one request produced in one scheduler step.

    new_token_ids: tokens generated this step (delta). finish_reason: None while running. Logprob lists hold the
    delta too:
    each entry is [logprob, token_id]; top entries are lists of [logprob, token_id] per position.
    """

    rid: str
    new_token_ids: list[int]
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    input_token_logprobs: list[list[Any]] | None = None
    input_top_logprobs: list[list[list[Any]]] | None = None
    output_token_logprobs: list[list[Any]] | None = None
    output_top_logprobs: list[list[list[Any]]] | None = None
    input_token_ids_logprobs: list[list[list[Any]]] | None = None  # per position: [logprob, id] of the asked ids
    output_token_ids_logprobs: list[list[list[Any]]] | None = None
    jump_forward_tokens: int = 0  # cumulative: outputs appended by grammar jump-forward (no forward each)
    spec_verify_ct: int = 0  # cumulative: decode-phase target forwards while speculative decoding is on
    spec_accepted_tokens: int = 0  # cumulative: draft tokens accepted (each forward emits accepted + 1)


class SchedulerStats(msgspec.Struct):
    """Scheduler load and KV pool usage after a step (token counts are KV slots).

    kv_used_tokens: slots held by queued/running requests (owned or locked prefix); 0 when idle.
    kv_cached_tokens: slots in the radix cache (reusable prefixes), of which kv_evictable_tokens are unlocked.
    kv_free_tokens: slots on the free list. max_total_tokens: pool size.
    """

    num_running_reqs: int
    num_waiting_reqs: int
    kv_used_tokens: int
    kv_cached_tokens: int
    kv_evictable_tokens: int
    kv_free_tokens: int
    max_total_tokens: int
    num_retractions: int = 0
    num_forward_steps: int = 0
    # speculative decoding, cumulative: per-request verify forwards, draft tokens proposed / accepted, and
    # spec_accept_hist[n] = forwards that emitted n tokens (empty when speculation is off)
    spec_verify_forwards: int = 0
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0
    spec_accept_hist: list[int] = []
    dp_rank: int = 0  # the scheduler replica (--dp-size)
    # prefill/decode disaggregation, cumulative: KV transfers completed (decode: received; prefill: sent and acked),
    # tokens received and the transfers' wall time summed (decode side: fetch sent → last page written)
    pd_transfers: int = 0
    pd_transfer_tokens: int = 0
    pd_transfer_seconds: float = 0.0


class BatchTokenOut(msgspec.Struct, tag=True):
    """All request outputs of one scheduler step (plus the scheduler's stats after it, in the server)."""

    outputs: list[ReqOutput]
    stats: SchedulerStats | None = None


SchedulerInput = TokenizedGenerateReq | AbortReq | FlushCacheReq | LoadLoRAAdapterReq | UnloadLoRAAdapterReq


# ---------------------------------------------------------------------------------------------------- server
# Messages of the multi-process server (launch_server.py). Sockets: tokenizer manager → scheduler (requests),
# scheduler → detokenizer (outputs and replies), detokenizer → tokenizer manager (text outputs; everything
# that is not a BatchTokenOut is forwarded unchanged, so replies keep their order with the outputs).


# prompt tokens sent to the detokenizer as decoding context (IncrementalDetokenizer reads at most 32)
_PROMPT_TAIL = 64


class GetInfoReq(msgspec.Struct, tag=True):
    """Ask the scheduler for its stats; answered by InfoOut with the same req_id."""

    req_id: str


class SchedulerReady(msgspec.Struct, tag=True):
    """Sent once by the scheduler process when the model is loaded: the server is ready.

    context_len: longest prompt + output in tokens. vocab_size: valid token ids are [0, vocab_size).
    max_total_tokens: KV pool size in tokens. eos_token_ids: ids that end a request unless ignore_eos.
    memory: ``ModelRunner.memory_report()`` (weight and KV formats and bytes), reported by /get_server_info.
    """

    context_len: int
    vocab_size: int
    max_total_tokens: int
    eos_token_ids: list[int]
    pid: int = 0
    memory: dict[str, Any] = msgspec.field(default_factory=dict)
    lora_adapters: dict[str, str] | None = None  # name → path when LoRA is on (--enable-lora / --lora-paths)
    dp_rank: int = 0  # the scheduler replica that is ready (--dp-size: the server is ready when all are)


class DetokRegister(msgspec.Struct, tag=True):
    """Scheduler → detokenizer, before any output of an accepted request: how to detokenize it.

    prompt_tail: the last prompt tokens (decoding context for the first output token's word boundary).
    """

    rid: str
    prompt_tail: list[int]
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    stop: list[str] = []
    no_stop_trim: bool = False
    stop_regex: list[str] = []

    @classmethod
    def for_request(cls, req: TokenizedGenerateReq) -> DetokRegister:
        """The detokenization options of a request (its last prompt tokens as decoding context)."""
        sp = req.sampling_params
        return cls(
            rid=req.rid,
            prompt_tail=req.input_ids[-_PROMPT_TAIL:],
            skip_special_tokens=sp.skip_special_tokens,
            spaces_between_special_tokens=sp.spaces_between_special_tokens,
            stop=list(sp.stop),
            no_stop_trim=sp.no_stop_trim,
            stop_regex=list(sp.stop_regex),
        )


class ErrorOut(msgspec.Struct, tag=True):
    """The scheduler rejected a request (add_request raised InvalidRequestError); status is the HTTP status and
    param the field at fault."""

    rid: str
    message: str
    status: int = 400
    param: str | None = None


class ProfileReq(msgspec.Struct, tag=True):
    """Start or stop the scheduler's torch profiler (SGLang's ProfileReq options; see runtime/profiler.py)."""

    action: Literal["start", "stop"] = "start"
    output_dir: str | None = None
    num_steps: int | None = None
    activities: list[str] | None = None
    with_stack: bool | None = None
    record_shapes: bool | None = None
    profile_prefix: str | None = None


#: the ProfileReq fields a /start_profile body may set (``action`` is the route's)
PROFILE_BODY_FIELDS = ("output_dir", "num_steps", "activities", "with_stack", "record_shapes", "profile_prefix")


class ProfileOut(msgspec.Struct, tag=True):
    """Reply to ProfileReq: whether it was done, and what (or why not)."""

    success: bool
    message: str


class FlushCacheOut(msgspec.Struct, tag=True):
    """Reply to FlushCacheReq: success is False while requests are queued or running."""

    success: bool


class InfoOut(msgspec.Struct, tag=True):
    """Reply to GetInfoReq."""

    req_id: str
    stats: SchedulerStats


class BatchStrOut(msgspec.Struct, tag=True):
    """Detokenizer → tokenizer manager: one scheduler step's outputs with their text.

    texts[i] is the text delta of outputs[i]: append-only, with stop strings already trimmed (text that could
    still turn into a stop string is held back until it cannot).
    """

    outputs: list[ReqOutput]
    texts: list[str]
    stats: SchedulerStats | None = None


ServerSchedulerInput = (
    TokenizedGenerateReq
    | AbortReq
    | FlushCacheReq
    | GetInfoReq
    | ProfileReq
    | LoadLoRAAdapterReq
    | UnloadLoRAAdapterReq
)
SchedulerOutput = (
    SchedulerReady | DetokRegister | BatchTokenOut | ErrorOut | FlushCacheOut | InfoOut | ProfileOut | LoRAUpdateOut
)
DetokenizerOutput = SchedulerReady | BatchStrOut | ErrorOut | FlushCacheOut | InfoOut | ProfileOut | LoRAUpdateOut
