"""Tools for ``rg.gen(name, tools=[...])``: describing Python functions, Pydantic models and schema dicts as OpenAI
tools, and turning the server's ``tool_calls`` back into typed ``ToolCall`` values.

A gen with tools is one OpenAI chat-completions call (``/v1/chat/completions`` on either backend): the server renders
the tools with the model's chat template, enforces the calls with its grammar (``tool_choice`` ``required`` / a
named function: always a valid call) and parses them (``--tool-call-parser``). The variable holds a ``ToolCalls``
list: each call's ``arguments`` validated into the tool's Pydantic model, or a dict for a function / schema tool
(``call()`` runs a function tool). ``ToolCalls.content`` is the text the model wrote outside calls.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ToolSpec:
    """One offered tool: its OpenAI definition and what parses / runs its calls.

    Attributes:
        tool: ``{"type": "function", "function": {"name", "description", "parameters"}}``.
        model: a Pydantic model class the arguments validate into (a model tool), or None.
        func: the Python function a call runs (a function tool), or None.
    """

    tool: dict[str, Any]
    model: Any = None
    func: Callable[..., Any] | None = None

    @property
    def name(self) -> str:
        return str(self.tool["function"]["name"])


def _docstring_summary(obj: Any) -> str | None:
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    return doc.split("\n\n", 1)[0].strip() or None


def _without_titles(schema: Any) -> Any:
    """A Pydantic JSON schema without its generated ``title`` annotations (noise in a prompt; they constrain
    nothing). Property *names* called "title" are kept: only schema nodes are touched."""
    if isinstance(schema, list):
        return [_without_titles(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {name: _without_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _without_titles(value) if isinstance(value, dict | list) else value
    return out


def _function_spec(func: Callable[..., Any]) -> ToolSpec:
    """A Python function as a tool: parameters from its signature (types from annotations, required = no default)
    through a Pydantic model of them; description from the docstring's first paragraph."""
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for p in inspect.signature(func, eval_str=True).parameters.values():  # postponed annotations resolved
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(f"tools: {func.__name__}: *args / **kwargs cannot be described as tool parameters")
        annotation = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        fields[p.name] = (annotation, ... if p.default is inspect.Parameter.empty else p.default)
    model = create_model(f"{func.__name__}_arguments", **fields)
    schema = _without_titles(model.model_json_schema())
    fn: dict[str, Any] = {"name": func.__name__, "parameters": schema}
    desc = _docstring_summary(func)
    if desc:
        fn["description"] = desc
    return ToolSpec({"type": "function", "function": fn}, model=model, func=func)


def tool_spec(obj: Any) -> ToolSpec:
    """Describe ``obj`` as a tool: a Python function (signature + docstring), a Pydantic model class (its name, JSON
    schema and docstring), or a dict — an OpenAI tool ``{"type": "function", "function": {...}}`` or a bare
    ``{"name", "description", "parameters"}``.

    Raises:
        ValueError: an object that is none of these, a name OpenAI would refuse, or a malformed dict.
    """
    from radixgen.sampling import _is_model_class

    if _is_model_class(obj):
        schema = _without_titles(obj.model_json_schema())
        schema.pop("description", None)  # the docstring: it becomes the function's description
        fn: dict[str, Any] = {"name": obj.__name__, "parameters": schema}
        desc = _docstring_summary(obj) if obj.__doc__ else None  # not BaseModel's own docstring
        if desc:
            fn["description"] = desc
        spec = ToolSpec({"type": "function", "function": fn}, model=obj)
    elif isinstance(obj, dict):
        given = obj.get("function") if obj.get("type") == "function" else obj
        if not isinstance(given, dict) or not isinstance(given.get("name"), str):
            raise ValueError("tools: a dict tool needs a 'name' (or type 'function' and a 'function' with one)")
        parameters = given.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ValueError(f"tools: {given['name']}: 'parameters' must be a JSON-schema object")
        spec = ToolSpec({"type": "function", "function": {**given, "parameters": parameters}})
    elif inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        spec = _function_spec(obj)
    else:
        raise ValueError(f"tools: {type(obj).__name__} is not a function, a Pydantic model class or a schema dict")
    if not _NAME.fullmatch(spec.name):
        raise ValueError(f"tools: name {spec.name!r} must match [A-Za-z0-9_-]{{1,64}}")
    return spec


def tool_specs(tools: Sequence[Any]) -> tuple[ToolSpec, ...]:
    """``tool_spec`` of each, checking names are unique. Raises ValueError."""
    if isinstance(tools, str | bytes | dict) or not isinstance(tools, Sequence) or not tools:
        raise ValueError("tools: must be a non-empty list of functions, Pydantic models or schema dicts")
    specs = tuple(tool_spec(t) for t in tools)
    names = [s.name for s in specs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"tools: two tools are named {dup!r}")
    return specs


def openai_tool_choice(choice: Any, specs: tuple[ToolSpec, ...]) -> Any:
    """``tool_choice`` in OpenAI's form: ``auto`` / ``none`` / ``required`` as is; a tool's name (or the function /
    model itself) becomes ``{"type": "function", "function": {"name": ...}}``. Raises ValueError for an unknown one."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        return choice
    name = choice if isinstance(choice, str) else getattr(choice, "__name__", None)
    if name not in {s.name for s in specs}:
        raise ValueError(f"tool_choice: {choice!r} is not 'auto', 'none', 'required' or one of the tools")
    return {"type": "function", "function": {"name": name}}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made.

    Attributes:
        id: the call id (``call_...``). name: the tool. arguments: the validated Pydantic instance (model and
        function tools) or the decoded dict (schema tools). raw: the arguments' JSON text.
    """

    id: str
    name: str
    arguments: Any
    raw: str
    spec: ToolSpec | None = field(default=None, repr=False, compare=False)

    def call(self) -> Any:
        """Run a function tool with the arguments. Raises TypeError for a tool that is not a Python function."""
        if self.spec is None or self.spec.func is None:
            raise TypeError(f"{self.name}: not a Python function tool")
        args = self.arguments.model_dump() if hasattr(self.arguments, "model_dump") else dict(self.arguments)
        return self.spec.func(**args)


class ToolCalls(list[ToolCall]):
    """The value of a gen with tools: the calls in order (empty when the model answered in text), and ``content``
    (the text outside the calls, None when there is none)."""

    def __init__(self, calls: Sequence[ToolCall] = (), content: str | None = None) -> None:
        super().__init__(calls)
        self.content = content

    def __repr__(self) -> str:
        return f"ToolCalls({list.__repr__(self)}, content={self.content!r})"


def parse_tool_calls(specs: tuple[ToolSpec, ...], calls: list[dict[str, Any]], content: str | None) -> ToolCalls:
    """Typed calls from the ``{"id", "name", "arguments"}`` dicts a backend collected.

    Raises:
        ValueError: a call of an unknown tool, or arguments that do not validate (the message names the call).
    """
    by_name = {s.name: s for s in specs}
    out = []
    for c in calls:
        spec = by_name.get(c["name"])
        if spec is None:
            raise ValueError(f"tool call {c['id']}: unknown tool {c['name']!r}")
        try:
            args = spec.model.model_validate_json(c["arguments"]) if spec.model else json.loads(c["arguments"])
        except Exception as e:  # json.JSONDecodeError, pydantic.ValidationError
            raise ValueError(f"tool call {c['id']} ({c['name']}): arguments do not validate: {e}") from e
        out.append(ToolCall(c["id"], c["name"], args, c["arguments"], spec))
    return ToolCalls(out, content)


def calls_text(content: str | None, calls: list[dict[str, Any]]) -> str:
    """What a tool gen adds to the program's text: the content, then one ``{"name", "arguments"}`` JSON line per call
    (the record the following turns see; the server's call syntax is the model's business)."""
    lines = [content] if content else []
    for c in calls:
        record = {"name": c["name"], "arguments": json.loads(c["arguments"])}
        lines.append(json.dumps(record, separators=(",", ":")))
    return "\n".join(lines)
