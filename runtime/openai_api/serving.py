"""Shared machinery of the OpenAI endpoints: request → a native GenerateReqInput, running it, usage.

A route turns its request into one ``GenerateReqInput`` (typed ``SamplingParams`` per prompt, ``n`` samples each)
and the TokenizerManager plans it like any native request (``generate_request.plan_requests``: validation, ``n``
and per-sample seeds, in one place); choice ``i * n + j`` is sample ``j`` of prompt ``i``. The choices run
concurrently (the scheduler batches them); when one fails or the client goes away, the others are aborted.
Errors carry the native field (``InvalidRequestError.param``), renamed into the route's terms (``renames``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from radixgen.grammar.schema_strict import strict_json_schema
from radixgen.runtime.generate_request import GenerateReqInput
from radixgen.runtime.http_common import (
    NATIVE_TO_OPENAI,
    HttpError,
    bad_request,
    http_error,
    run_unless_disconnected,
    sse_body,
)
from radixgen.runtime.openai_api.protocol import PromptTokensDetails, SamplingRequest, UsageInfo
from radixgen.runtime.openai_api.tools import GrammarConfig
from radixgen.runtime.sampling_params import SamplingParams


def reject_unsupported(req: SamplingRequest, extra: dict[str, Any] | None = None) -> None:
    """400 for fields that are known but not supported yet (``extra``: name → value; never silently ignored).

    Raises:
        HttpError: naming the first such field.
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
        HttpError: 400 for an unknown ``response_format`` type or a ``json_schema`` one without a schema.
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
        if rf.json_schema is not None and rf.json_schema.strict:  # OpenAI's strict structured outputs
            schema = strict_json_schema(_json_or_text(schema))
        out["json_schema"] = schema if isinstance(schema, str) else json.dumps(schema)
    else:
        raise bad_request(
            f"response_format: unknown type {rf.type!r} (expected 'text', 'json_object' or 'json_schema')",
            "response_format",
        )
    return out


def _json_or_text(schema: Any) -> Any:
    """A schema given as a JSON string, parsed; invalid JSON stays text (validation names the error)."""
    if not isinstance(schema, str):
        return schema
    try:
        return json.loads(schema)
    except (ValueError, RecursionError):
        return schema


def sampling_params(req: SamplingRequest, max_new_tokens: int, extra_stop: tuple[str, ...] = ()) -> SamplingParams:
    """The native sampling parameters of an OpenAI request (``n`` samples are expanded by the planner), grammar
    fields included (``grammar_params``).

    Raises:
        InvalidRequestError: an invalid value, ``param`` in native terms (``max_new_tokens``, ``min_new_tokens``).
        HttpError: from ``grammar_params``.
    """
    stop = list(dict.fromkeys([*(req.stop or []), *extra_stop]))
    return SamplingParams.from_dict(
        {
            **grammar_params(req),
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": req.min_tokens,
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
            "n": req.n,
        }
    )


@dataclass
class OpenAIRun:
    """One OpenAI request as the native request that produces its choices.

    Args:
        prompts: the token ids of each prompt. params: the sampling parameters of each prompt (``n`` samples each).
        rid: the request id (the client's ``rid`` or a new one): prompt ``i`` of several is ``<rid>-<i>``, and its
            samples ``…-<j>`` when n > 1, so ``/abort_request`` with the rid aborts the whole request.
        renames: native field → this route's field, for errors.
        logprobs: ``return_logprob``, ``logprob_start_len``, ``top_logprobs_num`` of GenerateReqInput.
        lora_path: the LoRA adapter the request's ``model`` names (None: the base model).
    """

    prompts: list[list[int]]
    params: list[SamplingParams]
    rid: str
    renames: Mapping[str, str]
    logprobs: dict[str, Any] = field(default_factory=dict)
    owner: Any = None  # the API key policy that sent it (api_keys.owner_of)
    lora_path: str | None = None

    @property
    def n(self) -> int:
        return self.params[0].n if self.params else 1

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n

    def prompt_index(self, choice_index: int) -> int:
        return choice_index // self.n

    def to_input(self, stream: bool) -> GenerateReqInput:
        single = len(self.prompts) == 1
        return GenerateReqInput(
            input_ids=self.prompts[0] if single else self.prompts,
            sampling_params=self.params[0] if single else self.params,
            stream=stream,
            rid=self.rid if single else [f"{self.rid}-{i}" for i in range(len(self.prompts))],
            lora_path=self.lora_path,
            **self.logprobs,
        )

    async def results(self, tm: Any, request: Request | None) -> list[dict[str, Any]]:
        """Every choice's final native response, in choice order.

        Raises:
            HttpError: invalid input (in this route's field names) or a failed request.
            ClientDisconnected: the client went away first (everything is aborted).
        """
        agen = tm.generate_request(self.to_input(stream=False), owner=self.owner)
        try:
            final = await run_unless_disconnected(request, anext(agen))
        except StopAsyncIteration:
            raise HttpError(500, "the runtime returned no result", type_="server_error") from None
        except (ValueError, RuntimeError, TimeoutError) as e:
            raise http_error(e, self.renames) from None
        finally:
            await agen.aclose()
        return final if isinstance(final, list) else [final]

    async def stream(self, tm: Any) -> tuple[tuple[int, dict[str, Any]] | None, AsyncGenerator[tuple[int, dict]]]:
        """Start streaming: the first ``(choice index, cumulative native response)`` update and an iterator of the
        rest. Input errors surface here, before any byte of the response is sent.

        Raises:
            HttpError: invalid input, in this route's field names.
        """
        agen = tm.generate_request(self.to_input(stream=True), incremental=False, owner=self.owner)

        async def updates() -> AsyncGenerator[tuple[int, dict[str, Any]]]:
            try:
                async for item in agen:
                    yield int(item.get("index", 0)), item
            finally:
                await agen.aclose()

        it = updates()
        try:
            first = await anext(it, None)
        except BaseException as e:
            await it.aclose()
            if isinstance(e, ValueError | RuntimeError | TimeoutError):
                raise http_error(e, self.renames) from None
            raise
        return first, it


    async def stream_response(
        self,
        tm: Any,
        chunk_object: str,
        model_name: str,
        rid: str,
        include_usage: bool,
        choices_of: Callable[[int, dict[str, Any]], list[dict[str, Any]]],
        opening: list[dict[str, Any]] | None = None,
    ) -> StreamingResponse:
        """The SSE response of a streamed route: one chunk ``{"id", "object", "created", "model", "choices"}`` per
        choice dict, then a usage chunk (``include_usage``), an error event if the runtime fails midway, and
        ``[DONE]``.

        Args:
            chunk_object: the chunks' ``object`` (``chat.completion.chunk`` / ``text_completion``).
            choices_of: the route's choice dicts for one update ``(choice index, cumulative native response)``.
            opening: choice dicts sent before any update (the chat route's role deltas).

        Raises:
            HttpError: invalid input (before any byte of the response is sent).
        """
        first, updates = await self.stream(tm)
        created = int(time.time())
        finals: dict[int, dict[str, Any]] = {}

        def chunk(choices: list[dict[str, Any]], usage: UsageInfo | None = None) -> dict[str, Any]:
            d: dict[str, Any] = {"id": rid, "object": chunk_object, "created": created, "model": model_name}
            d["choices"] = choices
            if usage is not None:
                d["usage"] = usage.model_dump(mode="json")
            return d

        async def events() -> AsyncGenerator[dict[str, Any]]:
            try:
                for choice in opening or []:
                    yield chunk([choice])
                item = first
                while item is not None:
                    index, res = item
                    if res["meta_info"].get("finish_reason") is not None:
                        finals[index] = res
                    for choice in choices_of(index, res):
                        yield chunk([choice])
                    item = await anext(updates, None)
                if include_usage:
                    yield chunk([], usage_of(finals, self))
            finally:
                await updates.aclose()

        return StreamingResponse(sse_body(events(), renames=self.renames), media_type="text/event-stream")


def openai_renames(prompt_field: str, max_tokens_field: str = "max_tokens") -> dict[str, str]:
    """Native → OpenAI field names of a route: the prompt's field and the field that gave max_new_tokens."""
    return {**NATIVE_TO_OPENAI, "input_ids": prompt_field, "max_new_tokens": max_tokens_field}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def finish_reason(meta: dict[str, Any]) -> tuple[str | None, int | str | None]:
    """OpenAI finish_reason (``stop``, ``length``, or ``abort`` as SGLang/vLLM report it) and SGLang's
    matched_stop (the stop string or token id) from native meta_info."""
    fr = meta.get("finish_reason")
    if not fr:
        return None, None
    kind = fr.get("type")
    return kind, fr.get("matched") if kind == "stop" else None


def usage_of(results: dict[int, dict[str, Any]], run: OpenAIRun) -> UsageInfo:
    """Usage over the choices in ``results`` (choice index → final native response): prompt and cached tokens once
    per prompt, completion tokens summed."""
    prompt = completion = cached = 0
    seen: set[int] = set()
    for index, res in sorted(results.items()):
        meta = res["meta_info"]
        completion += int(meta.get("completion_tokens", 0))
        p = run.prompt_index(index)
        if p not in seen:
            seen.add(p)
            prompt += int(meta.get("prompt_tokens", len(run.prompts[p])))
            cached += int(meta.get("cached_tokens", 0) or 0)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


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


@dataclass
class ApiContext:
    """What the endpoints share: the TokenizerManager, the served model name, the chat template, and the grammar
    settings tool calls and reasoning are planned with."""

    tm: Any
    model_name: str
    chat_template: Any = None  # a chat_templates.ChatTemplate or None (the tokenizer's own)
    grammar: GrammarConfig = field(default_factory=GrammarConfig)  # tool-call / reasoning parsers, grammar limits
    token_texts: TokenTexts = field(init=False)

    def __post_init__(self) -> None:
        self.token_texts = TokenTexts(self.tm.tokenizer)

    def check_model(self, model: str | None) -> str | None:
        """Refuse early: 503 while the runtime is not ready (or died), 404 for a model that is neither the served
        one (None means the served model) nor a loaded LoRA adapter (``<adapter>`` or ``<served model>:<adapter>``,
        as vLLM and SGLang name them). Returns the adapter's name, None for the base model.

        Raises:
            ServerUnavailableError: from the TokenizerManager (HTTP 503).
            HttpError: 404 for an unknown model or adapter.
        """
        check_available = getattr(self.tm, "check_available", None)
        if check_available is not None:
            check_available()
        if model is None or model == self.model_name:
            return None
        adapters = getattr(self.tm, "lora_adapters", None) or {}
        base, sep, name = model.rpartition(":")
        adapter = name if sep and base == self.model_name else model
        if adapter in adapters:
            return adapter
        served = ", ".join(f"`{m}`" for m in [self.model_name, *adapters])
        raise HttpError(404, f"The model `{model}` does not exist (this server serves {served}).", param="model")
