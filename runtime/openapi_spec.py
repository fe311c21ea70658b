"""The server's OpenAPI document: request bodies and error responses for every route.

The routes parse their JSON bodies themselves (so that every problem becomes the error body naming the field), which
leaves FastAPI's generated document without request bodies and with only 200s. ``install_openapi`` completes it:
each JSON route gets its request schema (the native GenerateReqInput with SamplingParams, the OpenAI request models,
the small control bodies) and each route the error statuses it can answer, all with the one error body of
``http_common``. API fuzzers (schemathesis) and client generators can then use ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from pydantic import BaseModel, Field, TypeAdapter, create_model

from radixgen.runtime.generate_request import GenerateReqInput
from radixgen.runtime.io_struct import PROFILE_BODY_FIELDS, ProfileReq
from radixgen.runtime.openai_api.protocol import ChatCompletionRequest, CompletionRequest

_REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


class AbortRequest(BaseModel):
    rid: str | None = Field(None, description="The request to abort (the rid given to /generate, or an n>1 group's).")
    abort_all: bool = Field(False, description="Abort every request in flight (an admin key's, with API keys).")


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str = Field(description="The name requests will use (lora_path, or OpenAI model).")
    lora_path: str = Field(description="A PEFT adapter directory (adapter_config.json + adapter_model.safetensors).")


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str


class TokenizeRequest(BaseModel):
    text: str | list[str] | None = None
    prompt: str | list[str] | None = Field(None, description="Alias of text.")
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    tokens: list[int]
    skip_special_tokens: bool = False


# the /start_profile body: ProfileReq's body fields, with their types and defaults (one source of truth)
_PROFILE_BODY: dict[str, Any] = {
    f.name: (f.type, f.default) for f in msgspec.structs.fields(ProfileReq) if f.name in PROFILE_BODY_FIELDS
}
ProfileRequest = create_model("ProfileRequest", **_PROFILE_BODY)


# path → (methods, request model or None, required body, extra error statuses)
_JSON = (400, 413, 415)
_ROUTES: dict[str, tuple[tuple[str, ...], Any, bool, tuple[int, ...]]] = {
    "/generate": (("post",), GenerateReqInput, True, (*_JSON, 404, 429, 503)),
    "/v1/completions": (("post",), CompletionRequest, True, (*_JSON, 404, 429, 503)),
    "/v1/chat/completions": (("post",), ChatCompletionRequest, True, (*_JSON, 404, 429, 503)),
    "/abort_request": (("post",), AbortRequest, True, (*_JSON, 403, 404)),
    "/tokenize": (("post",), TokenizeRequest, True, _JSON),
    "/load_lora_adapter": (("post",), LoadLoRAAdapterRequest, True, (*_JSON, 503)),
    "/unload_lora_adapter": (("post",), UnloadLoRAAdapterRequest, True, (*_JSON, 404, 503)),
    "/v1/load_lora_adapter": (("post",), LoadLoRAAdapterRequest, True, (*_JSON, 503)),
    "/v1/unload_lora_adapter": (("post",), UnloadLoRAAdapterRequest, True, (*_JSON, 404, 503)),
    "/detokenize": (("post",), DetokenizeRequest, True, _JSON),
    "/start_profile": (("get", "post"), ProfileRequest, False, (*_JSON, 503)),
    "/stop_profile": (("get", "post"), None, False, (400, 415, 503)),
    "/flush_cache": (("get", "post"), None, False, (400, 415, 503)),
    "/server_info": (("get",), None, False, (503,)),
    "/get_server_info": (("get",), None, False, (503,)),
    "/health": (("get",), None, False, (503,)),
    "/health_generate": (("get",), None, False, (503,)),
    "/metrics": (("get",), None, False, (404,)),
    "/v1/models/{model_id}": (("get",), None, False, (404, 503)),
}


# 200 responses that are not JSON objects (FastAPI documents every 200 as application/json)
_STREAMED = {"application/json": {"schema": {}}, "text/event-stream": {"schema": {"type": "string"}}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_OK_CONTENT: dict[str, dict[str, Any] | None] = {
    "/health": None, "/ready": None, "/ping": None, "/health_generate": None,
    "/metrics": _TEXT, "/start_profile": _TEXT, "/stop_profile": _TEXT,
    "/generate": _STREAMED, "/v1/completions": _STREAMED, "/v1/chat/completions": _STREAMED,
}


def _schema(model: Any, components: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``model``'s JSON schema, which (with its definitions) goes into ``components``."""
    schema = TypeAdapter(model).json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    name = model.__name__
    components[name] = schema
    return {"$ref": _REF.format(model=name)}


def install_openapi(app: FastAPI, api_keys: bool) -> None:
    """Complete ``app``'s OpenAPI document (built once, on first request of ``/openapi.json``).

    Args:
        api_keys: every route but /health may answer 401 (and generation routes 429) when keys are configured.
    """
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = default()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        error = _schema(ErrorBody, components)
        error_response = {"content": {"application/json": {"schema": error}}}
        for path, operations in doc.get("paths", {}).items():
            methods, model, required, statuses = _ROUTES.get(path, ((), None, False, ()))
            for method, operation in operations.items():
                codes = set(statuses if method in methods else ())
                if api_keys and path != "/health":
                    codes.add(401)
                if not api_keys:
                    codes.discard(429)
                if method in methods and model is not None:
                    body = {"schema": _schema(model, components)}
                    operation["requestBody"] = {"required": required, "content": {"application/json": body}}
                responses = operation.setdefault("responses", {})
                if path in _OK_CONTENT:
                    content = _OK_CONTENT[path]
                    responses["200"] = {"description": "OK", **({"content": content} if content else {})}
                for code in sorted(codes):
                    responses.setdefault(str(code), {"description": _DESCRIPTIONS[code], **error_response})
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


_DESCRIPTIONS = {
    400: "Invalid input; `param` names the field",
    401: "Missing or unknown API key",
    403: "Not allowed for this API key",
    404: "Unknown model, request id or disabled route",
    413: "Request body too large",
    415: "Content-Type is not application/json",
    429: "The API key's rate limit is spent (see Retry-After)",
    503: "The model is loading, or a server process died",
}
