"""Reasoning / content separation (SGLang's ``ReasoningParser``), shared by the DSL and the server.

A reasoning model writes its thinking between a start and an end marker (``<think>`` ... ``</think>``) before the
answer. ``split_reasoning`` returns ``(reasoning, content)`` of a finished text (``rg.separate_reasoning``, and the
server's ``--reasoning-parser`` responses); ``ReasoningStream`` splits a text that is still growing (the server's
streamed ``reasoning_content`` / ``content`` deltas) so that the deltas add up to ``split_reasoning`` of the
finished text. The formats are those of SGLang's detectors for the marker-style models. With ``force_reasoning``
(DeepSeek-R1, whose template already opened the block) text without a start marker is still reasoning until the
end marker. A leaf module (standard library only): the runtime imports it like ``radixgen.chat_templates``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReasoningFormat:
    """The markers of one model family, and whether the output starts inside the reasoning block."""

    start: str
    end: str
    force_reasoning: bool = False


REASONING_FORMATS: dict[str, ReasoningFormat] = {
    "deepseek-r1": ReasoningFormat("<think>", "</think>", force_reasoning=True),
    "step3": ReasoningFormat("<think>", "</think>", force_reasoning=True),
    "qwen3": ReasoningFormat("<think>", "</think>"),
    "qwen3-thinking": ReasoningFormat("<think>", "</think>", force_reasoning=True),
    "glm45": ReasoningFormat("<think>", "</think>"),
    "kimi": ReasoningFormat("\u25c1think\u25b7", "\u25c1/think\u25b7"),
}


def reasoning_format(model_type: str | None) -> ReasoningFormat:
    """The format of ``model_type``.

    Raises:
        ValueError: no model type, or one not in ``REASONING_FORMATS`` (the message lists them).
    """
    if model_type is None:
        raise ValueError(f"model_type: required; one of {sorted(REASONING_FORMATS)}")
    if model_type not in REASONING_FORMATS:
        raise ValueError(f"model_type: unsupported reasoning format {model_type!r}; one of {sorted(REASONING_FORMATS)}")
    return REASONING_FORMATS[model_type]


def split_reasoning(text: str, fmt: ReasoningFormat) -> tuple[str, str]:
    """``(reasoning, content)`` of a finished output.

    No start marker (and not ``force_reasoning``): all content. Otherwise the start marker is dropped and the text
    stripped; without an end marker it is all reasoning (cut off while thinking); else the reasoning is what comes
    before the end marker and the content what follows it (stripped).
    """
    if not fmt.force_reasoning and fmt.start not in text:
        return "", text
    body = text.replace(fmt.start, "").strip()
    if fmt.end not in body:
        return body, ""
    reasoning, content = body.split(fmt.end, 1)
    return reasoning, content.strip()


def separate_outputs(
    text: str, spans: dict[str, tuple[int, int]], values: dict[str, Any], fmt: ReasoningFormat
) -> tuple[int, str, dict[str, tuple[str, str]]]:
    """Split the outputs ``values`` (text) lying at ``spans`` of ``text``: ``(start, tail, parts)`` where ``tail``
    replaces ``text[start:]`` (from the first output on) with each output reduced to its content, and ``parts``
    maps each name to its ``(reasoning, content)``.

    Raises:
        ValueError: a value that is not text (a typed or n > 1 gen).
    """
    start = min(begin for begin, _ in spans.values())
    tail, parts = text[start:], {}
    for name, (begin, end) in sorted(spans.items(), key=lambda kv: -kv[1][0]):  # last first: offsets stay valid
        if not isinstance(values[name], str):
            raise ValueError(f"separate_reasoning: variable {name!r} is not text ({type(values[name]).__name__})")
        parts[name] = split_reasoning(values[name], fmt)
        tail = tail[: begin - start] + parts[name][1] + tail[end - start :]
    return start, tail, parts


def _marker_tail(text: str, marker: str) -> int:
    """Start of the longest suffix of ``text`` that is a proper prefix of ``marker`` (``len(text)`` if none)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return len(text)


def split_reasoning_partial(text: str, fmt: ReasoningFormat) -> tuple[str, str, bool]:
    """``(reasoning, content, done)`` of an unfinished text: what can be shown of each so far.

    Text that may still turn into a marker (``"<thi"``) and whitespace that ``split_reasoning`` may strip later are
    held back, so each part only ever grows and ends as a prefix of ``split_reasoning`` of the finished text.
    ``done``: the reasoning block has ended (or the output has none).
    """
    if not fmt.force_reasoning and fmt.start not in text:
        lead = text.lstrip()
        if fmt.start.startswith(lead):  # may still open a reasoning block
            return "", "", False
        return "", text, True
    body = text.replace(fmt.start, "").lstrip()
    if fmt.end in body:
        reasoning, content = body.split(fmt.end, 1)
        return reasoning, content.strip(), True
    held = min(_marker_tail(body, fmt.end), _marker_tail(body, fmt.start))  # either marker may be arriving
    return body[:held].rstrip(), "", False


@dataclass
class ReasoningStream:
    """Streaming split of one output: ``update(text, final)`` takes the cumulative text and returns
    ``(reasoning_delta, content)`` — the new reasoning text and the whole content so far (the content goes on to
    the tool-call parser, which takes cumulative text). At ``final`` the parts are exactly ``split_reasoning``."""

    fmt: ReasoningFormat
    sent: int = 0

    def update(self, text: str, final: bool) -> tuple[str, str]:
        if final:
            reasoning, content = split_reasoning(text, self.fmt)
        else:
            reasoning, content, _ = split_reasoning_partial(text, self.fmt)
        delta = reasoning[self.sent :] if len(reasoning) > self.sent else ""
        self.sent = max(self.sent, len(reasoning))
        return delta, content
