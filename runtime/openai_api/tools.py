"""Tool calling and reasoning on /v1/chat/completions: validating the request, and the grammar that enforces it.

``plan_tools`` checks ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` (every problem a 400 naming the field,
e.g. ``tools[1].function.parameters``); ``template_messages`` checks the history (assistant ``tool_calls``, ``tool``
messages answering them) and gives the messages as Hugging Face chat templates take them (arguments as objects);
``constrain`` turns the plan into the request's grammar: a structural tag built by
``radixgen.runtime.function_call.constraint``, after the reasoning block when ``--reasoning-parser`` is set (which
also moves a ``response_format`` constraint after the reasoning; SGLang's extra ``regex`` / ``ebnf`` /
``json_schema`` fields keep constraining the whole output, reasoning included, so a client can shape both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from radixgen.reasoning import REASONING_FORMATS, ReasoningFormat
from radixgen.runtime.function_call import FunctionTool, ToolCallDetector, get_detector
from radixgen.runtime.function_call.constraint import (
    after_reasoning,
    constraint_format,
    limit_whitespace,
    tool_format,
)
from radixgen.runtime.function_call.core import FUNCTION_NAME
from radixgen.runtime.function_call.pythonic import PythonicDetector, unsupported_keyword
from radixgen.runtime.http_common import HttpError, bad_request
from radixgen.runtime.openai_api.protocol import ChatCompletionRequest
from radixgen.runtime.sampling_params import SamplingParams

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class GrammarConfig:
    """What the HTTP side needs to build grammars: the server's backend name, grammar limits and parsers."""

    backend: str = "xgrammar"
    max_spec_bytes: int = 256 * 1024
    max_nesting_depth: int = 128
    any_whitespace: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None

    @property
    def reasoning(self) -> ReasoningFormat | None:
        return REASONING_FORMATS[self.reasoning_parser] if self.reasoning_parser else None

    @property
    def max_whitespace(self) -> int:
        """Whitespace run allowed inside JSON values of structural tags (1 unless ``grammar_any_whitespace``, then
        the xgrammar backend's own bound)."""
        return 4 if self.any_whitespace else 1

    def prepare(self, schema: Any) -> dict[str, Any]:
        """The normalised schema (``constraint.prepare_schema``); raises GrammarError."""
        from radixgen.runtime.function_call.constraint import prepare_schema

        return prepare_schema(schema, self.backend, self.max_spec_bytes, self.max_nesting_depth)


@dataclass(frozen=True)
class ToolPlan:
    """A request's validated tools.

    Attributes:
        tools: each offered function with its normalised arguments schema.
        choice: ``none`` | ``auto`` | ``required`` | ``named`` (then ``named`` is the function).
        parallel: ``parallel_tool_calls``.
        detector: the server's tool-call format (None without ``--tool-call-parser``).
        template_tools: what the chat template's ``tools`` argument gets (None: no tools are shown).
    """

    tools: list[tuple[FunctionTool, dict[str, Any]]] = field(default_factory=list)
    choice: str = "none"
    named: str | None = None
    parallel: bool = True
    detector: ToolCallDetector | None = None
    template_tools: list[dict[str, Any]] | None = None

    @property
    def active(self) -> bool:
        """Calls are parsed from the output (and enforced by the grammar)."""
        return self.choice != "none" and self.detector is not None

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t, _ in self.tools)


def _tool(i: int, item: Any, gc: GrammarConfig, pythonic: bool) -> tuple[FunctionTool, dict[str, Any]]:
    where = f"tools[{i}]"
    if not isinstance(item, dict) or item.get("type") != "function":
        raise bad_request(f'{where}.type: must be "function"', f"{where}.type")
    fn = item.get("function")
    if not isinstance(fn, dict):
        raise bad_request(f"{where}.function: must be an object", f"{where}.function")
    name = fn.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise bad_request(f"{where}.function.name: must match [A-Za-z0-9_-]{{1,64}}, got {name!r}",
                          f"{where}.function.name")
    desc = fn.get("description")
    if desc is not None and not isinstance(desc, str):
        raise bad_request(f"{where}.function.description: must be a string", f"{where}.function.description")
    strict = fn.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad_request(f"{where}.function.strict: must be a boolean", f"{where}.function.strict")
    params = fn.get("parameters", _EMPTY_PARAMETERS)
    field_name = f"{where}.function.parameters"
    if not isinstance(params, dict):
        raise bad_request(f"{field_name}: tool {name!r}: must be a JSON-schema object", field_name)
    kind = params.get("type", "object")
    if kind != "object":
        raise bad_request(f"{field_name}: tool {name!r}: arguments are a JSON object, so 'type' must be 'object', "
                          f"got {kind!r}", field_name)
    try:
        schema = gc.prepare({"type": "object", **params})  # arguments are always an object
    except ValueError as e:  # GrammarError: invalid schema, or a keyword the backend does not enforce
        msg = str(e).removeprefix("json_schema: ")
        raise bad_request(f"{field_name}: tool {name!r}: {msg}", field_name) from None
    if pythonic:
        bad = unsupported_keyword(schema)
        if bad is not None:
            raise bad_request(
                f"{field_name}: tool {name!r}: keyword {bad!r} cannot be enforced in the pythonic tool-call format",
                field_name,
            )
    return FunctionTool(name, params, desc, strict), schema


def plan_tools(req: ChatCompletionRequest, gc: GrammarConfig) -> ToolPlan:
    """Validate the request's tool fields.

    Raises:
        HttpError: 400 naming the field: a malformed tool or schema, a schema keyword the grammar cannot enforce,
            an unknown ``tool_choice`` (or a named function not in ``tools``), ``tool_choice`` without tools, tools
            on a server without ``--tool-call-parser``, tools combined with another grammar constraint.
    """
    if req.functions:
        raise bad_request("functions: deprecated by OpenAI and not supported; use tools", "functions")
    if req.function_call is not None and req.function_call != "none":
        raise bad_request("function_call: deprecated by OpenAI and not supported; use tool_choice", "function_call")
    detector = get_detector(gc.tool_call_parser) if gc.tool_call_parser else None
    pythonic = isinstance(detector, PythonicDetector)
    tools = [_tool(i, t, gc, pythonic) for i, t in enumerate(req.tools or [])]
    seen: set[str] = set()
    for i, (t, _) in enumerate(tools):
        if t.name in seen:
            raise bad_request(f"tools[{i}].function.name: duplicate function {t.name!r}", f"tools[{i}].function.name")
        seen.add(t.name)
    tc = req.tool_choice
    named = None
    if tc is None:
        choice = "auto" if tools else "none"
    elif tc in ("none", "auto", "required"):
        choice = tc
    elif isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("function"), dict):
        choice, named = "named", tc["function"].get("name")
        if not isinstance(named, str) or named not in seen:
            raise bad_request(f"tool_choice: function {named!r} is not one of the tools", "tool_choice")
    else:
        raise bad_request(
            'tool_choice: must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if choice != "none" and not tools:
        raise bad_request(f"tool_choice: {tc!r} needs tools", "tool_choice")
    if choice == "none":
        return ToolPlan(tools=tools, parallel=req.parallel_tool_calls)
    if detector is None:
        raise bad_request("tools: this server was started without --tool-call-parser, so it cannot read tool calls",
                          "tools")
    if gc.backend != "xgrammar":
        raise bad_request("tools: enforced tool calls need --grammar-backend xgrammar (structural tags)", "tools")
    for name in ("response_format", "regex", "ebnf", "json_schema"):
        value = getattr(req, name)
        if value is not None and not (name == "response_format" and value.type == "text"):
            raise bad_request(f"{name}: cannot be combined with tools (unless tool_choice is 'none')", name)
    return ToolPlan(tools, choice, named, req.parallel_tool_calls, detector, list(req.tools or []))


def template_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as chat templates take them: assistant ``tool_calls[*].function.arguments`` decoded to objects
    (Hugging Face templates write them with ``tojson``); ``content`` "" when absent.

    Raises:
        HttpError: 400 naming ``messages[i]...``: a malformed assistant tool call, or a ``tool`` message whose
            ``tool_call_id`` answers no earlier call.
    """
    out: list[dict[str, Any]] = []
    ids: set[str] = set()
    for i, m in enumerate(req.messages):
        d = m.model_dump(exclude_none=True)
        d.setdefault("content", "")
        if m.tool_calls is not None:
            if m.role != "assistant":
                raise bad_request(f"messages[{i}].tool_calls: only assistant messages carry tool calls",
                                  f"messages[{i}].tool_calls")
            d["tool_calls"] = [_history_call(i, j, c, ids) for j, c in enumerate(m.tool_calls)]
        if m.role == "tool":
            if m.tool_call_id is None or m.tool_call_id not in ids:
                raise bad_request(
                    f"messages[{i}].tool_call_id: {m.tool_call_id!r} answers no tool call of an earlier assistant "
                    "message", f"messages[{i}].tool_call_id")
        out.append(d)
    return out


def _history_call(i: int, j: int, call: Any, ids: set[str]) -> dict[str, Any]:
    where = f"messages[{i}].tool_calls[{j}]"
    if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not isinstance(call.get("function"), dict):
        raise bad_request(f"{where}: must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}", where)
    fn = dict(call["function"])
    if not isinstance(fn.get("name"), str):
        raise bad_request(f"{where}.function.name: must be a string", f"{where}.function.name")
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            raise bad_request(f"{where}.function.arguments: not valid JSON", f"{where}.function.arguments") from None
    if not isinstance(args, dict):
        raise bad_request(f"{where}.function.arguments: must be a JSON object", f"{where}.function.arguments")
    fn["arguments"] = args
    ids.add(call["id"])
    return {**call, "type": "function", "function": fn}


def reasoning_of(req: ChatCompletionRequest, gc: GrammarConfig) -> ReasoningFormat | None:
    """The reasoning format the request's output is split by: the server's ``--reasoning-parser``, unless the
    request turns it off (``separate_reasoning: false``) or disables thinking in the template
    (``chat_template_kwargs: {"enable_thinking": false}``, Qwen3's switch: the template writes an empty block)."""
    if not req.separate_reasoning or (req.chat_template_kwargs or {}).get("enable_thinking") is False:
        return None
    return gc.reasoning


def constrain(params: SamplingParams, plan: ToolPlan, req: ChatCompletionRequest, gc: GrammarConfig) -> SamplingParams:
    """The request's sampling parameters with its grammar: the tool-call structural tag when tools are active,
    else its ``response_format`` constraint moved after the reasoning block when a reasoning parser splits the
    output.

    Raises:
        HttpError: 400 for a ``response_format`` schema the grammar layer refuses (when it is moved after the
            reasoning), or a tool schema the format cannot express.
    """
    fmt = reasoning_of(req, gc)
    if plan.active:
        assert plan.detector is not None
        tools = [(t, s) for t, s in plan.tools if plan.choice != "named" or t.name == plan.named]
        try:
            body = tool_format(plan.detector, tools, plan.choice != "auto", plan.parallel)
        except ValueError as e:
            raise bad_request(f"tools: {e}", "tools") from None
        body = limit_whitespace(body, gc.max_whitespace)
        return params.replace(structural_tag=json.dumps(after_reasoning(fmt, body, plan.choice == "auto")))
    constraint = params.constraint
    rf = req.response_format
    if fmt is None or constraint is None or rf is None or rf.type == "text":
        return params  # the SGLang extras regex / ebnf / json_schema constrain the whole output, reasoning included
    kind, spec = constraint
    try:
        body = constraint_format(kind, gc.prepare(spec) if kind == "json_schema" else spec)
    except ValueError as e:
        msg = str(e).removeprefix("json_schema: ")
        raise HttpError(400, f"response_format: {msg}", "response_format") from None
    body = limit_whitespace(body, gc.max_whitespace)
    return params.replace(json_schema=None, json_object=False, regex=None, ebnf=None,
                          structural_tag=json.dumps(after_reasoning(fmt, body, False)))
