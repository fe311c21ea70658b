"""``RuntimeEndpoint``: the DSL backend for a running radixgen server, over its native HTTP API (``/generate``, SSE
when streaming, ``/tokenize``, ``/get_chat_template``). ``select`` follows SGLang's ``RuntimeEndpoint.select``.

Request sequences are written once, as generators that yield ``(method, path, body)`` and receive the decoded JSON
(or have the ``BackendError`` thrown in), and are driven (``radixgen.sansio.drive``) either by the sync
``httpx.Client`` or by an ``httpx.AsyncClient`` of the running event loop (one per loop: an AsyncClient must not
cross loops).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx

from radixgen.backends.base import (
    Backend,
    BackendError,
    BackendRequestError,
    DeltaCallback,
    GenOutput,
    PromptView,
    SelectOutput,
    check_chat_prompt,
)
from radixgen.backends.native_http import SseReader, connection_error, decode_json, status_error
from radixgen.backends.openai_output import Accumulator, as_attrs
from radixgen.chat_template import ChatTemplate, get_chat_template
from radixgen.choices import ChoicesMethod
from radixgen.sampling import SamplingParams
from radixgen.sansio import drive, run_blocking

Request = tuple[str, str, dict[str, Any] | None]
Steps = Generator[Request, Any, Any]
_LoopClients = weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]


@dataclass(frozen=True)
class _ServerFacts:
    """Fetched once: ``template``, the ``/get_chat_template`` body ({} without the route); ``bos_ids``, what the
    tokenizer adds to an empty text (normally ``[bos_id]``); ``strip_text``: the BOS text the tokenizer both adds
    and parses as that BOS (a prompt starting with it would get two), else None."""

    template: dict[str, Any]
    bos_ids: list[int]
    strip_text: str | None


class RuntimeEndpoint(Backend):
    """A radixgen (or SGLang-compatible) server at ``base_url``.

    Args (SGLang's ``RuntimeEndpoint(base_url, api_key, verify, chat_template_name)``, and more):
        base_url: e.g. ``http://127.0.0.1:30000``. api_key: sent as ``Authorization: Bearer``.
        verify: TLS verification for an ``https`` URL (a CA bundle path, or False); None = the default checks.
        chat_template_name: a built-in template name (SGLang's argument); same as ``chat_template``.
        chat_template: a built-in name, Jinja file or inline Jinja to render roles with instead of the server's.
        timeout: seconds for one HTTP request (a whole non-streamed generation).

    LoRA: a call's adapter (``PromptView.lora``) goes as ``lora_path`` (SGLang's field, the adapter's name) in every
    ``/generate`` of the call — gen, select's scoring requests and prefix warm-ups — and as ``model`` in a tool-call
    chat completion; the server answers 404 naming the field for an adapter it has not loaded.

    Nothing is contacted on construction. Safe to call from many threads (one pooled ``httpx.Client``, sized
    for ~256 concurrent programs) and from any number of event loops (one ``httpx.AsyncClient`` per loop).

    Raises (every call): ``BackendRequestError`` for an HTTP 4xx (the server's message, which names the field),
    ``BackendError`` for other statuses, connection failures and malformed responses (the message has the URL).
    The constructor raises ValueError when both ``chat_template`` and ``chat_template_name`` are given.
    """

    supports_lora = True

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        verify: bool | str | None = None,
        chat_template_name: str | None = None,
        *,
        chat_template: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        if chat_template is not None and chat_template_name is not None:
            raise ValueError("chat_template_name: give chat_template or chat_template_name, not both")
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._verify: bool | str = True if verify is None else verify
        self._template_spec = chat_template if chat_template is not None else chat_template_name
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 30.0))
        self._limits = httpx.Limits(max_connections=512, max_keepalive_connections=256)
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._aclients: _LoopClients = weakref.WeakKeyDictionary()
        self._facts: _ServerFacts | None = None
        self._template_lock = threading.Lock()
        self._template: tuple[ChatTemplate | None] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def chat_template(self) -> ChatTemplate | None:
        """The template roles render with: the one given at construction (with the server's bos/eos tokens), else
        the server's (``GET /get_chat_template``, fetched once); None when the server has none.

        Raises:
            ValueError: the template cannot be rendered turn by turn. BackendError: the server is unreachable.
        """
        with self._template_lock:
            if self._template is None:
                tpl = self._run(self._facts_steps()).template
                bos, eos, spec, stop = tpl.get("bos_token"), tpl.get("eos_token"), self._template_spec, tpl.get("stop")
                if spec is None and tpl.get("template"):
                    spec = ChatTemplate.from_jinja(tpl.get("name") or "server", tpl["template"], bos, eos, stop or ())
                self._template = (get_chat_template(spec, bos, eos) if isinstance(spec, str) else spec,)
            return self._template[0]

    def generate(self, prompt: PromptView, params: SamplingParams, on_delta: DeltaCallback | None = None) -> GenOutput:
        """Generate from ``prompt.text`` (``POST /generate``); with ``on_delta`` stream it over SSE."""
        return self._run(self._generate_steps(prompt, params, on_delta is not None), on_delta)

    async def agenerate(
        self, prompt: PromptView, params: SamplingParams, on_delta: DeltaCallback | None = None
    ) -> GenOutput:
        """Async ``generate``."""
        return await self._arun(self._generate_steps(prompt, params, on_delta is not None), on_delta)

    def select(
        self, prompt: PromptView, choices: tuple[str, ...], method: ChoicesMethod, temperature: float = 0.0
    ) -> SelectOutput:
        """Score ``choices`` as continuations of ``prompt`` and decide with ``method`` (see ``_select_steps``)."""
        return self._run(self._select_steps(prompt, tuple(choices), method, temperature))

    async def aselect(
        self, prompt: PromptView, choices: tuple[str, ...], method: ChoicesMethod, temperature: float = 0.0
    ) -> SelectOutput:
        """Async ``select``."""
        return await self._arun(self._select_steps(prompt, tuple(choices), method, temperature))

    def cache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        """Prefill ``prompt`` with ``max_new_tokens=0``; returns the meta info (prompt_tokens, cached_tokens)."""
        return self._run(self._cache_steps(prompt))

    async def acache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        """Async ``cache_prefix``."""
        return await self._arun(self._cache_steps(prompt))

    def get_server_info(self) -> dict[str, Any]:
        """``GET /get_server_info``: the server args, context_len, vocab_size, scheduler stats."""
        return self._request("GET", "/get_server_info")

    def get_model_info(self) -> dict[str, Any]:
        """``GET /get_model_info``: model_path, tokenizer_path, served_model_name."""
        return self._request("GET", "/get_model_info")

    def get_model_name(self) -> str:
        """The served model's path (SGLang's ``RuntimeEndpoint.get_model_name``)."""
        return str(self.get_model_info()["model_path"])

    def flush_cache(self) -> dict[str, Any]:
        """``POST /flush_cache`` (refused with BackendRequestError while requests are running)."""
        return self._request("POST", "/flush_cache", {})  # a JSON body: the server refuses form-type requests

    def health(self) -> bool:
        """Whether ``GET /health`` answers 200 (False on any error; never raises)."""
        try:
            return self._sync_client().get(self.base_url + "/health").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """Close the sync client and drop the per-loop async clients (their loops may be gone). Idempotent."""
        with self._lock:
            client, self._client = self._client, None
            self._aclients = weakref.WeakKeyDictionary()
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the current loop's async client, then ``close()``."""
        with self._lock:
            client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()

    def _facts_steps(self) -> Steps:
        if self._facts is None:  # a benign race: concurrent first calls fetch the same facts
            try:
                template = yield ("GET", "/get_chat_template", None)
            except BackendRequestError as e:  # a server without the route
                if "(HTTP 404 " not in str(e):
                    raise
                template = {}
            bos = template.get("bos_token") or None
            ids = (yield ("POST", "/tokenize", {"text": ["", bos] if bos else [""]}))["input_ids"]
            strip = bos if len(ids) == 2 and len(ids[0]) == 1 and ids[1] == ids[0] * 2 else None
            self._facts = _ServerFacts(template, ids[0], strip)
        return self._facts

    def _wire_text(self, text: str) -> Steps:
        """The text to send: a leading BOS text is dropped when the server's tokenizer adds the BOS itself (a
        template that writes ``bos_token``, like Llama-2's, would otherwise give the prompt two BOS tokens). The
        result is what SGLang's BOS-less llama-2 template sends; a sentencepiece tokenizer may then add its dummy
        prefix space where the chat API's ``add_special_tokens=False`` encoding would not."""
        bos = (yield from self._facts_steps()).strip_text
        return text[len(bos) :] if bos and text.startswith(bos) and len(text) > len(bos) else text

    def _generate_steps(self, prompt: PromptView, params: SamplingParams, stream: bool) -> Steps:
        """One ``/generate``; with ``n`` > 1 the server answers a list (one item per sample), never streamed."""
        if stream and params.samples > 1:
            raise BackendRequestError("n: a streamed gen has one sample; stream only gens with n=1")
        if params.tools is not None:
            return (yield from self._tool_steps(prompt, params))
        text = yield from self._wire_text(prompt.text)
        body = {"text": text, "sampling_params": params.to_native(), **params.native_request_fields(), "stream": stream}
        body |= _adapter(prompt)
        out = yield ("STREAM" if stream else "POST", "/generate", body)
        if stream:
            return out
        if isinstance(out, list):
            return GenOutput.gathered([GenOutput(o["text"], o["meta_info"]) for o in out])
        return GenOutput(out["text"], out["meta_info"])

    def _tool_steps(self, prompt: PromptView, params: SamplingParams) -> Steps:
        """A gen with tools: one ``/v1/chat/completions`` of the finished turns (the server renders the tools with
        its template, enforces and parses the calls); not streamed."""
        check_chat_prompt(prompt)
        kw = params.to_openai()
        body = {"messages": [dict(m) for m in prompt.messages], **kw.pop("extra_body", {}), **kw}
        if prompt.lora is not None:
            body["model"] = prompt.lora  # the OpenAI routes pick an adapter by model
        if params.return_logprob:
            body.update(logprobs=True, top_logprobs=params.top_logprobs_num or 0)
        acc = Accumulator(True, params)
        acc.absorb(as_attrs((yield ("POST", "/v1/chat/completions", body))))
        return acc.output()

    def _cache_steps(self, prompt: PromptView) -> Steps:
        body = {"text": (yield from self._wire_text(prompt.text)), "sampling_params": {"max_new_tokens": 0}}
        return (yield ("POST", "/generate", body | _adapter(prompt)))["meta_info"]

    def _select_steps(
        self, prompt: PromptView, choices: tuple[str, ...], method: ChoicesMethod, temperature: float
    ) -> Steps:
        """SGLang's select over token ids.

        1. Tokenize the prompt and every prompt+choice in one ``/tokenize``. The choice's tokens are those after
           the longest common prefix ``L_i`` of the two id lists (a choice may merge with the prompt's last token).
        2. One batched ``/generate`` of the prompt+choice id lists with ``max_new_tokens=0``, ``return_logprob``
           and ``logprob_start_len=min(L_i)``; each item's ``input_token_logprobs`` is sliced to its choice.
        3. For methods needing unconditional logprobs, a second batch scores the same choice ids after only the
           tokenizer's BOS. Without a BOS the first choice token has no context-free logprob: its conditional
           logprob is used (it then adds 0 to the PMI score; SGLang leaves that position out).

        Every scoring request runs under ``prompt.lora`` (the unconditional ones too: the adapted model scores).
        """
        if not choices:
            raise BackendRequestError("choices: must be non-empty")
        text = yield from self._wire_text(prompt.text)
        tokenized = yield ("POST", "/tokenize", {"text": [text, *(text + c for c in choices)]})
        prompt_ids, full_ids = tokenized["input_ids"][0], tokenized["input_ids"][1:]
        starts = [_common_prefix_len(prompt_ids, ids) for ids in full_ids]
        for choice, ids, start in zip(choices, full_ids, starts, strict=True):
            if start >= len(ids):
                raise BackendRequestError(f"choices: {choice!r} adds no tokens to the prompt")
            if start == 0:
                raise BackendRequestError(f"choices: {choice!r} merges with the whole prompt; no token to condition on")
        first = min(starts)
        outs = yield ("POST", "/generate", _score_body(full_ids, first) | _adapter(prompt))
        logprobs = [_slice_logprobs(o, s - first) for o, s in zip(outs, starts, strict=True)]
        unconditional = None
        if method.requires_unconditional_logprobs:
            facts = yield from self._facts_steps()
            choice_ids = [ids[s:] for ids, s in zip(full_ids, starts, strict=True)]
            bos = facts.bos_ids if facts.bos_ids and prompt_ids[: len(facts.bos_ids)] == facts.bos_ids else []
            # without a BOS the first token has no context-free logprob: reuse the conditional one (adds 0)
            rows = [i for i, ids in enumerate(choice_ids) if bos or len(ids) > 1]
            unconditional = [[] if bos else [lp[0]] for lp in logprobs]
            if rows:
                rows_ids = [bos + choice_ids[i] for i in rows]
                uouts = yield ("POST", "/generate", _score_body(rows_ids, len(bos) or 1) | _adapter(prompt))
                for i, o in zip(rows, uouts, strict=True):
                    unconditional[i] += _slice_logprobs(o, 0)
        return SelectOutput.decided(
            choices, method, method(logprobs, unconditional, temperature), logprobs, unconditional,
            prompt_tokens=sum(o["meta_info"]["prompt_tokens"] for o in outs),
            cached_tokens=sum(o["meta_info"]["cached_tokens"] for o in outs),
        )

    def _client_options(self) -> dict[str, Any]:
        return {"headers": self._headers, "timeout": self._timeout, "limits": self._limits, "verify": self._verify}

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(**self._client_options())
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        """This event loop's client (created on first use; an AsyncClient must not be used from another loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop not in self._aclients:
                self._aclients[loop] = httpx.AsyncClient(**self._client_options())
            return self._aclients[loop]

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, on_delta: DeltaCallback | None = None
    ) -> Any:
        """One request with the sync client: the decoded JSON, or for method ``"STREAM"`` (an SSE POST) the
        GenOutput read by ``SseReader``."""
        url = self.base_url + path
        try:
            if method != "STREAM":
                return decode_json(self._sync_client().request(method, url, json=body))
            reader = SseReader(url, on_delta)
            with self._sync_client().stream("POST", url, json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise status_error(resp)
                for line in resp.iter_lines():
                    reader.feed(line)
            return GenOutput(reader.text, reader.meta)
        except httpx.HTTPError as e:
            raise connection_error(method, url, e) from e

    async def _arequest(
        self, method: str, path: str, body: dict[str, Any] | None = None, on_delta: DeltaCallback | None = None
    ) -> Any:
        """Async ``_request`` with this event loop's client."""
        url = self.base_url + path
        try:
            if method != "STREAM":
                return decode_json(await self._async_client().request(method, url, json=body))
            reader = SseReader(url, on_delta)
            async with self._async_client().stream("POST", url, json=body) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise status_error(resp)
                async for line in resp.aiter_lines():
                    reader.feed(line)
            return GenOutput(reader.text, reader.meta)
        except httpx.HTTPError as e:
            raise connection_error(method, url, e) from e

    def _run(self, steps: Steps, on_delta: DeltaCallback | None = None) -> Any:
        """Drive a request-step generator with the sync client (errors are thrown into it); its return value."""

        async def request(req: Request) -> Any:
            return self._request(*req, on_delta)

        return run_blocking(drive(steps, request, (BackendError,)))

    async def _arun(self, steps: Steps, on_delta: DeltaCallback | None = None) -> Any:
        """Drive a request-step generator with this event loop's async client."""

        async def request(req: Request) -> Any:
            return await self._arequest(*req, on_delta)

        return await drive(steps, request, (BackendError,))


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _adapter(prompt: PromptView) -> dict[str, Any]:
    """The LoRA field of a ``/generate`` body for ``prompt``'s adapter: ``{"lora_path": name}``, {} for the base
    model (so a server without LoRA support never sees the field)."""
    return {} if prompt.lora is None else {"lora_path": prompt.lora}


def _score_body(input_ids: list[list[int]], start: int) -> dict[str, Any]:
    """A batched prefill-only request returning input logprobs from prompt position ``start`` on."""
    return {"input_ids": input_ids, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
            "logprob_start_len": start}


def _slice_logprobs(out: dict[str, Any], skip: int) -> list[float]:
    entries = out["meta_info"]["input_token_logprobs"][skip:]
    if any(e[0] is None for e in entries):
        raise BackendError("select: the server returned no logprob for a choice token")
    return [float(e[0]) for e in entries]
