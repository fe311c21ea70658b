"""The native /generate request: its input type, JSON parsing, and expansion into validated scheduler requests.

Everything here runs in the HTTP process before anything is sent to the scheduler, so bad input fails at once
with a ValueError whose message starts with the offending field (``"max_new_tokens: ..."``). Torch-free.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from typing import Any

from radixgen.runtime.sampling_params import SamplingParams

# SGLang request fields this server does not implement; accepted (so SGLang clients work unchanged) only while
# they carry no value (None, False, empty)
_IGNORED_SGLANG_FIELDS = frozenset(
    {
        "image_data",
        "audio_data",
        "video_data",
        "modalities",
        "lora_path",
        "lora_id",
        "session_params",
        "custom_logit_processor",
        "return_hidden_states",
        "log_metrics",
        "input_embeds",
        "token_ids_logprob",
        "bootstrap_host",
        "bootstrap_port",
        "bootstrap_room",
        "data_parallel_rank",
        "background",
    }
)


@dataclass
class GenerateReqInput:
    """A native generate request (SGLang's field names and semantics).

    Attributes:
        text: one prompt or a list (a batch). Exactly one of ``text`` / ``input_ids`` is given.
        input_ids: one list of token ids, or a list of them (a batch).
        sampling_params: SamplingParams fields as a dict, or one dict per prompt.
        return_logprob: include logprobs in meta_info; ``logprob_start_len`` (-1 = none) selects the first
            prompt position with an input logprob; ``top_logprobs_num`` the number of alternatives per position;
            ``return_text_in_logprobs`` adds each token's text to the logprob entries.
        stream: yield an update per scheduler step instead of one final response.
        rid: request id (a list for a batch); generated when absent. With ``n > 1`` the samples get
            ``<rid>-<j>``.
    """

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    rid: str | list[str] | None = None


@dataclass
class PlannedReq:
    """One scheduler request derived from a GenerateReqInput (a batch item, or one of its n samples).

    index: position of its response in a batch / n>1 result list. base_rid: the rid the item was given (the
    same as ``rid`` unless n > 1).
    """

    rid: str
    input_ids: list[int]
    params: SamplingParams
    index: int
    base_rid: str


def parse_generate_body(body: Any) -> GenerateReqInput:
    """Build a GenerateReqInput from a decoded JSON body.

    Raises:
        ValueError: the body is not an object, or has an unknown field (SGLang-only fields are accepted while
            empty); the message names the field. Types are checked by ``plan_requests``.
    """
    if not isinstance(body, dict):
        raise ValueError(f"body: must be a JSON object, got {type(body).__name__}")
    known = {f.name for f in fields(GenerateReqInput)}
    kwargs: dict[str, Any] = {}
    for key, value in body.items():
        if key in known:
            kwargs[key] = value
        elif key in _IGNORED_SGLANG_FIELDS and not value:
            continue
        else:
            raise ValueError(f"{key}: unknown or unsupported field")
    return GenerateReqInput(**kwargs)


def validate_prompt(input_ids: list[int], params: SamplingParams, context_len: int, vocab_size: int) -> None:
    """The model-dependent checks of Scheduler.validate, done before sending.

    Raises:
        ValueError: empty prompt, token id outside [0, vocab_size), prompt not shorter than the context, or
            prompt + max_new_tokens beyond it; stop_token_ids / logit_bias ids outside the vocabulary.
    """
    n = len(input_ids)
    if n == 0:
        raise ValueError("input_ids: the prompt is empty")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 or t >= vocab_size for t in input_ids):
        raise ValueError(f"input_ids: token ids must be integers in [0, {vocab_size})")
    if n >= context_len:
        raise ValueError(f"input_ids: the prompt has {n} tokens, the context length is {context_len}")
    if n + params.max_new_tokens > context_len:
        raise ValueError(
            f"max_new_tokens: prompt ({n}) + max_new_tokens ({params.max_new_tokens}) exceeds the context "
            f"length {context_len}"
        )
    params.check_vocab(vocab_size)


def _check_bool(name: str, v: object) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name}: must be a boolean, got {v!r}")


def _check_int(name: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")


def _prompt_ids(obj: GenerateReqInput, tokenizer: Any) -> tuple[list[list[int]], bool]:
    """Token-id lists of the prompts and whether the request was a single prompt."""
    if (obj.text is None) == (obj.input_ids is None):
        raise ValueError("text/input_ids: give exactly one of them")
    if obj.text is not None:
        single = isinstance(obj.text, str)
        texts = [obj.text] if isinstance(obj.text, str) else obj.text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("text: must be a string or a non-empty list of strings")
        if any(t == "" for t in texts):
            raise ValueError("text: the prompt is empty")
        if hasattr(tokenizer, "encode_batch"):
            return tokenizer.encode_batch(texts), single
        return [tokenizer.encode(t) for t in texts], single
    ids = obj.input_ids
    if not isinstance(ids, list) or not ids:
        raise ValueError("input_ids: must be a non-empty list of token ids or a non-empty list of such lists")
    single = not isinstance(ids[0], list)
    id_lists = [ids] if single else ids
    for lst in id_lists:
        if not isinstance(lst, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in lst):
            raise ValueError("input_ids: must be a list of integer token ids or a list of such lists")
    return [list(lst) for lst in id_lists], single  # type: ignore[arg-type]


def plan_requests(
    obj: GenerateReqInput, tokenizer: Any, context_len: int, vocab_size: int
) -> tuple[list[PlannedReq], bool]:
    """Tokenize, validate and expand a request (batch items × n samples), as the offline Engine does.

    Returns:
        (the planned requests in response order, whether the response is a single dict rather than a list).

    Raises:
        ValueError: any invalid field, naming it; nothing has been sent then.
    """
    id_lists, single = _prompt_ids(obj, tokenizer)
    sp = obj.sampling_params
    try:
        if isinstance(sp, list):
            if len(sp) != len(id_lists):
                raise ValueError(f"sampling_params: a list must have one entry per prompt ({len(id_lists)})")
            param_list = [SamplingParams.from_dict(p) for p in sp]
        else:
            param_list = [SamplingParams.from_dict(sp)] * len(id_lists)
    except TypeError as e:  # e.g. a wrong type of stop strings inside the dataclass
        raise ValueError(f"sampling_params: {e}") from e
    _check_bool("return_logprob", obj.return_logprob)
    _check_int("logprob_start_len", obj.logprob_start_len, -1)
    _check_int("top_logprobs_num", obj.top_logprobs_num, 0)
    if obj.top_logprobs_num > vocab_size:
        raise ValueError(f"top_logprobs_num: must be <= the vocabulary size {vocab_size}")
    _check_bool("return_text_in_logprobs", obj.return_text_in_logprobs)
    _check_bool("stream", obj.stream)
    rids = [obj.rid] if isinstance(obj.rid, str) else obj.rid
    if rids is not None:
        if not isinstance(rids, list) or len(rids) != len(id_lists):
            raise ValueError(f"rid: give one rid per prompt ({len(id_lists)})")
        if not all(isinstance(r, str) and r for r in rids) or len(set(rids)) != len(rids):
            raise ValueError("rid: must be distinct non-empty strings")
    planned: list[PlannedReq] = []
    for i, (ids, params) in enumerate(zip(id_lists, param_list, strict=True)):
        validate_prompt(ids, params, context_len, vocab_size)
        base = rids[i] if rids is not None else uuid.uuid4().hex
        for j in range(params.n):
            p = params
            if params.n > 1 and params.seed is not None:
                p = SamplingParams.from_dict({**params.to_dict(), "seed": params.seed + j})
            rid = base if params.n == 1 else f"{base}-{j}"
            planned.append(PlannedReq(rid, ids, p, len(planned), base))
    return planned, single and len(planned) == 1
