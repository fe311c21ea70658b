"""Tool calling: per-format detectors that read calls out of model output, and the grammar that enforces them.

Modules:
    core: FunctionTool, PartialCall, ToolCall and the ToolCallDetector interface.
    json_scan: scanning (possibly unfinished) JSON for raw value spans.
    json_detectors: ``hermes``/``qwen25``, ``llama3``, ``mistral``; pythonic: ``pythonic``.
    parser: ``--tool-call-parser`` names (SGLang's), finished-output ``parse`` and the streaming ``ToolCallStream``.
    constraint: the structural tag enforcing ``tool_choice`` (and constraints after a reasoning block).

Standard library only, except ``constraint.prepare_schema`` (which imports the grammar layer when called).
"""

from __future__ import annotations

from radixgen.runtime.function_call.core import FunctionTool, PartialCall, ToolCall, ToolCallDetector
from radixgen.runtime.function_call.parser import DETECTORS, ToolCallStream, get_detector, new_call_id, parse

__all__ = [
    "DETECTORS",
    "FunctionTool",
    "PartialCall",
    "ToolCall",
    "ToolCallDetector",
    "ToolCallStream",
    "get_detector",
    "new_call_id",
    "parse",
]
