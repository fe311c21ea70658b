"""Reasoning / content separation for ``rg.separate_reasoning`` (SGLang's ``ReasoningParser.parse_non_stream``).

A reasoning model writes its thinking between a start and an end marker (``<think>`` ... ``</think>``) before the
answer. ``split_reasoning`` returns ``(reasoning, content)``; the formats are those of SGLang's detectors for the
marker-style models. With ``force_reasoning`` (DeepSeek-R1, whose template already opened the block) text without
a start marker is still reasoning until the end marker.
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
