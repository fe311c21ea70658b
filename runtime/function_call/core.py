"""The types every tool-call format shares: an offered function, a (partial) call found in text, a detector.

A detector knows one model family's call syntax (SGLang's ``BaseFormatDetector``): :meth:`ToolCallDetector.scan`
splits a text — finished or still streaming — into plain-text pieces and calls, and :meth:`call_tag` /
:attr:`list_wrap` describe the same syntax as an xgrammar structural-tag format, so that the grammar that enforces
calls (``constraint.py``) and the parser that reads them can never disagree. Standard library only.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

#: OpenAI's rule for function names (also what keeps them safe to splice into grammar literals)
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class FunctionTool:
    """One offered function (an OpenAI ``{"type": "function", "function": {...}}`` tool).

    Attributes:
        name: matches ``FUNCTION_NAME``.
        parameters: the JSON schema of the arguments object (as given; ``{}`` when the tool has none).
        description: shown to the model by the chat template.
        strict: OpenAI's ``strict`` flag (calls are enforced whatever its value; kept for the template).
    """

    name: str
    parameters: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


@dataclass
class PartialCall:
    """A call found in text, possibly still being written.

    Attributes:
        name: the function name, None until it is complete in the text.
        arguments: the arguments as JSON text so far; while the call grows this only ever gets longer, and once
            ``complete`` it is the whole JSON object (what the response's ``function.arguments`` carries).
        complete: the call's text is finished (its closing marker, if the format has one, may still be pending).
        start: offset in the scanned text where the call's region starts (its trigger).
    """

    name: str | None
    arguments: str
    complete: bool
    start: int


#: what ``scan`` returns: plain text pieces and calls, in text order
Segment = str | PartialCall


@dataclass(frozen=True)
class ToolCall:
    """A parsed call of a finished output: ``index`` among the output's calls, ``name``, ``arguments`` (JSON)."""

    index: int
    name: str
    arguments: str


class ToolCallDetector(ABC):
    """One tool-call output format.

    Attributes:
        name: the ``--tool-call-parser`` value.
        trigger: the text that starts a call (or a list of calls) in free text; the grammar of ``tool_choice:
            "auto"`` constrains everything from it to the end of the call.
        separator: text between two calls of a list (``tool_choice`` required / named, parallel calls).
        list_wrap: ``(begin, end)`` around the whole list of calls for formats that write one (Mistral's
            ``[TOOL_CALLS] [...]``, pythonic ``[...]``); None when each call stands alone.
    """

    name: str
    trigger: str
    separator: str = "\n"
    list_wrap: tuple[str, str] | None = None

    @abstractmethod
    def scan(self, text: str, names: frozenset[str]) -> list[Segment]:
        """Split ``text`` into plain text and calls of functions in ``names``.

        Works on a prefix of an output: a call the text ends inside is a PartialCall with ``complete=False`` (its
        name None until the name is complete), and a trailing piece that may still grow into a trigger is
        returned as such an incomplete call too, so that a stream holds it back. A call region that is not valid
        (bad JSON, unknown function) is plain text.
        """

    @abstractmethod
    def call_tag(self, tool: FunctionTool, schema: dict[str, Any]) -> dict[str, Any]:
        """The xgrammar structural-tag ``tag`` format of one call of ``tool`` whose arguments match ``schema``."""

    def tag_triggers(self) -> list[str]:
        """Triggers of the structural tag's ``triggered_tags`` (each call tag's ``begin`` starts with one)."""
        return [self.trigger]


def trigger_tail(text: str, trigger: str) -> int:
    """Start of the longest suffix of ``text`` that is a proper prefix of ``trigger`` (``len(text)`` if none)."""
    for k in range(min(len(trigger) - 1, len(text)), 0, -1):
        if text.endswith(trigger[:k]):
            return len(text) - k
    return len(text)
