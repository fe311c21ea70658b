"""One chat choice's output as OpenAI returns it: ``reasoning_content``, ``content`` and ``tool_calls``.

The output text is split in two stages, the same way for a finished response and for a stream: the reasoning block
(``radixgen.reasoning``, when ``--reasoning-parser`` is set and the request keeps ``separate_reasoning``), then the
tool calls in what follows it (``radixgen.runtime.function_call``, when the request's tools are active). A choice
whose output has calls ends with ``finish_reason: "tool_calls"`` (a cut-off one keeps ``length``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radixgen.reasoning import ReasoningFormat, ReasoningStream, split_reasoning
from radixgen.runtime.function_call import ToolCallStream, new_call_id, parse
from radixgen.runtime.openai_api.protocol import ChatResponseMessage, FunctionCallOut, ToolCallOut
from radixgen.runtime.openai_api.tools import ToolPlan


def _reason(reason: str | None, has_calls: bool) -> str | None:
    return "tool_calls" if has_calls and reason == "stop" else reason


def final_message(
    text: str, reason: str | None, fmt: ReasoningFormat | None, plan: ToolPlan
) -> tuple[ChatResponseMessage, str | None]:
    """The message of a finished choice and its finish reason (``tool_calls`` when it called a tool)."""
    reasoning = None
    content: str | None = text
    if fmt is not None:
        r, content = split_reasoning(text, fmt)
        reasoning = r or None
    calls = []
    if plan.active and plan.detector is not None and content:
        content, parsed = parse(plan.detector, content, plan.names)
        calls = [ToolCallOut(id=new_call_id(), function=FunctionCallOut(name=c.name, arguments=c.arguments))
                 for c in parsed]
    msg = ChatResponseMessage(content=content, reasoning_content=reasoning, tool_calls=calls or None)
    return msg, _reason(reason, bool(calls))


@dataclass
class ChoiceStream:
    """The streaming state of one choice: ``deltas(text, reason)`` takes the cumulative output text (and the
    finish reason once there is one) and returns the ``delta`` objects to send, then the finish reason to send."""

    fmt: ReasoningFormat | None
    plan: ToolPlan
    stream_reasoning: bool = True
    sent_content: int = 0
    reasoning: ReasoningStream | None = field(init=False, default=None)
    tools: ToolCallStream | None = field(init=False, default=None)
    held_reasoning: str = ""

    def __post_init__(self) -> None:
        if self.fmt is not None:
            self.reasoning = ReasoningStream(self.fmt)
        if self.plan.active and self.plan.detector is not None:
            self.tools = ToolCallStream(self.plan.detector, self.plan.names)

    def deltas(self, text: str, reason: str | None) -> tuple[list[dict[str, Any]], str | None]:
        final = reason is not None
        out: list[dict[str, Any]] = []
        content = text
        if self.reasoning is not None:
            r, content = self.reasoning.update(text, final)
            if self.stream_reasoning and r:
                out.append({"reasoning_content": r})
            elif r:
                self.held_reasoning += r
            if final and self.held_reasoning:
                out.append({"reasoning_content": self.held_reasoning})
                self.held_reasoning = ""
        if self.tools is not None:
            c, calls = self.tools.update(content, final)
            if c:
                out.append({"content": c})
            out.extend({"tool_calls": [d]} for d in calls)
            return out, _reason(reason, self.tools.has_calls)
        if len(content) > self.sent_content:
            out.append({"content": content[self.sent_content :]})
            self.sent_content = len(content)
        return out, reason
