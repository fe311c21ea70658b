"""The grammar that enforces tool calls (and any constraint after a reasoning block), as an xgrammar structural tag.

The scheduler compiles it like any constraint (``SamplingParams.structural_tag``, kind ``structural_tag`` of
``radixgen.grammar``). Shapes, per ``tool_choice`` (the call syntax comes from the detector, so grammar and parser
agree; xgrammar's ``get_model_structural_tag`` builds the same shapes for its model families):

- ``auto``: ``triggered_tags``: free text; from the format's trigger on, the text must continue as a complete call
  of an offered function whose arguments match its schema (``stop_after_first`` unless ``parallel_tool_calls``).
- ``required`` / a named function: ``tags_with_separator`` (or the format's list ``tag``): one or more calls and
  nothing else (exactly one when ``parallel_tool_calls`` is false; only the named function when one is named).
- after reasoning: ``sequence[reasoning tag, whitespace, constraint]`` where the reasoning tag is ``<think>`` any
  text ``</think>`` (optional for Qwen3; opened by the template for DeepSeek-R1), so the constraint starts where
  the reasoning ends.

Argument schemas are checked and normalised by the grammar layer's own validation (``prepare_schema``: meta-schema,
normalisation, and the keywords the backend cannot enforce, which are refused), before anything is queued.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from radixgen.reasoning import ReasoningFormat
from radixgen.runtime.function_call.core import FunctionTool, ToolCallDetector

_WHITESPACE = {"type": "regex", "pattern": "[ \\t\\r\\n]{0,4}"}  # bounded: a model may pad forever


def prepare_schema(schema: Any, backend: str, max_spec_bytes: int, max_nesting_depth: int) -> dict[str, Any]:
    """Validate a JSON schema with the grammar layer (``GrammarManager.validate``, exactly what the scheduler runs on
    a ``json_schema`` constraint) and return its normalised form.

    Args:
        backend: the server's grammar backend name.
        max_spec_bytes / max_nesting_depth: the server's grammar limits.

    Raises:
        radixgen.grammar.GrammarError: invalid, too large, or using a keyword the backend does not enforce (the
            message names the keyword and where it is).
    """
    spec = schema if isinstance(schema, str) else json.dumps(schema)
    prepared = _validator(backend, max_spec_bytes, max_nesting_depth).validate("json_schema", spec)
    out = json.loads(prepared.spec)
    return out if isinstance(out, dict) else {}


@functools.cache
def _validator(backend: str, max_spec_bytes: int, max_nesting_depth: int) -> Any:
    """A GrammarManager used for validation only (it never compiles, so it never builds a tokenizer backend)."""
    from radixgen.grammar import GrammarLimits, GrammarManager

    def no_backend() -> Any:
        raise RuntimeError("the HTTP process validates schemas only")

    return GrammarManager(backend, no_backend, GrammarLimits(max_spec_bytes, max_nesting_depth))


def tool_format(
    detector: ToolCallDetector,
    tools: list[tuple[FunctionTool, dict[str, Any]]],
    required: bool,
    parallel: bool,
) -> dict[str, Any]:
    """The structural-tag format of calls to ``tools`` (each with its normalised arguments schema).

    Args:
        required: at least one call and nothing else (``required`` / a named function); else ``auto``.
        parallel: allow several calls (``parallel_tool_calls``).

    Raises:
        ValueError: ``tools`` is empty, or an arguments schema the format cannot express (pythonic).
    """
    if not tools:
        raise ValueError("tools: no function to call")
    tags = [detector.call_tag(tool, schema) for tool, schema in tools]
    if detector.list_wrap is not None:
        begin, end = detector.list_wrap
        calls = {"type": "tags_with_separator", "tags": tags, "separator": detector.separator,
                 "at_least_one": True, "stop_after_first": not parallel}
        whole = {"type": "tag", "begin": begin, "content": calls, "end": end}
        if required:
            return whole
        return {"type": "triggered_tags", "triggers": [detector.trigger], "tags": [whole]}
    if required:
        return {"type": "tags_with_separator", "tags": tags, "separator": detector.separator,
                "at_least_one": True, "stop_after_first": not parallel}
    return {"type": "triggered_tags", "triggers": detector.tag_triggers(), "tags": tags,
            "stop_after_first": not parallel}


def constraint_format(kind: str, spec: Any) -> dict[str, Any]:
    """A plain constraint (``json_schema`` normalised, ``json_object``, ``regex``, ``ebnf``) as a format."""
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": spec}
    if kind == "json_object":
        return {"type": "json_schema", "json_schema": {"type": "object"}}
    if kind == "regex":
        return {"type": "regex", "pattern": spec}
    if kind == "ebnf":
        return {"type": "grammar", "grammar": spec}
    raise ValueError(f"{kind}: cannot be applied after the reasoning block")


def limit_whitespace(node: Any, max_whitespace: int) -> Any:
    """``node`` (a structural-tag format tree) with every JSON value allowing at most ``max_whitespace`` whitespace
    characters in a row (xgrammar's ``max_whitespace_cnt``; it must be >= 1), so a model cannot pad forever."""
    if isinstance(node, list):
        return [limit_whitespace(x, max_whitespace) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: (v if k == "json_schema" else limit_whitespace(v, max_whitespace)) for k, v in node.items()}
    if node.get("type") == "json_schema":
        out["max_whitespace_cnt"] = max_whitespace
    return out


def after_reasoning(fmt: ReasoningFormat | None, body: dict[str, Any], free_text: bool) -> dict[str, Any]:
    """The structural tag of ``body`` preceded by the reasoning block of ``fmt`` (none when ``fmt`` is None).

    Args:
        free_text: ``body`` allows free text (``auto`` tool calls), so no separate whitespace is needed.
    """
    if fmt is None:
        return {"type": "structural_tag", "format": body}
    think = {"type": "tag", "begin": "" if fmt.force_reasoning else fmt.start, "content": {"type": "any_text"},
             "end": fmt.end}
    prefix = think if fmt.force_reasoning else {"type": "optional", "content": think}
    elements = [prefix, body] if free_text else [prefix, _WHITESPACE, body]
    return {"type": "structural_tag", "format": {"type": "sequence", "elements": elements}}
