"""The one sampling-parameters dataclass of the DSL: ``gen``, run defaults and every backend use it.

A field left at ``None`` is *unset*: it inherits from the defaults given to ``program.run(...)`` (see
``merged_over``), and what is still unset when the call reaches a backend is left to the server's own default
(for ``max_tokens`` the DSL's default, ``DEFAULT_MAX_TOKENS``, like SGLang's frontend). Construction validates
every field and raises ``ValueError`` naming it; an unknown keyword given to ``rg.gen`` raises ``TypeError``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_MAX_TOKENS = 128
RUN_ONLY_NAMES = ("max_new_tokens",)  # SGLang's name for max_tokens among run()'s sampling defaults


def _is_model_class(obj: Any) -> bool:
    """Whether ``obj`` is a Pydantic model class (pydantic is imported lazily; FastAPI pulls it in anyway)."""
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic is a dependency of fastapi
        return False
    return isinstance(obj, type) and issubclass(obj, BaseModel)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling and constraint parameters of one ``gen`` call (``None`` = unset, inherit).

    The fields are those of SGLang's ``sgl.gen`` (``max_tokens`` is the native API's ``max_new_tokens``).

    Attributes:
        max_tokens: most tokens to generate (>= 0). min_tokens: fewest before a stop may end it.
        n: number of samples (>= 1); with n > 1 the variable holds the list of the n outputs.
        stop: stop string(s); the matched string is not part of the output. stop_token_ids: extra stop tokens.
        stop_regex: regular expression(s) (Python ``re`` syntax) that end the output where they match.
        temperature (>= 0; 0 = greedy), top_p (0, 1], top_k (-1 = all, else >= 1), min_p [0, 1],
        frequency_penalty / presence_penalty [-2, 2]: as in the OpenAI API. ignore_eos: keep going past EOS.
        return_logprob: put logprobs in the variable's meta info (SGLang's keys: ``output_token_logprobs``, ...);
        logprob_start_len: first prompt position with an input logprob (-1: none); top_logprobs_num: alternatives
        per position; return_text_in_logprobs: each logprob entry carries its token's text (default True).
        regex / json_schema / ebnf: at most one constraint. ``json_schema`` is a JSON-schema string or dict,
        or a Pydantic model class — then the variable becomes the parsed, validated model instance.
        tools / tool_choice / parallel_tool_calls: OpenAI tool calling (``tools``: OpenAI tool dicts, built by
        ``rg.gen(tools=[...])`` from functions / models / dicts, see ``radixgen.tools``); such a gen is a chat
        completion on every backend and cannot take a constraint.
    """

    max_tokens: int | None = None
    min_tokens: int | None = None
    n: int | None = None
    stop: str | tuple[str, ...] | None = None
    stop_token_ids: tuple[int, ...] | None = None
    stop_regex: str | tuple[str, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    regex: str | None = None
    json_schema: Any = None
    ebnf: str | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None

    def __post_init__(self) -> None:
        for name in ("stop", "stop_token_ids", "stop_regex", "tools"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check_int("max_tokens", 0)
        self._check_int("min_tokens", 0)
        self._check_int("n", 1)
        self._check_int("logprob_start_len", -1)
        self._check_int("top_logprobs_num", 0)
        if self.top_k is not None and (not _is_int(self.top_k) or (self.top_k < 1 and self.top_k != -1)):
            raise ValueError("top_k: must be -1 (all) or an integer >= 1")
        self._check_float("temperature", 0.0, None)
        self._check_float("min_p", 0.0, 1.0)
        self._check_float("frequency_penalty", -2.0, 2.0)
        self._check_float("presence_penalty", -2.0, 2.0)
        if self.top_p is not None:
            self._check_float("top_p", 0.0, 1.0)
            if self.top_p == 0:
                raise ValueError("top_p: must be in (0, 1]")
        if self.stop is not None and not (
            isinstance(self.stop, str) or all(isinstance(s, str) and s for s in self.stop)
        ):
            raise ValueError("stop: must be a string or a list of non-empty strings")
        if self.stop_token_ids is not None and not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids: must be a list of token ids (integers >= 0)")
        self._check_stop_regex()
        self._check_tools()
        for name in ("ignore_eos", "return_logprob", "return_text_in_logprobs", "parallel_tool_calls"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name}: must be a boolean")
        constraints = [n for n in ("regex", "json_schema", "ebnf") if getattr(self, n) is not None]
        if len(constraints) > 1:
            raise ValueError(f"{constraints[1]}: only one of regex, json_schema, ebnf may be given")
        for name in ("regex", "ebnf"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name}: must be a non-empty string")
        schema = self.json_schema
        if schema is not None and not (isinstance(schema, str | dict) or _is_model_class(schema)):
            raise ValueError("json_schema: must be a JSON-schema string, a dict, or a Pydantic model class")
        if isinstance(schema, str):
            try:
                json.loads(schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"json_schema: not valid JSON ({e})") from e

    def _check_tools(self) -> None:
        if self.tools is None:
            if self.tool_choice is not None or self.parallel_tool_calls is not None:
                raise ValueError("tool_choice: needs tools")
            return
        if not self.tools or not all(isinstance(t, dict) and t.get("type") == "function" for t in self.tools):
            raise ValueError("tools: must be a non-empty list of OpenAI tool dicts (rg.gen(tools=...) builds them)")
        given = [n for n in ("regex", "json_schema", "ebnf") if getattr(self, n) is not None]
        if given:
            raise ValueError(f"{given[0]}: cannot be combined with tools")

    def _check_stop_regex(self) -> None:
        patterns = (self.stop_regex,) if isinstance(self.stop_regex, str) else self.stop_regex
        for pattern in patterns or ():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError("stop_regex: must be a regular expression or a list of them (non-empty strings)")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"stop_regex: {pattern!r} is not a valid regular expression ({e})") from e

    def _check_int(self, name: str, low: int) -> None:
        value = getattr(self, name)
        if value is not None and (not _is_int(value) or value < low):
            raise ValueError(f"{name}: must be an integer >= {low}")

    def _check_float(self, name: str, low: float | None, high: float | None) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValueError(f"{name}: must be a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{name}: must be in [{low}, {high if high is not None else 'inf'}]")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> SamplingParams:
        """Build from keyword arguments (also SGLang's ``max_new_tokens`` for ``max_tokens``, as ``run`` takes it).

        Raises:
            TypeError: an unknown name (the message lists the known ones). ValueError: an invalid value, or both
                ``max_tokens`` and ``max_new_tokens``.
        """
        if "max_new_tokens" in kwargs:
            if "max_tokens" in kwargs:
                raise ValueError("max_new_tokens: give max_tokens or max_new_tokens, not both")
            kwargs = {("max_tokens" if k == "max_new_tokens" else k): v for k, v in kwargs.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown sampling parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)

    def merged_over(self, defaults: SamplingParams | None) -> SamplingParams:
        """These parameters with every unset field taken from ``defaults``.

        A constraint set here replaces the defaults' constraint (regex/json_schema/ebnf are one choice).
        """
        if defaults is None:
            return self
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        has_constraint = any(values[n] is not None for n in ("regex", "json_schema", "ebnf"))
        for f in fields(self):
            if values[f.name] is None and not (has_constraint and f.name in ("regex", "json_schema", "ebnf")):
                values[f.name] = getattr(defaults, f.name)
        return SamplingParams(**values)

    def with_updates(self, **changes: Any) -> SamplingParams:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    @property
    def schema_model(self) -> Any:
        """The Pydantic model class the output is parsed into, or None."""
        return self.json_schema if _is_model_class(self.json_schema) else None

    def json_schema_str(self) -> str | None:
        """The JSON schema as a string, or None.

        A string or dict is sent as written (JSON Schema semantics: objects take unlisted properties unless the
        schema closes them). A Pydantic model's ``model_json_schema()`` is sent with every object closed (the
        strict form OpenAI's SDK derives from a model), unless the model allows extra fields
        (``model_config["extra"] == "allow"``): the output is parsed into the model, so unlisted keys would only
        cost tokens.
        """
        schema = self.json_schema
        if schema is None:
            return None
        if isinstance(schema, str):
            return schema
        if isinstance(schema, dict):
            return json.dumps(schema)
        doc = schema.model_json_schema()
        if schema.model_config.get("extra") != "allow":
            from radixgen.grammar.schema_strict import strict_json_schema  # torch-free; loaded on first use

            doc = strict_json_schema(doc)
        return json.dumps(doc)

    def _set_fields(self, *names: str) -> dict[str, Any]:
        """The fields among ``names`` that are set (not None), in that order."""
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def samples(self) -> int:
        """How many samples a gen with these parameters produces (``n``; 1 when unset)."""
        return 1 if self.n is None else self.n

    def stop_list(self) -> list[str] | None:
        """``stop`` as a list (None when unset)."""
        return None if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def to_native(self) -> dict[str, Any]:
        """The ``sampling_params`` dict of the native ``/generate`` API (unset fields omitted).

        ``max_tokens`` defaults to ``DEFAULT_MAX_TOKENS``; the logprob options are request-level fields of that
        API (``native_request_fields``) and are not included here.
        """
        out: dict[str, Any] = {"max_new_tokens": DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens}
        if self.min_tokens is not None:
            out["min_new_tokens"] = self.min_tokens
        for name in ("stop", "stop_token_ids", "stop_regex"):
            value = getattr(self, name)
            if value is not None:
                out[name] = [value] if isinstance(value, str) else list(value)
        out |= self._set_fields(
            "n", "temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "ignore_eos",
            "regex", "ebnf",
        )
        schema = self.json_schema_str()
        if schema is not None:
            out["json_schema"] = schema
        return out

    def native_request_fields(self) -> dict[str, Any]:
        """The request-level logprob fields of a native ``/generate`` body: ``return_logprob``,
        ``top_logprobs_num``, ``return_text_in_logprobs`` (True unless set False) and ``logprob_start_len`` (if set).
        """
        out = {"return_logprob": bool(self.return_logprob), "top_logprobs_num": self.top_logprobs_num or 0,
               "return_text_in_logprobs": self.return_text_in_logprobs is not False}
        return out | self._set_fields("logprob_start_len")

    def to_openai(self) -> dict[str, Any]:
        """Keyword arguments for the OpenAI completions / chat APIs (unset fields omitted).

        ``regex``/``ebnf`` and the sampling fields OpenAI lacks (top_k, min_p, min_tokens, ignore_eos,
        stop_token_ids) go in ``extra_body``, which this project's server and vLLM/SGLang understand;
        ``json_schema`` becomes ``response_format``. ``stop_regex`` and the logprob options are left to the
        backend (the OpenAI backend refuses ``stop_regex``).
        """
        out: dict[str, Any] = {"max_tokens": DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens}
        if self.stop is not None:
            out["stop"] = self.stop_list()
        out |= self._set_fields("n", "temperature", "top_p", "frequency_penalty", "presence_penalty", "tool_choice",
                                "parallel_tool_calls")
        if self.tools is not None:
            out["tools"] = [dict(t) for t in self.tools]
        extra = self._set_fields("top_k", "min_p", "ignore_eos", "regex", "ebnf")
        if self.min_tokens is not None:
            extra["min_tokens"] = self.min_tokens
        if self.stop_token_ids is not None:
            extra["stop_token_ids"] = list(self.stop_token_ids)
        schema = self.json_schema_str()
        if schema is not None:
            spec: dict[str, Any] = {"name": "output", "schema": json.loads(schema)}
            if self.schema_model is not None:
                spec["strict"] = True  # a model's schema is sent closed (json_schema_str), as OpenAI's SDK does
            out["response_format"] = {"type": "json_schema", "json_schema": spec}
        if extra:
            out["extra_body"] = extra
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
