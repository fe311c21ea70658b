"""Scanning JSON values in text that may still be growing (a model's output, mid-stream).

The tool-call detectors need the *raw text span* of a call's arguments (so that streamed argument fragments are
append-only and concatenate to exactly the final arguments) and must tell three cases apart at any point of a
stream: the value is complete, the text ends inside it (wait for more), or it is not JSON (a malformed call).
``scan_value`` and ``scan_object`` do that in one left-to-right pass with an explicit stack (no recursion, so no
input can exhaust the interpreter's stack). Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_WS = " \t\n\r"
_LITERALS = ("true", "false", "null")
_NUMBER_CHARS = frozenset("0123456789+-.eE")


class Malformed(ValueError):
    """The text is not (a prefix of) a JSON value of the expected shape."""


def skip_ws(text: str, pos: int) -> int:
    """The first index at or after ``pos`` that is not JSON whitespace (``len(text)`` if none)."""
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def scan_value(text: str, pos: int) -> int | None:
    """End index (exclusive) of the JSON value starting at ``text[pos]``; None when the text ends inside it.

    A number or literal that reaches the end of the text counts as incomplete (more digits may follow).

    Raises:
        Malformed: the text at ``pos`` cannot be the start of a JSON value, or breaks JSON syntax before its end
            (checked structurally: brackets, strings, literals, number characters; a completed value is re-checked
            with ``json.loads`` by the callers that need its value).
    """
    pos = skip_ws(text, pos)
    if pos >= len(text):
        return None
    stack: list[str] = []
    i = pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            if end is None:
                return None
            i = end
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
            i += 1
        elif c in "}]":
            if not stack or stack.pop() != c:
                raise Malformed(f"unbalanced {c!r} at offset {i}")
            i += 1
        elif c in _WS or (stack and c in ",:"):
            i += 1
        elif c == "-" or c.isdigit():
            j = i
            while j < n and text[j] in _NUMBER_CHARS:
                j += 1
            if j == n:
                return None
            i = j
        elif c in "tfn":
            word = next((w for w in _LITERALS if text.startswith(w[: n - i], i) and w[0] == c), None)
            if word is None:
                raise Malformed(f"unexpected {c!r} at offset {i}")
            if i + len(word) > n:
                return None
            i += len(word)
        else:
            raise Malformed(f"unexpected {c!r} at offset {i}")
        if not stack:
            return i
    return None


def _string_end(text: str, pos: int) -> int | None:
    """End index (exclusive) of the JSON string opening at ``text[pos]`` (a ``"``); None if unterminated."""
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return None


@dataclass
class ObjectScan:
    """What ``scan_object`` found.

    Attributes:
        members: key → ``(start, end)`` of its raw value in the text; ``end`` is None for a value the text ends
            inside (only the last member can be so).
        end: the index after the closing ``}``, or None when the object is not closed yet.
    """

    members: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    end: int | None = None

    def value(self, text: str, key: str) -> Any:
        """The decoded value of a complete member, or None when absent or incomplete.

        Raises:
            Malformed: the member's text is not valid JSON.
        """
        span = self.members.get(key)
        if span is None or span[1] is None:
            return None
        try:
            return json.loads(text[span[0] : span[1]])
        except (ValueError, RecursionError) as e:
            raise Malformed(f"member {key!r}: {e}") from None


def scan_object(text: str, pos: int) -> ObjectScan:
    """Scan the JSON object starting at ``text[pos]`` (which must be ``{``) member by member.

    Raises:
        Malformed: ``text[pos]`` is not ``{``, or the object breaks JSON syntax (a key that is not a string, a
            missing ``:`` or ``,``).
    """
    if pos >= len(text) or text[pos] != "{":
        raise Malformed("expected '{'")
    out = ObjectScan()
    i = skip_ws(text, pos + 1)
    if i < len(text) and text[i] == "}":
        out.end = i + 1
        return out
    while i < len(text):
        if text[i] != '"':
            raise Malformed(f"expected a member name at offset {i}")
        key_end = _string_end(text, i)
        if key_end is None:
            return out
        key = json.loads(text[i:key_end])
        i = skip_ws(text, key_end)
        if i >= len(text):
            return out
        if text[i] != ":":
            raise Malformed(f"expected ':' after member {key!r}")
        i = skip_ws(text, i + 1)
        if i >= len(text):
            out.members[key] = (i, None)
            return out
        end = scan_value(text, i)
        out.members[key] = (i, end)
        if end is None:
            return out
        i = skip_ws(text, end)
        if i >= len(text):
            return out
        if text[i] == "}":
            out.end = i + 1
            return out
        if text[i] != ",":
            raise Malformed(f"expected ',' or '}}' after member {key!r}")
        i = skip_ws(text, i + 1)
    return out
