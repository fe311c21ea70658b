"""Pydantic models of the OpenAI-compatible API: requests (validated) and responses (serialized).

Requests accept the OpenAI fields plus SGLang/vLLM's extra sampling fields (``top_k``, ``min_p``,
``ignore_eos``, ``min_tokens``, ``repetition_penalty``, ``stop_token_ids``, ``skip_special_tokens``,
``no_stop_trim``, ...). Unknown fields are ignored, as OpenAI-compatible servers do; fields that are known but
not supported (``suffix``) are rejected by the handlers with a 400 naming them. Tool calling (``tools``,
``tool_choice``, ``parallel_tool_calls``, tool messages) and reasoning output (``separate_reasoning``) are validated
and planned in ``tools.py`` / ``chat_output.py``. Grammar-constrained
decoding: ``response_format`` (``text`` / ``json_object`` / ``json_schema``) and the extra fields ``regex``,
``json_schema``, ``ebnf`` (at most one constraint per request), on both endpoints.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

_MAX_N = 128
_MAX_TOP_LOGPROBS = 20
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with ``usage`` (and empty ``choices``)."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: ``{"name", "schema", "strict", "description"}`` (``schema`` required)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str | None = None
    description: str | None = None
    schema_: Any = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``{"type": "text"}`` (no constraint), ``{"type": "json_object"}`` (any JSON object) or
    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``; other types are refused (400)."""

    model_config = ConfigDict(extra="allow")
    type: str = "text"
    json_schema: JsonSchemaFormat | None = None


# OpenAI request fields that cannot take effect here (storage, service tiers, audio, predicted outputs, ...):
# accepted while they hold the API's default (null, false, "auto", ["text"]), a 400 naming them otherwise
_INERT_OPENAI_FIELDS: dict[str, tuple[Any, ...]] = {
    "store": (None, False),
    "metadata": (None, {}),
    "service_tier": (None, "auto", "default"),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "prompt_cache_key": (None,),
    "safety_identifier": (None,),
    # SGLang extensions its router (sglang-router) fills in with their defaults on every request it forwards
    "return_hidden_states": (None, False),
}


class SamplingRequest(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions.

    Unknown fields are refused (400 naming the field), as on the native API; OpenAI's own fields that cannot take
    effect here are accepted only at their defaults (``_INERT_OPENAI_FIELDS``).
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _inert_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, defaults in _INERT_OPENAI_FIELDS.items():
            if name in data:
                if not any(data[name] == d and type(data[name]) is type(d) for d in defaults):
                    raise PydanticCustomError("unsupported", f"{name}: not supported by this server", {"loc": name})
                data = {k: v for k, v in data.items() if k != name}
        return data

    model: str | None = None
    n: int = Field(1, ge=1, le=_MAX_N)
    temperature: float | None = None  # range checked once, by SamplingParams (the one validation of every route)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    logit_bias: dict[int, float] | None = None
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # SGLang / vLLM extensions
    top_k: int = Field(-1, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    min_tokens: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    rid: str | None = None
    # grammar-constrained decoding (SGLang's extra fields, and OpenAI's response_format); at most one
    regex: str | None = None
    json_schema: Any = None  # a JSON-schema document, as an object or a string
    ebnf: str | None = None
    response_format: ResponseFormat | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> list[str] | None:
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        if len(v) > 32:
            raise ValueError("at most 32 stop strings")
        return v

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, v: Any) -> dict[int, float] | None:
        if v is None:
            return None
        if not isinstance(v, dict):
            raise ValueError("must be an object mapping token ids to biases")
        out: dict[int, float] = {}
        for k, b in v.items():
            try:
                tok = int(k)
            except (TypeError, ValueError):
                raise ValueError(f"key {k!r} is not a token id") from None
            if tok < 0:
                raise ValueError(f"token id {tok} is negative")
            if isinstance(b, bool) or not isinstance(b, int | float) or not -100.0 <= float(b) <= 100.0:
                raise ValueError(f"bias for token {tok} must be a number in [-100, 100]")
            out[tok] = float(b)
        return out

    @field_validator("stop_token_ids", mode="before")
    @classmethod
    def _stop_token_ids(cls, v: Any) -> list[int] | None:
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v):
            raise ValueError("must be a list of non-negative token ids")
        return v


def _is_ids(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=_MAX_TOP_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=_MAX_N)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v:
            if all(isinstance(p, str) for p in v) or _is_ids(v):
                return v
            if all(_is_ids(p) and p for p in v):
                return v
        raise ValueError("must be a string, a non-empty list of strings, a list of token ids or a list of such lists")


class ChatMessage(BaseModel):
    """One chat message; ``content`` may be a string or a list of text parts (joined with newlines)."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None  # assistant turns: the calls it made (checked in tools.py)
    tool_call_id: str | None = None  # tool turns: the call answered

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in _ROLES:
            raise ValueError(f"must be one of {', '.join(_ROLES)}")
        return v

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v: Any) -> str | None:
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, list):
            texts = []
            for part in v:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError(f"only text content parts are supported, got {kind!r}")
                texts.append(part["text"])
            return "\n".join(texts)
        raise ValueError("must be a string or a list of text content parts")


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=_MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False
    separate_reasoning: bool = True  # SGLang: with --reasoning-parser, reasoning goes to reasoning_content
    stream_reasoning: bool = True  # SGLang: stream reasoning_content deltas (else send it with the last delta)


# ---------------------------------------------------------------------------------------------- responses
class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class CompletionLogProbs(BaseModel):
    """Legacy completions logprobs: parallel lists, one entry per token."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class _Choice(BaseModel):
    """What every choice carries: its index, why it ended, and SGLang's matched stop string / token id."""

    index: int
    finish_reason: str | None = None
    matched_stop: int | str | None = None


class _Response(BaseModel):
    """The envelope of every response: id, creation time (unix seconds), model and usage."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    usage: UsageInfo | None = None


class CompletionChoice(_Choice):
    text: str
    logprobs: CompletionLogProbs | None = None


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogProbs(BaseModel):
    content: list[ChatTokenLogprob] = Field(default_factory=list)


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text of the arguments object


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatCompletionChoice(_Choice):
    message: ChatResponseMessage
    logprobs: ChatLogProbs | None = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "radixgen"
    root: str | None = None
    parent: str | None = None  # a LoRA adapter's base model (vLLM's field)
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict of a response model; a ``usage`` of None is left out (OpenAI omits it)."""
    d = model.model_dump(mode="json")
    if d.get("usage", 0) is None:
        del d["usage"]
    return d
