"""The request planner: every entry point's input → validated, expanded scheduler requests, in one place.

The offline Engine, the native ``/generate`` and every ``/v1`` route build a ``GenerateReqInput`` (SGLang's native
request, with typed ``SamplingParams``) and call ``plan_requests``: it tokenizes, validates once (prompt against the
model's context and vocabulary, sampling parameters, logprob options, rids) and expands batch items × ``n`` samples
(sample ``j`` of a seeded request uses ``seed + j``) into ``TokenizedGenerateReq`` messages. Bad input raises
``InvalidRequestError`` naming the field before anything is sent. Torch-free.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import Any

from radixgen.runtime.errors import InvalidRequestError, LoRAError
from radixgen.runtime.io_struct import TokenizedGenerateReq
from radixgen.runtime.sampling_params import SamplingParams

# SGLang GenerateReqInput fields this server does not implement (multimodal inputs, sessions, disaggregation,
# routing, hidden states, ...): accepted while they carry SGLang's default (null, false, 0, empty) so SGLang clients
# work unchanged, refused with a 400 naming them otherwise — never silently ignored
_UNSUPPORTED_SGLANG_FIELDS = frozenset(
    {
        "image_data", "audio_data", "video_data", "modalities", "mm_hashes", "mm_content_hashes",
        "use_audio_in_video", "video_config", "input_embeds", "positional_embed_overrides",
        "lora_id", "session_params", "custom_logit_processor", "watermark",
        "return_hidden_states", "return_routed_experts", "routed_experts_start_len", "return_indexer_topk",
        "return_sampling_mask", "sampling_logprobs_mode", "return_flat_raw_top_logprobs",
        "return_flat_raw_output_top_logprobs", "return_flat_raw_top_logprobs_b64",
        "bootstrap_room", "bootstrap_pair_key", "decode_tp_size",
        "data_parallel_rank", "routed_dp_rank", "disagg_prefill_dp_rank", "routing_key", "http_worker_ipc",
        "background", "require_reasoning", "max_thinking_tokens", "priority", "extra_key", "no_logs",
        "custom_labels", "conversation_id", "return_bytes", "return_entropy",
    }
)


@dataclass
class GenerateReqInput:
    """A generate request (SGLang's native field names and semantics), as every entry point builds it.

    Attributes:
        text: one prompt or a list (a batch). Exactly one of ``text`` / ``input_ids`` is given.
        input_ids: one list of token ids, or a list of them (a batch).
        sampling_params: SamplingParams (typed, from the OpenAI routes) or its fields as a dict (native JSON, the
            Engine), or one per prompt.
        return_logprob: include logprobs in meta_info; ``logprob_start_len`` (-1 = none) selects the first
            prompt position with an input logprob; ``top_logprobs_num`` the number of alternatives per position;
            ``return_text_in_logprobs`` adds each token's text to the logprob entries; ``token_ids_logprob`` (a list
            of token ids, or one list per prompt) asks for those ids' logprobs at every position
            (``input_token_ids_logprobs`` / ``output_token_ids_logprobs``, SGLang's meaning).
        stream: yield an update per scheduler step instead of one final response.
        rid: request id (a list for a batch); generated when absent. With ``n > 1`` the samples get
            ``<rid>-<j>``.
        session_id: SGLang's stable identity of the requests of one session (tracking only: it is written to the
            request's log line; it does not change the prompt).
        log_metrics: False keeps the request out of the metrics and the request log (SGLang uses it for health
            checks).
        lora_path: the name of a loaded LoRA adapter to run under (SGLang's field), or one per prompt (None entries:
            the base model).
        model: the model the request is for (sglang-router sets it; null from a single-model router): the served
            model or a LoRA adapter, named as on the OpenAI routes; the HTTP layer resolves it (404 when unknown).
        bootstrap_host / bootstrap_port: the prefill server (host, ``--disaggregation-bootstrap-port``) a
            ``--disaggregation-mode decode`` server fetches the prompts' KV from (SGLang's fields; set by the PD
            router, runtime/disaggregation/router.py); both or neither.
    """

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: SamplingParams | list[SamplingParams] | dict[str, Any] | list[dict[str, Any]] | None = None
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    token_ids_logprob: list[int] | list[list[int]] | None = None
    stream: bool = False
    rid: str | list[str] | None = None
    session_id: str | None = None
    log_metrics: bool = True
    lora_path: str | list[str | None] | None = None
    model: str | None = None
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None


@dataclass
class PlannedReq:
    """One scheduler request derived from a GenerateReqInput (a batch item, or one of its n samples).

    req: the message for the scheduler. index: position of its response in a batch / n>1 result list (prompt
    ``i``, sample ``j`` → ``i * n + j``). prompt_index: ``i``. base_rid: the rid the item was given (the same as
    ``req.rid`` unless n > 1). return_text_in_logprobs: a response option (the scheduler does not need it).
    """

    req: TokenizedGenerateReq
    index: int
    prompt_index: int
    base_rid: str
    return_text_in_logprobs: bool = False
    session_id: str | None = None
    log_metrics: bool = True

    @property
    def rid(self) -> str:
        return self.req.rid


# fields whose null means the default in SGLang's GenerateReqInput
_NULL_MEANS_DEFAULT = frozenset({"return_logprob", "logprob_start_len", "top_logprobs_num", "stream"})


def parse_generate_body(body: Any) -> GenerateReqInput:
    """Build a GenerateReqInput from a decoded JSON body.

    Raises:
        InvalidRequestError: the body is not an object, or has an unknown field (SGLang-only fields are accepted
            while empty). Types are checked by ``plan_requests``.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("body", f"body: must be a JSON object, got {type(body).__name__}")
    known = {f.name for f in fields(GenerateReqInput)}
    kwargs: dict[str, Any] = {}
    for key, value in body.items():
        if key in _NULL_MEANS_DEFAULT and value is None:
            continue  # SGLang clients send null for "the default"
        if key in known:
            kwargs[key] = value
        elif key in _UNSUPPORTED_SGLANG_FIELDS:
            if value:
                raise InvalidRequestError(key, f"{key}: not supported by this server (only its default is accepted)")
        elif key == "log_metrics":
            if not isinstance(value, bool):
                raise InvalidRequestError(key, f"log_metrics: must be a boolean, got {value!r}")
            kwargs[key] = value
        else:
            raise InvalidRequestError(key, f"{key}: unknown field")
    return GenerateReqInput(**kwargs)


def validate_prompt(input_ids: list[int], params: SamplingParams, context_len: int, vocab_size: int) -> None:
    """The model-dependent checks of one prompt and its sampling parameters.

    Raises:
        InvalidRequestError: empty prompt, token id outside [0, vocab_size), prompt not shorter than the context
            (``input_ids``), or prompt + max_new_tokens beyond it (``max_new_tokens``); stop_token_ids /
            logit_bias ids outside the vocabulary.
    """
    n = len(input_ids)
    if n == 0:
        raise InvalidRequestError("input_ids", "input_ids: the prompt is empty")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 or t >= vocab_size for t in input_ids):
        raise InvalidRequestError("input_ids", f"input_ids: token ids must be integers in [0, {vocab_size})")
    if n >= context_len:
        raise InvalidRequestError(
            "input_ids", f"input_ids: the prompt has {n} tokens, the context length is {context_len}"
        )
    if n + params.max_new_tokens > context_len:
        raise InvalidRequestError(
            "max_new_tokens",
            f"max_new_tokens: prompt ({n}) + max_new_tokens ({params.max_new_tokens}) exceeds the context "
            f"length {context_len}",
        )
    params.check_vocab(vocab_size)


def _check_bool(name: str, v: object) -> None:
    if not isinstance(v, bool):
        raise InvalidRequestError(name, f"{name}: must be a boolean, got {v!r}")


def _check_int(name: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InvalidRequestError(name, f"{name}: must be an integer >= {lo}, got {v!r}")


def _prompt_ids(
    obj: GenerateReqInput, tokenizer: Any, text_field: str, max_chars: int | None
) -> tuple[list[list[int]], bool]:
    """Token-id lists of the prompts and whether the request was a single prompt. A text longer than ``max_chars``
    is refused before it is tokenized (it cannot fit the context)."""
    if (obj.text is None) == (obj.input_ids is None):
        raise InvalidRequestError(text_field, f"{text_field}/input_ids: give exactly one of them")
    if obj.text is not None:
        single = isinstance(obj.text, str)
        texts = [obj.text] if isinstance(obj.text, str) else obj.text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidRequestError(text_field, f"{text_field}: must be a string or a non-empty list of strings")
        if any(t == "" for t in texts):
            raise InvalidRequestError(text_field, f"{text_field}: the prompt is empty")
        for t in texts:
            check_prompt_chars(t, text_field, max_chars)
        if hasattr(tokenizer, "encode_batch"):
            return tokenizer.encode_batch(texts), single
        return [tokenizer.encode(t) for t in texts], single
    ids = obj.input_ids
    if not isinstance(ids, list) or not ids:
        raise InvalidRequestError(
            "input_ids", "input_ids: must be a non-empty list of token ids or a non-empty list of such lists"
        )
    single = not isinstance(ids[0], list)
    id_lists = [ids] if single else ids
    for lst in id_lists:
        if not isinstance(lst, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in lst):
            raise InvalidRequestError(
                "input_ids", "input_ids: must be a list of integer token ids or a list of such lists"
            )
    return [list(lst) for lst in id_lists], single  # type: ignore[arg-type]


def _token_ids_logprob(value: Any, num_prompts: int, vocab_size: int) -> list[list[int] | None]:
    """Per prompt, the token ids whose logprobs are asked for (None: none)."""
    if value is None or value == []:
        return [None] * num_prompts
    per_prompt = value if isinstance(value, list) and all(isinstance(v, list) for v in value) else None
    lists = per_prompt if per_prompt is not None else [value] * num_prompts
    if len(lists) != num_prompts:
        raise InvalidRequestError("token_ids_logprob", f"token_ids_logprob: give one list per prompt ({num_prompts})")
    for ids in lists:
        if not isinstance(ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids
        ):
            raise InvalidRequestError(
                "token_ids_logprob", f"token_ids_logprob: must be token ids in [0, {vocab_size}) (or a list per prompt)"
            )
    return [list(ids) or None for ids in lists]


def _lora_paths(value: Any, num_prompts: int, adapters: Collection[str] | None) -> list[str | None]:
    """Per prompt, the adapter it runs under (None: the base model).

    Raises:
        InvalidRequestError: not a name or a list of one per prompt, or LoRA off (400); an adapter that is not
            loaded (``LoRAError``, 404).
    """
    names = value if isinstance(value, list) else [value] * num_prompts
    if len(names) != num_prompts or not all(n is None or (isinstance(n, str) and n) for n in names):
        raise InvalidRequestError(
            "lora_path",
            f"lora_path: must be an adapter name or a list of one name (or null) per prompt ({num_prompts})",
        )
    for name in names:
        if name is None:
            continue
        if adapters is None:
            raise InvalidRequestError(
                "lora_path", "lora_path: this server serves no LoRA adapters (start it with --enable-lora)"
            )
        if name not in adapters:
            loaded = ", ".join(sorted(adapters)) or "none"
            raise LoRAError("lora_path", f"lora_path: no LoRA adapter named {name!r} is loaded (loaded: {loaded})", 404)
    return names


def _sampling_params(value: Any) -> SamplingParams:
    return value if isinstance(value, SamplingParams) else SamplingParams.from_dict(value)


def plan_requests(
    obj: GenerateReqInput,
    tokenizer: Any,
    context_len: int,
    vocab_size: int,
    text_field: str = "text",
    max_prompt_chars: int | None = None,
    max_prompts: int | None = None,
    lora_adapters: Collection[str] | None = None,
) -> tuple[list[PlannedReq], bool]:
    """Tokenize, validate and expand a request (batch items × n samples): the one planner of every entry point.

    Args:
        obj: the request. tokenizer: encodes ``obj.text`` (``encode`` or ``encode_batch``).
        context_len / vocab_size: the model's limits. text_field: what the entry point calls ``text`` in errors
            (the Engine's argument is ``prompt``).
        max_prompt_chars: texts longer than this are refused before tokenizing (``max_prompt_chars(...)``).
        max_prompts: at most this many scheduler requests (prompts × n) from one call.
        lora_adapters: the names of the loaded LoRA adapters ``lora_path`` may name; None when LoRA is off.

    Returns:
        (the planned requests in response order, whether the response is a single dict rather than a list).

    Raises:
        InvalidRequestError: any invalid field, naming it; nothing has been sent then.
    """
    id_lists, single = _prompt_ids(obj, tokenizer, text_field, max_prompt_chars)
    sp = obj.sampling_params
    if isinstance(sp, list):
        if len(sp) != len(id_lists):
            raise InvalidRequestError(
                "sampling_params", f"sampling_params: a list must have one entry per prompt ({len(id_lists)})"
            )
        param_list = [_sampling_params(p) for p in sp]
    else:
        param_list = [_sampling_params(sp)] * len(id_lists)
    _check_bool("return_logprob", obj.return_logprob)
    _check_int("logprob_start_len", obj.logprob_start_len, -1)
    _check_int("top_logprobs_num", obj.top_logprobs_num, 0)
    if obj.top_logprobs_num > vocab_size:
        raise InvalidRequestError("top_logprobs_num", f"top_logprobs_num: must be <= the vocabulary size {vocab_size}")
    _check_bool("return_text_in_logprobs", obj.return_text_in_logprobs)
    asked = _token_ids_logprob(obj.token_ids_logprob, len(id_lists), vocab_size)
    loras = _lora_paths(obj.lora_path, len(id_lists), lora_adapters)
    if any(asked) and not obj.return_logprob:
        raise InvalidRequestError("token_ids_logprob", "token_ids_logprob: requires return_logprob")
    _check_bool("stream", obj.stream)
    if obj.session_id is not None and not isinstance(obj.session_id, str):
        raise InvalidRequestError("session_id", f"session_id: must be a string, got {obj.session_id!r}")
    rids = [obj.rid] if isinstance(obj.rid, str) else obj.rid
    if rids is not None:
        if not isinstance(rids, list) or len(rids) != len(id_lists):
            raise InvalidRequestError("rid", f"rid: give one rid per prompt ({len(id_lists)})")
        if not all(isinstance(r, str) and r for r in rids) or len(set(rids)) != len(rids):
            raise InvalidRequestError("rid", "rid: must be distinct non-empty strings")
    _check_bootstrap(obj.bootstrap_host, obj.bootstrap_port)
    total = sum(p.n for p in param_list)
    if max_prompts is not None and total > max_prompts:
        field = text_field if obj.text is not None else "input_ids"
        raise InvalidRequestError(
            field, f"{field}: {total} prompts × samples in one request; at most {max_prompts} (max_prompts_per_request)"
        )
    planned: list[PlannedReq] = []
    for i, (ids, params) in enumerate(zip(id_lists, param_list, strict=True)):
        validate_prompt(ids, params, context_len, vocab_size)
        base = rids[i] if rids is not None else uuid.uuid4().hex
        for j in range(params.n):
            p = params.replace(seed=params.seed + j) if params.n > 1 and params.seed is not None else params
            req = TokenizedGenerateReq(
                rid=base if params.n == 1 else f"{base}-{j}",
                input_ids=ids,
                sampling_params=p,
                return_logprob=obj.return_logprob,
                logprob_start_len=obj.logprob_start_len,
                top_logprobs_num=obj.top_logprobs_num,
                stream=obj.stream,
                token_ids_logprob=asked[i],
                lora_path=loras[i],
                bootstrap_host=obj.bootstrap_host,
                bootstrap_port=obj.bootstrap_port,
            )
            planned.append(
                PlannedReq(req, len(planned), i, base, obj.return_text_in_logprobs, obj.session_id, obj.log_metrics)
            )
    return planned, single and len(planned) == 1


def _check_bootstrap(host: Any, port: Any) -> None:
    """``bootstrap_host`` (a non-empty string) and ``bootstrap_port`` (1..65535) come together or not at all."""
    if host is None and port is None:
        return
    if not isinstance(host, str) or not host or any(c in host for c in "/: "):
        raise InvalidRequestError("bootstrap_host", f"bootstrap_host: must be a host name or address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidRequestError("bootstrap_port", f"bootstrap_port: must be in 1..65535, got {port!r}")


def check_prompt_chars(text: str, field: str, max_chars: int | None) -> None:
    """Refuse, before tokenizing it, a prompt text that cannot fit the context.

    Raises:
        InvalidRequestError: ``text`` has more than ``max_chars`` characters (``param``: ``field``).
    """
    if max_chars is not None and len(text) > max_chars:
        raise InvalidRequestError(
            field, f"{field}: the prompt has {len(text)} characters; no more than {max_chars} can fit the context "
            "(context length × the tokenizer's longest token)"
        )


def max_prompt_chars(tokenizer: Any, context_len: int) -> int:
    """The most characters a prompt can have and still fit ``context_len`` tokens: each token decodes to at most as
    many characters as its vocabulary string has (SentencePiece's ``▁``, byte-level BPE's one symbol per byte, byte
    fallback's ``<0x..>``), times 2 for normalizers that drop characters. A cheap bound checked before tokenizing."""
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return 2 * context_len * max(longest, 1)
