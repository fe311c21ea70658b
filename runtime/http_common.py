"""HTTP plumbing shared by every route, native and /v1: error bodies, JSON bodies, SSE, client disconnects.

Error body (OpenAI's shape, on every route): ``{"error": {"message", "type", "param", "code"}}`` with ``code`` the
HTTP status. Exceptions map to statuses as: ``HttpError`` → its own; ``InvalidRequestError`` → its status (400, or
404 for an unknown adapter) with ``param`` taken from the error (renamed into the route's own field names, e.g.
``max_new_tokens`` → ``max_tokens`` on /v1);
another ValueError → 400; ServerUnavailableError → 503; RequestFailedError → its status; TimeoutError → 504;
anything else → 500 (logged with its traceback).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixgen.runtime.errors import InvalidRequestError, RequestFailedError, ServerUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    415: "invalid_request_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}

# native field → the field of an OpenAI request that carries it (each /v1 route adds its own, e.g. the prompt)
NATIVE_TO_OPENAI: dict[str, str] = {
    "max_new_tokens": "max_tokens",
    "min_new_tokens": "min_tokens",
    "top_logprobs_num": "logprobs",
}


class HttpError(Exception):
    """An error to send as the error body.

    Args:
        status: HTTP status code.
        message: human-readable explanation (for invalid input it names the field).
        param: the request field at fault, if any.
        type_: error type (``invalid_request_error``, ``not_found_error``, ``server_error`` ...); by default the
            one of ``status``.
        headers: extra response headers (e.g. ``Retry-After`` with a 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or _TYPES.get(status, "error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> HttpError:
    """A 400 ``invalid_request_error`` naming ``param``."""
    return HttpError(400, message, param)


def openai_error(status: int, message: str, param: str | None = None, type_: str | None = None) -> JSONResponse:
    """The error JSONResponse (see ``HttpError``)."""
    return HttpError(status, message, param, type_).response()


def _rename(text: str, renames: Mapping[str, str]) -> str:
    for native, ours in renames.items():
        text = re.sub(rf"\b{re.escape(native)}\b", ours, text)
    return text


def http_error(exc: BaseException, renames: Mapping[str, str] | None = None) -> HttpError:
    """The HttpError for an exception (see the module docstring).

    Args:
        renames: native field name → the route's field name, applied to an InvalidRequestError's ``param`` and to
            the field names in its message.
    """
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, InvalidRequestError):
        table = renames or {}
        param = table.get(exc.param, exc.param) if exc.param is not None else None
        return HttpError(exc.status, _rename(exc.message, table) if table else exc.message, param)
    if isinstance(exc, ValueError):
        return HttpError(400, str(exc))
    if isinstance(exc, ServerUnavailableError):
        return HttpError(503, str(exc))
    if isinstance(exc, RequestFailedError):
        return HttpError(exc.status, str(exc))
    if isinstance(exc, TimeoutError):
        return HttpError(504, "timed out waiting for the scheduler")
    return HttpError(500, f"internal server error: {type(exc).__name__}: {exc}")


def error_response(exc: BaseException, renames: Mapping[str, str] | None = None) -> JSONResponse:
    """The error JSONResponse for an exception (500s are logged with their traceback)."""
    err = http_error(exc, renames)
    if err.status >= 500:
        logger.error("internal error", exc_info=exc)
    return err.response()


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    out = ""
    for part in loc:
        if part in ("body", "query", "path"):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def from_validation_error(exc: ValidationError | RequestValidationError) -> HttpError:
    """A 400 whose ``param`` is the path of the first failing field of a pydantic validation."""
    errors = exc.errors()
    if not errors:
        return bad_request(str(exc))
    first = errors[0]
    # a model-level check names its field in ctx["loc"]; an undeclared field is "extra_forbidden"
    param = _loc_to_param(tuple(first.get("loc", ()))) or (first.get("ctx") or {}).get("loc")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    text = f"{param}: {msg}" if param and not msg.startswith(f"{param}:") else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more error(s))"
    return bad_request(text, param)


def require_json(request: Request) -> None:
    """Refuse a request whose ``Content-Type`` is not JSON (``application/json`` or ``*/*+json``).

    A web page can send a cross-site request without asking the server first (no CORS preflight) only with a form
    content type (text/plain, urlencoded, multipart); requiring JSON on every route that reads a body or changes state
    keeps such pages from driving the server (CSRF) while it runs without an API key.

    Raises:
        HttpError: 415 naming ``Content-Type``.
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HttpError(415, f"Content-Type: must be application/json, got {media or 'none'!r}", "Content-Type")


async def read_json(request: Request) -> Any:
    """The decoded JSON body.

    Raises:
        HttpError: 415 for a non-JSON Content-Type (``require_json``).
        InvalidRequestError: an empty or malformed body (``param`` ``body``).
    """
    require_json(request)
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequestError("body", "body: a JSON body is required")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequestError("body", f"body: malformed JSON: {e}") from None
    except RecursionError:  # e.g. "[" * 100000: Python's parser recurses once per nesting level
        raise InvalidRequestError("body", "body: malformed JSON: nested too deeply") from None


async def read_json_object(request: Request) -> dict[str, Any]:
    """The decoded JSON body, which must be an object.

    Raises:
        InvalidRequestError: an empty or malformed body, or one that is not an object (``param`` ``body``).
    """
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequestError("body", f"body: must be a JSON object, got {type(body).__name__}")
    return body


def install_error_handlers(app: FastAPI) -> None:
    """Give every error the error body, so routes simply raise: the runtime's errors by the table of the module
    docstring (InvalidRequestError → 400 naming the field), ClientDisconnected → 499 with no body, request
    validation (pydantic) → 400 naming the field, HTTP errors (404 unknown route, 405 wrong method, ...) → their
    status, uncaught exceptions → 500."""

    async def _mapped(_request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientDisconnected):
            return Response(status_code=499)
        return error_response(exc)

    for exc_class in (InvalidRequestError, HttpError, ServerUnavailableError, RequestFailedError, TimeoutError):
        app.add_exception_handler(exc_class, _mapped)
    app.add_exception_handler(ClientDisconnected, _mapped)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return openai_error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)


# ---------------------------------------------------------------------------------------------------- sizes
#: a request body larger than this (bytes) is tokenized on a worker thread, off the event loop
LARGE_BODY_BYTES = 32_768


def is_large(request: Request | None) -> bool:
    """Whether the request's body is large enough to tokenize off the event loop (by its Content-Length)."""
    if request is None:
        return False
    try:
        return int(request.headers.get("content-length", "0")) > LARGE_BODY_BYTES
    except ValueError:
        return True


async def off_loop_if(large: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, on a worker thread when ``large`` (tokenizing megabytes must not stall every other client)."""
    if large:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


class BodySizeLimitMiddleware:
    """Pure ASGI middleware: 413 for a request body over ``limit()`` bytes — at once by its Content-Length, or while
    it is read (a chunked body) — before any of it is parsed.

    Args:
        app: the wrapped app. limit: the current limit in bytes (it may depend on the model, known once loaded).
    """

    def __init__(self, app: Any, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(limit).response()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"body: larger than {limit} bytes (max_request_bytes)", "body")


# ---------------------------------------------------------------------------------------------------- streaming
def sse_event(payload: Any) -> bytes:
    """One server-sent event: ``data: <json>\\n\\n`` (or ``data: [DONE]`` for the string ``"[DONE]"``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


async def sse_body(
    events: AsyncIterator[Any], first: Any = None, renames: Mapping[str, str] | None = None
) -> AsyncIterator[bytes]:
    """An SSE response body: ``first`` (if not None) and each event as ``data: {...}``, an error event (the error
    body) if producing them fails, then ``data: [DONE]``. Closing this body (client disconnect) closes ``events``,
    which aborts their requests."""
    try:
        if first is not None:
            yield sse_event(first)
        async for item in events:
            yield sse_event(item)
    except Exception as e:  # noqa: BLE001 - mid-stream failures become an error event
        yield sse_event(http_error(e, renames).body())
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    yield sse_event("[DONE]")


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready (answered 499)."""


async def run_unless_disconnected(request: Request | None, aw: Awaitable[T]) -> T:
    """Await ``aw`` unless the client disconnects first; then it is cancelled (its requests aborted).

    Raises:
        ClientDisconnected: the client went away first. Whatever ``aw`` raises.
    """
    task = asyncio.ensure_future(aw)
    if request is None:
        return await task

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if not task.done() or task.cancelled():
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected
    return task.result()
