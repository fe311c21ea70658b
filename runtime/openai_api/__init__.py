"""The OpenAI-compatible API: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.

``register_openai_routes(app, tokenizer_manager, server_args)`` mounts the routes on the server's FastAPI app.
Request bodies are parsed and validated here (not by FastAPI), so every input problem comes back as an OpenAI
error body ``{"error": {"message", "type", "param", "code"}}`` with ``param`` naming the field.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from radixgen.runtime.http_common import ClientDisconnected, HttpError, error_response, read_json_object
from radixgen.runtime.openai_api.chat import create_chat_completion
from radixgen.runtime.openai_api.chat_templates import BUILTIN_TEMPLATES, resolve_chat_template
from radixgen.runtime.openai_api.completions import create_completion
from radixgen.runtime.openai_api.protocol import ModelCard, ModelList
from radixgen.runtime.openai_api.serving import ApiContext
from radixgen.runtime.openai_api.tools import GrammarConfig

__all__ = ["BUILTIN_TEMPLATES", "ApiContext", "register_openai_routes"]


Handler = Callable[[ApiContext, Any, Request], Awaitable[Response]]


async def _handle(ctx: ApiContext, request: Request, handler: Handler) -> Response:
    """Parse the JSON body and run the route; every error becomes its error response (the routes also work on an
    app without ``http_common.install_error_handlers``)."""
    try:
        return await handler(ctx, await read_json_object(request), request)
    except ClientDisconnected:
        return Response(status_code=499)
    except Exception as e:  # invalid input (400), the runtime is down (503), a failed request, or a bug (500)
        return error_response(e)


def register_openai_routes(app: FastAPI, tokenizer_manager: Any, server_args: Any) -> ApiContext:
    """Mount the OpenAI-compatible routes.

    Args:
        app: the server's FastAPI app.
        tokenizer_manager: has ``tokenizer``, ``context_len``, ``vocab_size``, ``generate_request(obj)``,
            ``abort_request(rid)``.
        server_args: a ServerArgs (``served_model_name``, ``chat_template``, ``model_path``, the grammar settings,
            ``tool_call_parser``, ``reasoning_parser``).

    Returns:
        The ApiContext the routes share.

    Raises:
        ValueError: ``--chat-template`` names no built-in template, file or Jinja text.
    """
    ctx = ApiContext(
        tm=tokenizer_manager,
        model_name=server_args.resolved_served_model_name,
        chat_template=resolve_chat_template(server_args.chat_template),
        grammar=GrammarConfig(
            backend=server_args.grammar_backend,
            max_spec_bytes=server_args.grammar_max_spec_bytes,
            max_nesting_depth=server_args.grammar_max_nesting_depth,
            any_whitespace=server_args.grammar_any_whitespace,
            tool_call_parser=server_args.tool_call_parser,
            reasoning_parser=server_args.reasoning_parser,
        ),
    )

    def card(adapter: str | None = None) -> ModelCard:
        """The base model's card, or a loaded LoRA adapter's (``root``: its directory, ``parent``: the base)."""
        max_len = tokenizer_manager.context_len
        if adapter is None:
            return ModelCard(id=ctx.model_name, root=server_args.model_path, max_model_len=max_len)
        path = (getattr(tokenizer_manager, "lora_adapters", None) or {}).get(adapter)
        return ModelCard(id=adapter, root=path, parent=ctx.model_name, max_model_len=max_len)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        adapters = getattr(tokenizer_manager, "lora_adapters", None) or {}
        return JSONResponse(ModelList(data=[card(), *(card(a) for a in adapters)]).model_dump(mode="json"))

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        try:
            adapter = ctx.check_model(model_id)
        except HttpError as e:
            return e.response()
        return JSONResponse(card(adapter).model_dump(mode="json"))

    @app.get("/get_chat_template")
    async def get_chat_template() -> JSONResponse:
        """The chat template prompts are rendered with (``--chat-template`` or the tokenizer's own; ``template`` is
        null when there is none), its extra stop strings and the special tokens it refers to — what the DSL
        frontend needs to render roles itself."""
        tok = tokenizer_manager.tokenizer
        tpl = ctx.chat_template
        return JSONResponse(
            {
                "name": tpl.name if tpl is not None else ("tokenizer" if tok.chat_template else None),
                "template": tpl.template if tpl is not None else (tok.chat_template or None),
                "stop": list(tpl.stop) if tpl is not None else [],
                "bos_token": getattr(tok, "bos_token", None),
                "eos_token": getattr(tok, "eos_token", None),
            }
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _handle(ctx, request, create_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _handle(ctx, request, create_chat_completion)

    return ctx
