"""Reading tool calls out of a model's output: finished (``parse``) and streaming (``ToolCallStream``).

Both work from one ``ToolCallDetector.scan`` of the text, so a stream assembles exactly the calls and content that
parsing the finished text gives. Streaming follows OpenAI's delta format: a call's first delta carries its
``index``, ``id``, ``type`` and ``function.name`` (with empty ``arguments``); later deltas carry ``index`` and the
next ``function.arguments`` fragment. Each update re-scans the cumulative text (outputs are short; the scan is
linear), so nothing depends on where the detokenizer happened to cut the chunks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from radixgen.runtime.function_call.core import PartialCall, Segment, ToolCall, ToolCallDetector
from radixgen.runtime.function_call.json_detectors import HermesDetector, Llama3Detector, MistralDetector
from radixgen.runtime.function_call.pythonic import PythonicDetector

#: ``--tool-call-parser`` values (SGLang's names) → detector class
DETECTORS: dict[str, type[ToolCallDetector]] = {
    "qwen25": HermesDetector,
    "qwen3": HermesDetector,
    "hermes": HermesDetector,
    "llama3": Llama3Detector,
    "mistral": MistralDetector,
    "pythonic": PythonicDetector,
}


def get_detector(name: str) -> ToolCallDetector:
    """The detector of a ``--tool-call-parser`` value.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    cls = DETECTORS.get(name)
    if cls is None:
        raise ValueError(f"tool_call_parser: unknown parser {name!r}; one of {', '.join(DETECTORS)}")
    return cls()


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` + 24 hex digits, OpenAI's shape)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _finished(segments: list[Segment], text: str) -> tuple[str, list[PartialCall]]:
    """Content and complete calls of a finished text: an unfinished call (cut off) is text again."""
    content: list[str] = []
    calls: list[PartialCall] = []
    for seg in segments:
        if isinstance(seg, str):
            content.append(seg)
        elif seg.complete:
            calls.append(seg)
        else:
            content.append(text[seg.start :])
            break
    return "".join(content), calls


def parse(detector: ToolCallDetector, text: str, names: frozenset[str]) -> tuple[str | None, list[ToolCall]]:
    """``(content, calls)`` of a finished output.

    ``content`` is the text outside the calls (stripped, and None when empty, if there are calls; the text itself
    otherwise). Malformed call regions and calls of functions not in ``names`` stay in the content.
    """
    content, calls = _finished(detector.scan(text, names), text)
    if not calls:
        return text, []
    out = [ToolCall(i, c.name or "", c.arguments) for i, c in enumerate(calls)]
    return content.strip() or None, out


@dataclass
class ToolCallStream:
    """The streaming state of one choice.

    ``update(text, final)`` takes the cumulative output text and returns ``(content_delta, tool_call_deltas)``:
    the new content (trailing whitespace is held back until more content follows, and dropped at the end when the
    output has calls — as ``parse`` strips it) and the OpenAI ``delta.tool_calls`` entries to send.

    A stream cannot take back what it sent: a call whose arguments turn out not to be JSON after they started (only
    possible without the tool grammar, or when cut off by ``max_tokens``) stays announced with the fragments sent,
    and the text of its region is sent as content, so nothing of the output is lost.
    """

    detector: ToolCallDetector
    names: frozenset[str]
    sent_content: int = 0
    ids: list[str] = field(default_factory=list)
    sent_args: list[int] = field(default_factory=list)

    @property
    def has_calls(self) -> bool:
        return bool(self.ids)

    def update(self, text: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        segments = self.detector.scan(text, self.names)
        if final:  # an unfinished call is text again, unless it was announced already
            parts: list[str] = []
            calls: list[PartialCall] = []
            for seg in segments:
                if isinstance(seg, str):
                    parts.append(seg)
                elif seg.complete or len(calls) < len(self.ids):
                    calls.append(seg)
                else:
                    parts.append(text[seg.start :])
                    break
            content = "".join(parts)
        else:
            content = "".join(s for s in segments if isinstance(s, str))
            calls = [s for s in segments if isinstance(s, PartialCall)]
        deltas: list[dict[str, Any]] = []
        for k, call in enumerate(calls):
            if call.name is None or not (call.arguments or call.complete):
                break  # announced once its arguments have started (so non-object arguments never are)
            if k == len(self.ids):
                self.ids.append(new_call_id())
                self.sent_args.append(0)
                fn = {"name": call.name, "arguments": ""}
                deltas.append({"index": k, "id": self.ids[k], "type": "function", "function": fn})
            if len(call.arguments) > self.sent_args[k]:
                frag = call.arguments[self.sent_args[k] :]
                self.sent_args[k] = len(call.arguments)
                deltas.append({"index": k, "function": {"arguments": frag}})
        if self.ids:
            content = content.strip() if final else content.lstrip()
        visible = content if final and not self.ids else content.rstrip()
        delta = visible[self.sent_content :] if len(visible) > self.sent_content else ""
        self.sent_content = max(self.sent_content, len(visible))
        return delta, deltas
