"""The native API's HTTP responses as ``RuntimeEndpoint`` reads them: status errors (``BackendRequestError`` for a
4xx, with the server's message), JSON bodies, and the SSE events of a streamed ``/generate``."""

from __future__ import annotations

import json
from typing import Any

import httpx

from radixgen.backends.base import BackendError, BackendRequestError, DeltaCallback


def status_error(resp: httpx.Response) -> BackendError:
    """BackendRequestError for a 4xx, BackendError otherwise, with the server's ``error.message``."""
    try:
        message = str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = resp.text.strip() or resp.reason_phrase
    url = str(resp.request.url)
    if 400 <= resp.status_code < 500:
        return BackendRequestError(f"{message} (HTTP {resp.status_code} from {url})")
    return BackendError(f"{url}: HTTP {resp.status_code}: {message}")


def connection_error(method: str, url: str, e: httpx.HTTPError) -> BackendError:
    """The BackendError for a request that got no response (connection refused, timeout, ...)."""
    return BackendError(f"{method} {url} failed: {type(e).__name__}: {e or 'no details'}")


def decode_json(resp: httpx.Response) -> Any:
    """The JSON body; an error status or a non-JSON body raises (see ``status_error``)."""
    if resp.status_code >= 400:
        raise status_error(resp)
    try:
        return resp.json()
    except ValueError as e:
        raise BackendError(f"{resp.request.url}: malformed JSON response: {resp.text[:200]!r}") from e


class SseReader:
    """Reads the SSE lines of a streamed ``/generate``: each event carries the cumulative text; ``on_delta`` gets
    each new piece (so the pieces concatenate to the final text); the last event gives the text and meta info.
    An error event raises BackendRequestError (4xx code) or BackendError."""

    def __init__(self, url: str, on_delta: DeltaCallback | None) -> None:
        self.url, self.on_delta = url, on_delta
        self.text, self.meta = "", dict[str, Any]()

    def feed(self, line: str) -> None:
        data = line[5:].strip() if line.startswith("data:") else "[DONE]"
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError as e:
            raise BackendError(f"{self.url}: malformed stream event {data[:200]!r}") from e
        if "error" in event:
            err = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
            code = err.get("code")
            cls = BackendRequestError if isinstance(code, int) and 400 <= code < 500 else BackendError
            raise cls(f"{err.get('message')} (stream from {self.url})")
        new = event.get("text", "")
        if self.on_delta is not None and len(new) > len(self.text):
            self.on_delta(new[len(self.text) :])
        self.text, self.meta = new, event.get("meta_info", {})
