"""Tool-call formats whose calls are JSON objects ``{"name": ..., "arguments" | "parameters": {...}}``.

- ``hermes`` / ``qwen25`` (Hermes 2 Pro, Qwen 2.5 and Qwen 3): ``<tool_call>\\n{"name": "f", "arguments": {...}}
  \\n</tool_call>``, one block per call (SGLang's ``Qwen25Detector``).
- ``llama3`` (Llama 3.1-3.3 JSON tool calling): ``{"name": "f", "parameters": {...}}``, optionally after
  ``<|python_tag|>``; parallel calls separated by ``;`` (SGLang's ``Llama32Detector``).
- ``mistral`` (Mistral v0.3 and later instruct models): ``[TOOL_CALLS] [{"name": "f", "arguments": {...}}, ...]``
  (SGLang's ``MistralDetector``; the newer ``[TOOL_CALLS]f[ARGS]{...}`` form is not recognised).

Either argument key is accepted by every format; a call whose arguments are a JSON *string* holding an object (some
fine-tunes write that) is decoded. The grammar side writes each format's canonical spelling.
"""

from __future__ import annotations

import json
from typing import Any

from radixgen.runtime.function_call.core import FunctionTool, PartialCall, Segment, ToolCallDetector, trigger_tail
from radixgen.runtime.function_call.json_scan import Malformed, ObjectScan, scan_object, skip_ws

_ARG_KEYS = ("arguments", "parameters")


def call_from_object(text: str, pos: int, names: frozenset[str]) -> tuple[PartialCall, int | None]:
    """The call written as a JSON object at ``text[pos]`` and the index after it (None: the text ends inside).

    Raises:
        Malformed: not a call object (bad JSON, no or non-string name, a function not in ``names``, arguments
            that are not an object).
    """
    if pos >= len(text):
        return PartialCall(None, "", False, pos), None
    obj: ObjectScan = scan_object(text, pos)
    name = obj.value(text, "name")
    if name is not None and (not isinstance(name, str) or name not in names):
        raise Malformed(f"unknown function {name!r}")
    key = next((k for k in _ARG_KEYS if k in obj.members), None)
    arguments = ""
    if key is not None:
        start, end = obj.members[key]
        raw = text[start : len(text) if end is None else end]
        if raw.startswith('"'):  # arguments as a JSON string: usable only once complete
            arguments = _decode_string_arguments(raw) if end is not None else ""
        elif raw and not raw.startswith("{"):
            raise Malformed("arguments must be a JSON object")
        else:
            arguments = raw
            if end is not None:
                obj.value(text, key)  # raises Malformed when it is not valid JSON
    if obj.end is None:
        return PartialCall(name, arguments, False, pos), None
    if name is None:
        raise Malformed("a call needs a string 'name'")
    return PartialCall(name, arguments or "{}", True, pos), obj.end


def _decode_string_arguments(raw: str) -> str:
    try:
        inner = json.loads(json.loads(raw))
    except (ValueError, TypeError, RecursionError) as e:
        raise Malformed(f"string arguments are not a JSON object: {e}") from None
    if not isinstance(inner, dict):
        raise Malformed("arguments must be a JSON object")
    return json.dumps(inner, ensure_ascii=False)


class JsonCallDetector(ToolCallDetector):
    """Formats where calls stand alone in the text, each ``[open] object [close]``.

    Attributes:
        open: text before each call's object (``<tool_call>``; empty for llama3, whose object is the trigger).
        close: text after it (``</tool_call>``), or "" when none.
        args_key: the argument key the grammar writes.
        call_prefix: what the grammar writes between ``open`` and the object.
        call_suffix: what the grammar writes between the object and ``close``.
    """

    open = ""
    close = ""
    args_key = "arguments"
    call_prefix = ""
    call_suffix = ""

    def _markers(self) -> tuple[str, ...]:
        """The texts a call region may start with (the trigger, and format-specific alternatives)."""
        return (self.trigger,)

    def _find(self, text: str, pos: int) -> int:
        """Start of the next call region at or after ``pos``: a marker, or a trailing piece that may become one
        (-1 when there is neither)."""
        found = [i for i in (text.find(m, pos) for m in self._markers()) if i >= 0]
        if found:
            return min(found)
        tail = min(trigger_tail(text, m) for m in self._markers())
        return tail if pos <= tail < len(text) else -1

    def scan(self, text: str, names: frozenset[str]) -> list[Segment]:
        out: list[Segment] = []
        pos = 0
        while True:
            i = self._find(text, pos)
            if i < 0:
                out.append(text[pos:])
                return out
            out.append(text[pos:i])
            if not self._is_start(text, i):  # the text ends with the start of a trigger
                out.append(PartialCall(None, "", False, i))
                return out
            try:
                calls, nxt = self._region(text, i, names)
            except Malformed:
                end = self._malformed_end(text, i)
                out.append(text[i:end])
                pos = end
                continue
            out.extend(calls)
            if nxt is None:
                return out
            pos = nxt

    def _is_start(self, text: str, i: int) -> bool:
        return any(text.startswith(m, i) for m in self._markers())

    def _region(self, text: str, i: int, names: frozenset[str]) -> tuple[list[PartialCall], int | None]:
        """The calls of the region starting at trigger ``text[i]`` and the index after it (None: unfinished).

        Raises:
            Malformed: the region is not a valid call.
        """
        j = skip_ws(text, i + len(self.open))
        call, end = call_from_object(text, j, names)
        call.start = i
        if end is None or not self.close:
            return [call], end
        k = skip_ws(text, end)
        if text.startswith(self.close, k):
            return [call], k + len(self.close)
        if self.close.startswith(text[k:]):  # the closing marker is still coming
            return [PartialCall(call.name, call.arguments, True, i)], None
        return [call], end  # no closing marker: the call counts, what follows is text

    def _malformed_end(self, text: str, i: int) -> int:
        """Where the text of a malformed call region ends: after its closing marker, else after the trigger."""
        if self.close:
            k = text.find(self.close, i)
            if k >= 0:
                return k + len(self.close)
        return i + len(self.trigger)

    def call_tag(self, tool: FunctionTool, schema: dict[str, Any]) -> dict[str, Any]:
        begin = f'{self.open}{self.call_prefix}{{"name": "{tool.name}", "{self.args_key}": '
        return {
            "type": "tag",
            "begin": begin,
            "content": {"type": "json_schema", "json_schema": schema},
            "end": "}" + self.call_suffix + self.close,
        }


class HermesDetector(JsonCallDetector):
    """``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`` (Hermes 2 Pro, Qwen 2.5 / 3)."""

    name = "hermes"
    trigger = "<tool_call>"
    open = "<tool_call>"
    close = "</tool_call>"
    call_prefix = "\n"
    call_suffix = "\n"
    separator = "\n"


class Llama3Detector(JsonCallDetector):
    """``{"name": "f", "parameters": {...}}`` (Llama 3.1-3.3), optionally after ``<|python_tag|>``; ``;`` between
    parallel calls."""

    name = "llama3"
    trigger = '{"name"'
    args_key = "parameters"
    separator = "; "
    python_tag = "<|python_tag|>"

    def _markers(self) -> tuple[str, ...]:
        return (self.trigger, self.python_tag)

    def _region(self, text: str, i: int, names: frozenset[str]) -> tuple[list[PartialCall], int | None]:
        j = i
        if text.startswith(self.python_tag, i):
            j = skip_ws(text, i + len(self.python_tag))
            if j < len(text) and not text.startswith(self.trigger[: len(text) - j], j):
                raise Malformed("<|python_tag|> not followed by a JSON call")
        call, end = call_from_object(text, j, names)
        call.start = i
        if end is None:
            return [call], None
        k = skip_ws(text, end)
        if k < len(text) and text[k] == ";":
            return [call], skip_ws(text, k + 1)
        return [call], end

    def _malformed_end(self, text: str, i: int) -> int:
        if text.startswith(self.python_tag, i):
            return i + len(self.python_tag)
        return i + len(self.trigger)


class MistralDetector(JsonCallDetector):
    """``[TOOL_CALLS] [{"name": "f", "arguments": {...}}, ...]`` (Mistral v0.3+ instruct models)."""

    name = "mistral"
    trigger = "[TOOL_CALLS]"
    separator = ", "
    list_wrap = ("[TOOL_CALLS] [", "]")

    def _region(self, text: str, i: int, names: frozenset[str]) -> tuple[list[PartialCall], int | None]:
        return self._list(text, i, names)

    def _list(self, text: str, i: int, names: frozenset[str]) -> tuple[list[PartialCall], int | None]:
        j = skip_ws(text, i + len(self.trigger))
        if j >= len(text):
            return [PartialCall(None, "", False, i)], None
        if text[j] != "[":
            raise Malformed("[TOOL_CALLS] not followed by a list")
        calls: list[PartialCall] = []
        j = skip_ws(text, j + 1)
        while True:
            if j >= len(text):
                return calls or [PartialCall(None, "", False, i)], None
            if text[j] == "]" and calls:
                return calls, j + 1
            call, end = call_from_object(text, j, names)
            call.start = i if not calls else j
            calls.append(call)
            if end is None:
                return calls, None
            j = skip_ws(text, end)
            if j < len(text) and text[j] == ",":
                j = skip_ws(text, j + 1)
            elif j < len(text) and text[j] != "]":
                raise Malformed("expected ',' or ']' between calls")

    def call_tag(self, tool: FunctionTool, schema: dict[str, Any]) -> dict[str, Any]:
        return {**super().call_tag(tool, schema), "begin": f'{{"name": "{tool.name}", "arguments": '}
