"""OpenAI-style error bodies for every HTTP route (native and /v1).

Body: ``{"error": {"message": str, "type": str, "param": str | None, "code": int}}`` with ``code`` the HTTP
status. Exceptions map to statuses as: ValueError → 400 (``param`` = the field the message starts with),
ServerUnavailableError → 503, RequestFailedError → its status, TimeoutError → 504, anything else → 500.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixgen.runtime.tokenizer_manager import RequestFailedError, ServerUnavailableError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
# a ValueError message starts with the field it is about: "max_new_tokens: ...", "min_new_tokens (3) must ..."
_PARAM_RE = re.compile(r"^([A-Za-z_][\w./\[\]]*)(?::| \(| must\b)")


def openai_error(
    status: int, message: str, param: str | None = None, type_: str = "invalid_request_error"
) -> JSONResponse:
    """A JSONResponse with the OpenAI error body.

    Args:
        status: HTTP status (also sent as ``code``).
        message: human-readable message; for invalid input it names the field.
        param: the offending request field, if any.
        type_: OpenAI error type, e.g. ``invalid_request_error``, ``authentication_error``.
    """
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def error_param(message: str) -> str | None:
    """The field named at the start of a validation message (``"top_p: must be ..."`` → ``"top_p"``)."""
    m = _PARAM_RE.match(message)
    return m.group(1) if m else None


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for an exception (see the module docstring), e.g. for an SSE error event."""
    if isinstance(exc, ValueError):
        status, message, param = 400, str(exc), error_param(str(exc))
    elif isinstance(exc, ServerUnavailableError):
        status, message, param = 503, str(exc), None
    elif isinstance(exc, RequestFailedError):
        status, message, param = exc.status, str(exc), None
    elif isinstance(exc, TimeoutError):
        status, message, param = 504, "timed out waiting for the scheduler", None
    else:
        status, message, param = 500, f"internal server error: {type(exc).__name__}: {exc}", None
    return status, {"error": {"message": message, "type": _TYPES.get(status, "error"), "param": param, "code": status}}


def error_response(exc: BaseException) -> JSONResponse:
    """The error JSONResponse for an exception (500s are logged with their traceback)."""
    status, body = error_body(exc)
    if status == 500:
        logger.error("internal error", exc_info=exc)
    return JSONResponse(body, status_code=status)


async def read_json(request: Request) -> Any:
    """The decoded JSON body.

    Raises:
        ValueError: an empty or malformed body (message starts with ``body:``).
    """
    raw = await request.body()
    if not raw.strip():
        raise ValueError("body: a JSON body is required")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"body: malformed JSON: {e}") from None


def install_error_handlers(app: FastAPI) -> None:
    """Make FastAPI's own errors OpenAI-shaped: request validation (pydantic) → 400 naming the field, HTTP
    errors (404 unknown route, 405 wrong method, ...) → their status, uncaught exceptions → 500."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        return openai_error(400, f"{param}: {msg}" if param else msg, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return openai_error(exc.status_code, str(exc.detail), None, _TYPES.get(exc.status_code, "error"))

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)
