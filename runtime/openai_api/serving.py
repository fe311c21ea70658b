"""Shared machinery of the OpenAI endpoints: request → native sampling params, running the choices, usage.

Every choice (prompt × ``n``) is sent to the TokenizerManager as its own single-prompt request, so that
non-streaming and streaming, one prompt and many, take the same path; with ``n > 1`` and a ``seed``, choice
``j`` uses ``seed + j`` as the native API does. The choices of one HTTP request run concurrently (the
scheduler batches them); when one fails or the client goes away, the others are cancelled, which aborts them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from radixgen.runtime.detokenizer import StopStringMatcher
from radixgen.runtime.generate_request import GenerateReqInput
from radixgen.runtime.openai_api.errors import OpenAIError, bad_request, from_value_error
from radixgen.runtime.openai_api.protocol import PromptTokensDetails, SamplingRequest, UsageInfo
from radixgen.runtime.sampling_params import SamplingParams


@dataclass
class ChoiceJob:
    """One choice of a response: which prompt it answers and the native request that produces it."""

    index: int
    prompt_index: int
    input_ids: list[int]
    sampling_params: dict[str, Any]
    rid: str
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0

    def to_input(self, stream: bool) -> GenerateReqInput:
        return GenerateReqInput(
            input_ids=self.input_ids,
            sampling_params=self.sampling_params,
            return_logprob=self.return_logprob,
            logprob_start_len=self.logprob_start_len,
            top_logprobs_num=self.top_logprobs_num,
            stream=stream,
            rid=self.rid,
        )


def reject_unsupported(req: SamplingRequest, extra: dict[str, Any] | None = None) -> None:
    """400 for fields that are known but not supported yet (``extra``: name → value; never silently ignored).

    Raises:
        OpenAIError: naming the first such field.
    """
    for name, value in (extra or {}).items():
        if value is not None and value is not False and value != []:
            raise bad_request(f"{name}: not supported by this server yet", name)
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options: only allowed when stream is true", "stream_options")


def grammar_params(req: SamplingRequest) -> dict[str, Any]:
    """The native grammar-constraint fields of a request: ``response_format`` (``json_object`` →
    ``json_object=True``, ``json_schema`` → ``json_schema=json.dumps(schema)``, ``text`` → none) and the extra
    fields ``regex`` / ``json_schema`` / ``ebnf``. Whether the constraint is valid (and that there is at most
    one) is checked by SamplingParams and the scheduler, whose errors name the field.

    Raises:
        OpenAIError: 400 for an unknown ``response_format`` type or a ``json_schema`` one without a schema.
    """
    out: dict[str, Any] = {}
    if req.regex is not None:
        out["regex"] = req.regex
    if req.ebnf is not None:
        out["ebnf"] = req.ebnf
    if req.json_schema is not None:
        js = req.json_schema
        out["json_schema"] = js if isinstance(js, str) else json.dumps(js)
    rf = req.response_format
    if rf is None or rf.type == "text":
        return out
    given = [k for k in ("regex", "ebnf", "json_schema") if k in out]
    if given:
        raise bad_request(
            f"response_format: cannot be combined with {'/'.join(given)} (give at most one grammar constraint)",
            "response_format",
        )
    if rf.type == "json_object":
        out["json_object"] = True
    elif rf.type == "json_schema":
        schema = rf.json_schema.schema_ if rf.json_schema is not None else None
        if schema is None:
            raise bad_request(
                "response_format.json_schema.schema: required when response_format.type is 'json_schema'",
                "response_format.json_schema.schema",
            )
        out["json_schema"] = schema if isinstance(schema, str) else json.dumps(schema)
    else:
        raise bad_request(
            f"response_format: unknown type {rf.type!r} (expected 'text', 'json_object' or 'json_schema')",
            "response_format",
        )
    return out


def native_sampling_params(req: SamplingRequest, max_new_tokens: int, extra_stop: tuple[str, ...] = ()) -> dict:
    """The native sampling-params dict (``n`` is expanded by the caller, so it is 1 here), grammar fields
    included (``grammar_params``)."""
    stop = list(dict.fromkeys([*(req.stop or []), *extra_stop]))
    return {
        **grammar_params(req),
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min(req.min_tokens, max_new_tokens),
        "stop": stop,
        "stop_token_ids": list(req.stop_token_ids or []),
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
        "repetition_penalty": req.repetition_penalty,
        "logit_bias": dict(req.logit_bias or {}),
        "seed": req.seed,
        "ignore_eos": req.ignore_eos,
        "skip_special_tokens": req.skip_special_tokens,
        "spaces_between_special_tokens": req.spaces_between_special_tokens,
        "no_stop_trim": req.no_stop_trim,
        "n": 1,
    }


def check_request(
    params: dict[str, Any],
    input_ids: list[int],
    tm: Any,
    prompt_field: str,
    max_tokens_field: str = "max_tokens",
    min_tokens_requested: int = 0,
) -> None:
    """Validate one prompt and its params against the model before anything is sent.

    Raises:
        OpenAIError: 400 naming the OpenAI field (``prompt``/``messages``, ``max_tokens``, ``logit_bias`` ...).
    """
    if min_tokens_requested > params["max_new_tokens"]:
        raise bad_request(
            f"min_tokens ({min_tokens_requested}) must be <= {max_tokens_field} ({params['max_new_tokens']})",
            "min_tokens",
        )
    try:
        SamplingParams.from_dict(params).check_vocab(tm.vocab_size)
    except ValueError as e:
        raise from_value_error(e, {"max_new_tokens": max_tokens_field}) from None
    n, ctx = len(input_ids), tm.context_len
    if n == 0:
        raise bad_request(f"{prompt_field}: the prompt is empty", prompt_field)
    bad = next((t for t in input_ids if not 0 <= t < tm.vocab_size), None)
    if bad is not None:
        raise bad_request(f"{prompt_field}: token id {bad} out of range [0, {tm.vocab_size})", prompt_field)
    if n >= ctx:
        raise bad_request(f"{prompt_field}: the prompt has {n} tokens, the context length is {ctx}", prompt_field)
    if n + params["max_new_tokens"] > ctx:
        raise bad_request(
            f"{max_tokens_field}: prompt ({n} tokens) + {max_tokens_field} ({params['max_new_tokens']}) exceeds "
            f"the context length {ctx}",
            max_tokens_field,
        )


def expand_choices(
    prompts: list[list[int]],
    params: list[dict[str, Any]],
    n: int,
    id_prefix: str,
    **logprob_kwargs: Any,
) -> list[ChoiceJob]:
    """One job per (prompt, sample): index = prompt_index * n + j; seeds become seed + j when n > 1."""
    jobs = []
    for p, (ids, sp) in enumerate(zip(prompts, params, strict=True)):
        for j in range(n):
            this = dict(sp)
            if n > 1 and sp.get("seed") is not None:
                this["seed"] = sp["seed"] + j
            rid = f"{id_prefix}-{p * n + j}"
            jobs.append(ChoiceJob(p * n + j, p, ids, this, rid, **logprob_kwargs))
    return jobs


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def _final(tm: Any, job: ChoiceJob) -> dict[str, Any]:
    agen = tm.generate_request(job.to_input(stream=False))
    last: Any = None
    try:
        async for item in agen:
            last = item
    finally:
        await agen.aclose()
    if isinstance(last, list):  # a batch-shaped answer for a single prompt
        last = last[0]
    if last is None:
        raise OpenAIError(500, "the runtime returned no result", type_="server_error")
    return last


async def generate_all(tm: Any, jobs: list[ChoiceJob], request: Request | None = None) -> list[dict[str, Any]]:
    """Run every job to completion concurrently; results in job order.

    If one fails, the others are cancelled (aborting them) and the error is raised. If ``request``'s client
    disconnects first, everything is cancelled and ``ClientDisconnected`` is raised.
    """
    tasks = [asyncio.ensure_future(_final(tm, job)) for job in jobs]
    gathered = asyncio.gather(*tasks)
    try:
        return await _watch_disconnect(gathered, request)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class ClientDisconnected(Exception):
    """The HTTP client went away before the response was ready."""


async def _watch_disconnect(fut: Awaitable[Any], request: Request | None) -> Any:
    """Await ``fut`` unless the client disconnects first (then it is cancelled and ClientDisconnected raised)."""
    task = asyncio.ensure_future(fut)
    if request is None:
        return await task

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


async def stream_all(tm: Any, jobs: list[ChoiceJob]) -> AsyncIterator[tuple[ChoiceJob, dict[str, Any]]]:
    """Merge the streams of every job: yields ``(job, cumulative native response)`` as updates arrive.

    An error in any stream is raised here after the others are cancelled; closing this generator early
    (client disconnect) cancels all of them, which aborts their requests.
    """
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    done_marker = object()

    async def pump(i: int, job: ChoiceJob) -> None:
        agen = tm.generate_request(job.to_input(stream=True))
        try:
            async for item in agen:
                queue.put_nowait((i, item, None))
        except Exception as e:
            queue.put_nowait((i, None, e))
        finally:
            queue.put_nowait((i, done_marker, None))
            await agen.aclose()

    tasks = [asyncio.ensure_future(pump(i, job)) for i, job in enumerate(jobs)]
    remaining = len(jobs)
    try:
        while remaining:
            i, item, err = await queue.get()
            if err is not None:
                raise err
            if item is done_marker:
                remaining -= 1
                continue
            yield jobs[i], item
    finally:
        for t in tasks:
            t.cancel()  # synchronous, so it happens even when this generator is itself being cancelled


def finish_reason(meta: dict[str, Any]) -> tuple[str | None, int | str | None]:
    """OpenAI finish_reason (``stop``, ``length``, or ``abort`` as SGLang/vLLM report it) and SGLang's
    matched_stop (the stop string or token id) from native meta_info."""
    fr = meta.get("finish_reason")
    if not fr:
        return None, None
    kind = fr.get("type")
    return kind, fr.get("matched") if kind == "stop" else None


def usage_of(results: dict[int, dict[str, Any]], jobs: list[ChoiceJob]) -> UsageInfo:
    """Usage over all choices: prompt and cached tokens once per prompt, completion tokens summed."""
    prompt = completion = cached = 0
    seen: set[int] = set()
    for job in jobs:
        meta = results[job.index]["meta_info"]
        completion += int(meta.get("completion_tokens", 0))
        if job.prompt_index not in seen:
            seen.add(job.prompt_index)
            prompt += int(meta.get("prompt_tokens", len(job.input_ids)))
            cached += int(meta.get("cached_tokens", 0) or 0)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event line pair."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


class TokenTexts:
    """Token strings for logprobs, decoded in context so that word-boundary spaces come out right.

    The text of token ``t`` after context ``c`` is ``decode(c[-4:] + [t])`` minus ``decode(c[-4:])``; special
    tokens are shown (``</s>``), unlike in the generated text.
    """

    _CONTEXT = 4

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()) or ())

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def pieces(self, context: list[int], candidates: list[int]) -> list[str]:
        """The text of each candidate token if it came right after ``context``."""
        ctx = list(context[-self._CONTEXT :])
        base = self._decode(ctx) if ctx else ""
        out = []
        for t in candidates:
            full = self._decode([*ctx, t])
            out.append(full[len(base) :] if full.startswith(base) else self._decode([t]))
        return out


def safe_stream_text(text: str, stop: list[str], finished: bool) -> str:
    """The part of a cumulative streamed text that may be sent: hold back a tail that may grow into a stop."""
    if finished or not stop:
        return text
    return text[: StopStringMatcher(stop).safe_prefix_len(text)]


@dataclass
class ApiContext:
    """What the endpoints share: the TokenizerManager, the served model name, the chat template."""

    tm: Any
    model_name: str
    chat_template: Any = None  # a chat_templates.ChatTemplate or None (the tokenizer's own)
    token_texts: TokenTexts = field(init=False)

    def __post_init__(self) -> None:
        self.token_texts = TokenTexts(self.tm.tokenizer)

    def check_model(self, model: str | None) -> None:
        """Refuse early: 503 while the runtime is not ready (or died), 404 for a model name other than the
        served one (None means the served model).

        Raises:
            ServerUnavailableError: from the TokenizerManager (HTTP 503).
            OpenAIError: 404 for an unknown model.
        """
        check_available = getattr(self.tm, "check_available", None)
        if check_available is not None:
            check_available()
        if model is not None and model != self.model_name:
            raise OpenAIError(
                404,
                f"The model `{model}` does not exist (this server serves `{self.model_name}`).",
                param="model",
                type_="not_found_error",
            )
