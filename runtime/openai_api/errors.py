"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` bodies and their conversions.

Validation problems become 400s whose ``param`` names the offending field in the OpenAI request's own terms
(``max_tokens``, not the native ``max_new_tokens``), so a client can tell which argument to fix.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from radixgen.runtime.http_errors import error_body, openai_error

__all__ = ["OpenAIError", "bad_request", "error_body", "from_validation_error", "from_value_error", "openai_error"]

# native (SamplingParams / Scheduler) field name -> the OpenAI request field that carries it
_NATIVE_TO_OPENAI = {
    "max_new_tokens": "max_tokens",
    "min_new_tokens": "min_tokens",
    "sampling_params": None,
    "top_logprobs_num": "logprobs",
}
_FIELD_PREFIX = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\[\]]*)\s*[:(]")


class OpenAIError(Exception):
    """An error to be sent to the client as an OpenAI error body.

    Args:
        status: HTTP status code.
        message: human-readable explanation.
        param: the request field at fault, if any.
        type_: OpenAI error type (``invalid_request_error``, ``not_found_error``, ``server_error`` ...).
        code: defaults to the HTTP status, as in every other error body of the server (``http_errors``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type_: str = "invalid_request_error",
        code: int | str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_
        self.code = status if code is None else code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    """A 400 ``invalid_request_error`` naming ``param``."""
    return OpenAIError(400, message, param=param)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    out = ""
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def from_validation_error(exc: ValidationError, rename: dict[str, str] | None = None) -> OpenAIError:
    """Turn a pydantic ValidationError into a 400 whose ``param`` is the first failing field's path."""
    errors = exc.errors(include_url=False)
    if not errors:
        return bad_request(str(exc))
    first = errors[0]
    param = _loc_to_param(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if param and rename:
        param = rename.get(param, param)
    text = f"{param}: {msg}" if param and not msg.startswith(f"{param}:") else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more error(s))"
    return bad_request(text, param)


def from_value_error(exc: ValueError, renames: dict[str, str] | None = None) -> OpenAIError:
    """Turn a runtime ValueError (``"field: problem"``) into a 400 in the OpenAI request's field names.

    Args:
        exc: the error raised by SamplingParams, the scheduler's validation or the tokenizer manager.
        renames: extra native → OpenAI names for this endpoint (e.g. ``{"input_ids": "messages"}``).
    """
    table: dict[str, str | None] = {**_NATIVE_TO_OPENAI, **(renames or {})}
    msg = str(exc)
    for native, ours in table.items():
        if ours:
            msg = re.sub(rf"\b{re.escape(native)}\b", ours, msg)
    param: str | None = None
    m = _FIELD_PREFIX.match(msg)
    if m:
        param = m.group(1)
    return bad_request(msg, param)
