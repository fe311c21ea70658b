"""The FastAPI app of the server: SGLang's native routes (the OpenAI-compatible /v1 routes are mounted from
``radixgen.runtime.openai_api`` when that module exists).

Routes: POST /generate, GET /health, GET /health_generate, GET /get_model_info, GET /get_server_info,
POST|GET /flush_cache, POST /abort_request, POST /tokenize, POST /detokenize, POST /load_lora_adapter and
/unload_lora_adapter (also under /v1, vLLM's spelling), GET /metrics (only with ``--enable-metrics``; 404
otherwise). With ``--api-key`` every route except /health needs
``Authorization: Bearer <key>`` (401 otherwise). Errors use the error body of ``http_common``.
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse

from radixgen.runtime.api_keys import ApiKeyMiddleware, KeyLimiter, KeyPolicy, load_api_keys, owner_of
from radixgen.runtime.dp_dispatch import combine_stats
from radixgen.runtime.errors import InvalidRequestError
from radixgen.runtime.generate_request import GenerateReqInput, check_prompt_chars, parse_generate_body
from radixgen.runtime.http_common import (
    BodySizeLimitMiddleware,
    ClientDisconnected,
    install_error_handlers,
    is_large,
    off_loop_if,
    openai_error,
    read_json,
    read_json_object,
    require_json,
    run_unless_disconnected,
    sse_body,
)
from radixgen.runtime.io_struct import (
    PROFILE_BODY_FIELDS,
    LoadLoRAAdapterReq,
    LoRAUpdateOut,
    ProfileOut,
    ProfileReq,
    UnloadLoRAAdapterReq,
)
from radixgen.runtime.metrics import CONTENT_TYPE
from radixgen.runtime.openapi_spec import install_openapi
from radixgen.runtime.server_args import ServerArgs
from radixgen.runtime.tokenizer_manager import TokenizerManager

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["create_app"]


async def _first(gen: AsyncIterator[T]) -> T:
    try:
        return await anext(gen)
    finally:
        await gen.aclose()  # type: ignore[attr-defined]


def create_app(tokenizer_manager: TokenizerManager, server_args: ServerArgs) -> FastAPI:
    """The FastAPI app over a TokenizerManager. Its lifespan starts and stops the manager's receive task.

    Mounts ``radixgen.runtime.openai_api.register_openai_routes(app, tokenizer_manager, server_args)`` when
    that module exists (an error while importing it propagates).
    """
    tm = tokenizer_manager

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await tm.start()
        try:
            yield
        finally:
            await tm.stop()

    app = FastAPI(title="radixgen", lifespan=lifespan)
    install_error_handlers(app)
    policies = api_key_policies(server_args)
    if policies:
        limiter = KeyLimiter(policies, tm.metrics.registry if tm.metrics is not None else None)
        tm.charge_tokens = limiter.charge_tokens
        app.add_middleware(ApiKeyMiddleware, limiter=limiter)
    app.add_middleware(BodySizeLimitMiddleware, limit=lambda: max_request_bytes(server_args, tm.context_len))
    if server_args.allowed_origins:  # otherwise no CORS headers: browsers refuse cross-origin calls
        origins = [o.strip() for o in server_args.allowed_origins.split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"])

    @app.get("/health")
    async def health() -> Response:
        if tm.is_ready:
            return Response(status_code=200)
        reason = tm.dead_reason or "the model is still loading"
        return openai_error(503, f"server not ready: {reason}")

    @app.get("/ready")
    @app.get("/ping")
    async def ready() -> Response:
        """SGLang's readiness (and SageMaker's /ping) check: 200 once the model is loaded, 503 otherwise."""
        return Response(status_code=200 if tm.is_ready else 503)

    @app.get("/health_generate")
    async def health_generate(request: Request) -> Response:
        bos = getattr(tm.tokenizer, "bos_token_id", None)
        obj = GenerateReqInput(
            input_ids=[bos if bos is not None else 0],
            sampling_params={"max_new_tokens": 1, "temperature": 0.0},
            rid=f"HEALTH_CHECK_{uuid.uuid4().hex}",
            log_metrics=False,
        )
        try:
            await run_unless_disconnected(request, _first(tm.generate_request(obj)))
        except ClientDisconnected:
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001 - any failure means unhealthy
            return openai_error(503, f"health generation failed: {e}")
        return Response(status_code=200)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def get_model_info() -> dict[str, Any]:
        return {
            "model_path": server_args.model_path,
            "tokenizer_path": server_args.resolved_tokenizer_path,
            "is_generation": True,
            "served_model_name": server_args.resolved_served_model_name,
        }

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def get_server_info() -> Response:
        replicas = await tm.get_scheduler_stats()
        stats = combine_stats(replicas)
        args = asdict(server_args)
        if args.get("api_key"):
            args["api_key"] = "<redacted>"
        info = {
            **args,
            "context_len": tm.context_len,
            "vocab_size": tm.vocab_size,
            "eos_token_ids": tm.eos_token_ids,
            **tm.memory_report,
            **{k: getattr(stats, k) for k in stats.__struct_fields__ if k != "dp_rank"},
            # SGLang's shape: one entry per data-parallel scheduler replica
            "internal_states": [{k: getattr(s, k) for k in s.__struct_fields__} for s in replicas],
            "dp_requests_routed": list(tm.dp.sent),  # requests sent to each replica so far
            "version": radixgen_version(),
            "pids": tm.child_pids,
        }
        return JSONResponse(info)

    @app.api_route("/flush_cache", methods=["POST", "GET"])
    async def flush_cache(request: Request) -> Response:
        require_json(request)  # state-changing: no form-type cross-site request (SGLang's client sends JSON's type)
        if not await tm.flush_cache():
            return openai_error(400, "flush_cache: refused while requests are queued or running")
        return JSONResponse({"success": True, "message": "Cache flushed."})

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await read_json_object(request)
        rid, abort_all = body.get("rid"), body.get("abort_all", False)
        if not isinstance(abort_all, bool):
            raise InvalidRequestError("abort_all", "abort_all: must be a boolean")
        if not abort_all and (not isinstance(rid, str) or not rid):
            raise InvalidRequestError("rid", "rid: must be a non-empty string (or give abort_all: true)")
        owner = owner_of(request)
        if abort_all and owner is not None and not owner.admin:
            return openai_error(403, "abort_all: needs an admin API key", "abort_all")
        if not await tm.abort_request(rid or "", abort_all=abort_all, owner=owner):
            return openai_error(404, f"rid: no request {rid!r} is in flight", "rid")
        return JSONResponse({"success": True})

    @app.post("/load_lora_adapter")
    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        """Load a PEFT adapter: ``{"lora_name", "lora_path"}`` (SGLang's and vLLM's body)."""
        body = await read_json_object(request)
        name, path = _lora_field(body, "lora_name"), _lora_field(body, "lora_path")
        return _lora_response(await tm.update_lora(LoadLoRAAdapterReq(name, path)))

    @app.post("/unload_lora_adapter")
    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        """Unload an adapter: ``{"lora_name"}``; answered once the adapter's running requests have finished."""
        body = await read_json_object(request)
        return _lora_response(await tm.update_lora(UnloadLoRAAdapterReq(_lora_field(body, "lora_name"))))

    @app.api_route("/start_profile", methods=["GET", "POST"])
    async def start_profile(request: Request) -> Response:
        """Start the scheduler's torch profiler (optional JSON body: SGLang's ProfileReq options)."""
        require_json(request)
        raw = await request.body()
        body = await read_json_object(request) if raw.strip() else {}
        return _profile_response(await tm.profile(profile_request(body)))

    @app.api_route("/stop_profile", methods=["GET", "POST"])
    async def stop_profile(request: Request) -> Response:
        """Stop the profiler and write its Chrome trace."""
        require_json(request)
        return _profile_response(await tm.profile(ProfileReq(action="stop")))

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        body = await read_json_object(request)
        text, add_special = body.get("text", body.get("prompt")), body.get("add_special_tokens", True)
        if not isinstance(add_special, bool):
            raise InvalidRequestError("add_special_tokens", "add_special_tokens: must be a boolean")
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidRequestError("text", "text: must be a string or a non-empty list of strings")
        for t in texts:  # a text that cannot fit the context is no prompt: refused before tokenizing it
            check_prompt_chars(t, "text", tm.max_prompt_chars)

        def encode() -> list[list[int]]:
            return [tm.tokenizer.encode(t, add_special_tokens=add_special) for t in texts]

        encoded = await off_loop_if(is_large(request), encode)
        ids: Any = encoded[0] if isinstance(text, str) else encoded
        count: Any = len(ids) if isinstance(text, str) else [len(x) for x in encoded]
        return JSONResponse({"tokens": ids, "input_ids": ids, "count": count, "max_model_len": tm.context_len})

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        body = await read_json_object(request)
        tokens, skip = body.get("tokens"), body.get("skip_special_tokens", False)
        size = len(tm.tokenizer)
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < size for t in tokens
        ):
            raise InvalidRequestError("tokens", f"tokens: must be a list of token ids in [0, {size})")
        if not isinstance(skip, bool):
            raise InvalidRequestError("skip_special_tokens", "skip_special_tokens: must be a boolean")
        return JSONResponse({"text": tm.tokenizer.decode(tokens, skip_special_tokens=skip)})

    @app.get("/metrics")
    async def metrics() -> Response:
        if tm.metrics is None:
            msg = "metrics are disabled; start the server with --enable-metrics"
            return openai_error(404, msg)
        return Response(tm.metrics.render(), media_type=CONTENT_TYPE)

    api: Any = None  # the OpenAI routes' ApiContext (below): it resolves a model name to the model or an adapter

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        obj = parse_generate_body(await read_json(request))
        tm.check_available()
        if obj.model is not None and api is not None:  # sglang-router's field: the served model or an adapter
            if not isinstance(obj.model, str):
                raise InvalidRequestError("model", "model: must be a string")
            adapter = api.check_model(obj.model)
            if adapter is not None and obj.lora_path is None:
                obj.lora_path = adapter
        gen = tm.generate_request(obj, owner=owner_of(request))
        if not obj.stream:
            return JSONResponse(await run_unless_disconnected(request, _first(gen)))
        try:  # the first update validates the request: errors before it are plain HTTP errors
            first = await run_unless_disconnected(request, anext(gen, None))
        except BaseException:
            await gen.aclose()
            raise
        return StreamingResponse(sse_body(gen, first), media_type="text/event-stream")

    spec = importlib.util.find_spec("radixgen.runtime.openai_api")
    if spec is not None:
        from radixgen.runtime.openai_api import register_openai_routes  # type: ignore[attr-defined]

        api = register_openai_routes(app, tm, server_args)
    install_openapi(app, api_keys=bool(policies))
    return app


# SGLang ProfileReq options this server implements; the others are refused when set (never ignored)
_PROFILE_DEFAULTS: dict[str, Any] = {
    "start_step": None, "profile_by_stage": False, "profile_id": None, "merge_profiles": False,
    "profile_stages": None, "detailed_annotations": False,
}


def profile_request(body: dict[str, Any]) -> ProfileReq:
    """A start ProfileReq from SGLang's /start_profile body.

    Raises:
        InvalidRequestError: an unknown option, one this server does not implement set to a non-default value,
            or a value of the wrong type — naming it.
    """
    for key, value in body.items():
        if key in _PROFILE_DEFAULTS:
            if value != _PROFILE_DEFAULTS[key]:
                raise InvalidRequestError(key, f"{key}: not supported by this server")
        elif key not in PROFILE_BODY_FIELDS:
            raise InvalidRequestError(key, f"{key}: unknown field")
    try:
        return msgspec.convert({k: body[k] for k in PROFILE_BODY_FIELDS if k in body}, ProfileReq)
    except msgspec.ValidationError as e:
        raise InvalidRequestError(None, f"start_profile: {e}") from None


def _lora_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(name, f"{name}: must be a non-empty string")
    return value


def _lora_response(out: LoRAUpdateOut) -> Response:
    """SGLang's reply ``{"success", "error_message", "loaded_adapters"}``, or the error body with its status."""
    if not out.success:
        return openai_error(out.status, out.error_message, out.param)
    return JSONResponse({"success": True, "error_message": "", "loaded_adapters": out.loaded_adapters})


def _profile_response(out: ProfileOut) -> Response:
    if not out.success:
        return openai_error(400, out.message)
    return Response(content=out.message + "\n", media_type="text/plain")


def api_key_policies(server_args: ServerArgs) -> list[KeyPolicy]:
    """The keys: ``--api-key`` (an admin, no limits) and the entries of ``--api-key-file``.

    Raises:
        ValueError: a malformed key file (naming its line) or a key given twice.
    """
    policies = [KeyPolicy(server_args.api_key, admin=True)] if server_args.api_key else []
    if server_args.api_key_file:
        policies += load_api_keys(server_args.api_key_file)
    if len({p.key for p in policies}) != len(policies):
        raise ValueError("api_key: --api-key is also listed in --api-key-file")
    return policies


def max_request_bytes(server_args: ServerArgs, context_len: int) -> int:
    """``--max-request-bytes``, or by default max(4 MiB, 64 bytes per token of context): room for a full-context
    prompt as escaped JSON text or token-id lists, and a batch of them."""
    return server_args.max_request_bytes or max(4 << 20, 64 * context_len)


def radixgen_version() -> str:
    """The installed radixgen's version."""
    from importlib.metadata import version

    return version("radixgen")
