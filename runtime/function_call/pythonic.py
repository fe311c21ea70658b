"""The pythonic tool-call format: a Python list of calls with keyword arguments, ``[f(a=1, b="x"), g()]``
(Llama 3.2 / 4 and other models; SGLang's ``PythonicDetector``), optionally inside ``<|python_start|>`` ...
``<|python_end|>``.

Calls are recognised when the whole list is written (``ast`` parses it; argument values must be literals: numbers,
strings, lists, dicts, ``True``/``False``/``None``, and JSON's ``true``/``false``/``null``), so a stream sends each
call's name and arguments together once its list is closed. The grammar writes each argument value as JSON (which
these rules read back exactly), keyword arguments in the schema's property order: every required property, and
any optional one.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from radixgen.runtime.function_call.core import FunctionTool, PartialCall, Segment, ToolCallDetector
from radixgen.runtime.function_call.json_scan import Malformed

_START = re.compile(r"\[\s*[A-Za-z_][\w.]*\s*\(")
_MAYBE_START = re.compile(r"\[\s*(?:[A-Za-z_][\w.]*\s*)?")  # what a start looks like before the text ends
_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
#: keywords of an arguments schema the pythonic grammar can express (it writes the declared properties only)
_OBJECT_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "title", "description", "$defs", "definitions",
     "$schema", "$id", "$comment", "examples", "default"}
)


class PythonicDetector(ToolCallDetector):
    """``[f(a=1), g(b="x")]``: see the module docstring."""

    name = "pythonic"
    trigger = "["
    separator = ", "
    list_wrap = ("[", "]")
    wrappers = ("<|python_start|>", "<|python_end|>")

    def scan(self, text: str, names: frozenset[str]) -> list[Segment]:
        out: list[Segment] = []
        pos = 0
        while True:
            i = text.find("[", pos)
            if i < 0:
                out.append(text[pos:])
                return out
            if not _START.match(text, i):
                m = _MAYBE_START.match(text, i)
                if m is not None and m.end() == len(text):  # may still become a call list
                    out.append(text[pos:i])
                    out.append(PartialCall(None, "", False, i))
                    return out
                out.append(text[pos : i + 1])
                pos = i + 1
                continue
            out.append(text[pos:i])
            end = _list_end(text, i)
            if end is None:
                out.append(PartialCall(None, "", False, i))
                return out
            try:
                calls = _parse_calls(text[i:end], names)
            except Malformed:
                out.append(text[i:end])
                pos = end
                continue
            for call in calls:
                call.start = i
            out.extend(calls)
            pos = end

    def call_tag(self, tool: FunctionTool, schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "tag", "begin": f"{tool.name}(", "content": kwargs_format(schema), "end": ")"}


def _list_end(text: str, i: int) -> int | None:
    """Index after the ``]`` closing the list at ``text[i]`` (brackets inside Python strings ignored)."""
    depth = 0
    quote = ""
    j = i
    while j < len(text):
        c = text[j]
        if quote:
            if c == "\\":
                j += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[({":
            depth += 1
        elif c in "])}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


def _parse_calls(source: str, names: frozenset[str]) -> list[PartialCall]:
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError) as e:
        raise Malformed(f"not a Python list: {e}") from None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        raise Malformed("not a list of calls")
    calls = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            raise Malformed("each item must be a call with keyword arguments only")
        if node.func.id not in names:
            raise Malformed(f"unknown function {node.func.id!r}")
        args = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise Malformed("**kwargs are not allowed")
            args[kw.arg] = _literal(kw.value)
        calls.append(PartialCall(node.func.id, json.dumps(args, ensure_ascii=False), True, 0))
    return calls


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool | type(None)):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _literal(node.operand)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values, strict=True):
            key = _literal(k) if k is not None else None
            if not isinstance(key, str):
                raise Malformed("dict keys must be strings")
            out[key] = _literal(v)
        return out
    raise Malformed(f"argument values must be literals, got {type(node).__name__}")


def unsupported_keyword(schema: dict[str, Any]) -> str | None:
    """The first top-level keyword of an arguments schema the pythonic grammar cannot express, else None."""
    for k in schema:
        if k not in _OBJECT_KEYWORDS:
            return k
    if schema.get("type", "object") != "object":
        return "type"
    return None


def kwargs_format(schema: dict[str, Any]) -> dict[str, Any]:
    """The structural-tag format of ``k1=v1, k2=v2`` for an object schema: each value a JSON value of the
    property's schema (``$defs`` carried along), properties in declared order, required ones always, optional ones
    possibly. Size is quadratic in the number of properties (no exponential blow-up over optional subsets).

    Raises:
        ValueError: the schema uses a keyword this format cannot express (``unsupported_keyword``).
    """
    bad = unsupported_keyword(schema)
    if bad is not None:
        raise ValueError(f"keyword {bad!r} cannot be enforced in the pythonic format")
    defs = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    required = set(schema.get("required", []))
    props = list((schema.get("properties") or {}).items())
    missing = required - {k for k, _ in props}
    if missing:
        raise ValueError(f"required properties without a schema in 'properties': {sorted(missing)}")

    def kv(key: str, sub: Any, comma: bool) -> dict[str, Any]:
        sub_schema = {**sub, **defs} if isinstance(sub, dict) and defs else sub
        value = {"type": "json_schema", "json_schema": sub_schema}
        prefix = {"type": "const_string", "value": f"{', ' if comma else ''}{key}="}
        return {"type": "sequence", "elements": [prefix, value]}

    def after_first(k: int) -> list[dict[str, Any]]:  # properties k.. once one was written (each needs ", ")
        items = []
        for key, sub in props[k:]:
            item = kv(key, sub, True)
            items.append(item if key in required else {"type": "optional", "content": item})
        return items

    def seq(elements: list[dict[str, Any]]) -> dict[str, Any]:
        if not elements:
            return {"type": "const_string", "value": ""}
        return elements[0] if len(elements) == 1 else {"type": "sequence", "elements": elements}

    def from_start(k: int) -> dict[str, Any]:  # properties k.., nothing written yet
        if k == len(props):
            return seq([])
        key, sub = props[k]
        first = seq([kv(key, sub, False), *after_first(k + 1)])
        if key in required:
            return first
        return {"type": "or", "elements": [first, from_start(k + 1)]}

    return from_start(0)
