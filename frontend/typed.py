"""Typed outputs: turn a gen's text into the Python value its ``dtype`` or Pydantic ``json_schema`` promises."""

from __future__ import annotations

import json
from typing import Any

from radixgen.backends.base import GenOutput
from radixgen.ir import Gen
from radixgen.tools import parse_tool_calls


class TypedOutputError(ValueError):
    """A constrained gen's text did not parse as its type (almost always: cut off by ``max_tokens``)."""


def parse_typed(gen: Gen, text: str, finish_reason: Any) -> Any:
    """The value of variable ``gen.name``: the parsed ``dtype`` value, the validated Pydantic instance, or ``text``.

    Raises:
        TypedOutputError: the text does not parse / validate; the message names the variable and says whether
            the generation was cut by the token limit.
    """
    model = gen.params.schema_model
    if gen.dtype is None and model is None:
        return text
    try:
        if gen.dtype is bool:
            if text not in ("True", "False"):
                raise ValueError(f"{text!r} is not True/False")
            return text == "True"
        if gen.dtype is str:
            value = json.loads(text)
            if not isinstance(value, str):
                raise ValueError(f"{text!r} is not a quoted string")
            return value
        if gen.dtype is not None:
            return gen.dtype(text)
        return model.model_validate_json(text)
    except Exception as e:  # ValueError, json.JSONDecodeError, pydantic.ValidationError
        reason = finish_reason.get("type") if isinstance(finish_reason, dict) else finish_reason
        hint = " (generation stopped at max_tokens: raise max_tokens)" if reason == "length" else ""
        target = gen.dtype.__name__ if gen.dtype is not None else model.__name__
        raise TypedOutputError(f"{gen.name or 'gen'}: output does not parse as {target}{hint}: {e}") from e


def _value(gen: Gen, out: GenOutput) -> Any:
    if gen.tools:
        try:
            return parse_tool_calls(gen.tools, out.meta.get("tool_calls") or [], out.meta.get("content"))
        except ValueError as e:
            raise TypedOutputError(f"{gen.name or 'gen'}: {e}") from e
    return parse_typed(gen, out.text, out.meta.get("finish_reason"))


def gen_value(gen: Gen, out: GenOutput) -> Any:
    """The value of variable ``gen.name`` for the output ``out``: ``parse_typed`` of its text (or the typed tool
    calls of a gen with tools), or for an ``n`` > 1 gen the list of every sample's (SGLang stores the list).
    Raises TypedOutputError like ``parse_typed``."""
    if out.samples:
        return [_value(gen, s) for s in out.samples]
    return _value(gen, out)
