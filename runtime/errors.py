"""The runtime's request errors, shared by the offline Engine, the native API and the OpenAI routes (torch-free).

Invalid input raises ``InvalidRequestError`` carrying the request field at fault (``param``) next to the message,
so each HTTP layer reports the field from the error itself (renamed into its own protocol's terms) instead of
parsing it back out of the text. It subclasses ``ValueError``: callers of the offline Engine catch ValueError.
"""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """Bad input: HTTP 400 (or ``status``, a 4xx: 404 for a model or adapter that does not exist).

    Args:
        param: the offending field in the native API's terms (``max_new_tokens``, ``input_ids``, ``rid``, ...), or
            None when no single field is at fault.
        message: human-readable text; by convention it starts with ``"<param>: "``.
        status: the HTTP status (400 unless the input names something that does not exist).
    """

    def __init__(self, param: str | None, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.status = status


class LoRAError(InvalidRequestError):
    """A LoRA adapter problem (runtime/lora): a bad adapter directory, config or weights, a name already loaded
    (400), or an adapter that is not loaded (404)."""


class ServerUnavailableError(RuntimeError):
    """The model is not loaded yet, or a server process died: HTTP 503."""


class RequestFailedError(RuntimeError):
    """A request failed for another reason than invalid input; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
