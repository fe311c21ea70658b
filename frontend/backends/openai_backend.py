"""``OpenAI``: a DSL backend for any OpenAI-compatible endpoint (OpenAI, this project's server, vLLM, SGLang).

Parameters map through ``SamplingParams.to_openai()`` (regex/ebnf/top_k/... in ``extra_body``, understood by this
project's server, vLLM and SGLang). There is no explicit prefill: ``cache_prefix`` is a no-op and servers cache
prefixes on their own (reported as ``cached_tokens``). Errors: a 4xx the caller caused raises
``BackendRequestError`` with the server's message; connection failures, timeouts, 408/429 after the client's
retries, 5xx and error events in a stream raise ``BackendError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Generator, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any

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
from radixgen.backends.openai_output import Accumulator, usage_of
from radixgen.choices import ChoicesMethod
from radixgen.sampling import SamplingParams
from radixgen.sansio import drive, run_blocking

if TYPE_CHECKING:
    from radixgen.chat_template import ChatTemplate

_CHAT_SELECT = "select needs prompt logprobs, which chat completions do not return; use is_chat_model=False or "


class OpenAI(Backend):
    """A backend for an OpenAI-compatible HTTP API, using the official ``openai`` client.

    Chat mode (``is_chat_model=True``): each ``gen`` is one ``/v1/chat/completions`` call with the finished turns
    as ``messages``; the gen must be the first thing in an assistant turn and no text may lie outside role blocks.
    ``select`` is refused (chat completions return no prompt logprobs). Completions mode: each ``gen`` sends
    ``prompt.text`` to ``/v1/completions``; ``select`` scores choices from the prompt logprobs of ``echo``.

    LoRA: a call under an adapter (``PromptView.lora``) sends the adapter's name as ``model`` (how vLLM and this
    project's server pick an adapter); an adapter the server does not serve is its 404 on ``model``.

    Args:
        model: the model name sent with every request (of a call without an adapter).
        base_url: the API root (e.g. ``http://127.0.0.1:30000/v1``); None = OpenAI's (or env ``OPENAI_BASE_URL``).
        api_key: defaults to env ``OPENAI_API_KEY``, else ``"EMPTY"`` when ``base_url`` is given.
        is_chat_model: chat mode (``/v1/chat/completions``) or completions mode (``/v1/completions``).
        chat_template: name or Jinja source of the template roles are rendered with (see ``chat_template()``).
        timeout: per-request timeout in seconds. max_retries: the client's retries (connection errors, 408, 429, 5xx).

    Raises ImportError without the ``openai`` package, BackendRequestError when no api key can be found.
    """

    supports_lora = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        is_chat_model: bool = True,
        chat_template: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 2,
    ) -> None:
        import openai  # an optional dependency: imported here so that radixgen imports without it

        self._openai = openai
        self.model = model
        self.is_chat_model = is_chat_model
        key = api_key or os.environ.get("OPENAI_API_KEY") or ("EMPTY" if base_url else None)
        if key is None:
            raise BackendRequestError("api_key: not given and OPENAI_API_KEY is not set")
        self._kw: dict[str, Any] = dict(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        self._client = openai.OpenAI(**self._kw)
        self._aclients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}
        self._lock = threading.Lock()
        self._template_name = chat_template
        self._template: ChatTemplate | None = None
        self._echo_max_tokens = 0  # becomes 1 if the server refuses max_tokens=0 with echo

    def chat_template(self) -> ChatTemplate | None:
        """The template roles are rendered with. Chat mode: ``chat_template`` or ``"chatml"``, for ``s.text()`` only
        (requests carry ``messages``; the server applies its own template). Completions mode: the named template,
        or None when none was given (then roles cannot be used)."""
        name = self._template_name or ("chatml" if self.is_chat_model else None)
        if name is None:
            return None
        if self._template is None:
            from radixgen.chat_template import get_chat_template

            self._template = get_chat_template(name)
        return self._template

    def _aclient(self) -> Any:
        """The ``AsyncOpenAI`` of the running event loop (one per loop: its connections belong to that loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for key, (lp, _) in list(self._aclients.items()):
                if lp.is_closed():  # its loop is gone; its connections cannot be closed any more
                    del self._aclients[key]
            entry = self._aclients.get(id(loop))
            if entry is None or entry[0] is not loop:
                entry = (loop, self._openai.AsyncOpenAI(**self._kw))
                self._aclients[id(loop)] = entry
            return entry[1]

    def close(self) -> None:
        """Close the sync client and drop the async ones (``aclose`` in a loop also closes that loop's connections)."""
        self._client.close()
        with self._lock:
            self._aclients.clear()

    async def aclose(self) -> None:
        """Close the running loop's async client, then ``close()``."""
        with self._lock:
            entry = self._aclients.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].close()
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate ``openai`` exceptions into ``BackendRequestError`` (caller's 4xx) / ``BackendError``."""
        oa = self._openai
        try:
            yield
        except oa.APIStatusError as e:
            status, msg = e.status_code, _server_message(e)
            if 400 <= status < 500 and status not in (408, 429):
                raise BackendRequestError(f"HTTP {status}: {msg}") from e
            raise BackendError(f"HTTP {status}: {msg}") from e
        except oa.APIConnectionError as e:  # includes APITimeoutError
            raise BackendError(f"cannot reach {self._client.base_url}: {e}") from e
        except oa.APIError as e:  # an error event in a stream
            code = e.body.get("code") if isinstance(e.body, dict) else None
            cls = BackendRequestError if isinstance(code, int) and 400 <= code < 500 else BackendError
            raise cls(_server_message(e)) from e

    def _model(self, prompt: PromptView) -> str:
        """The ``model`` of a request of this call: its LoRA adapter's name, else the backend's model."""
        return self.model if prompt.lora is None else prompt.lora

    def _gen_kwargs(self, prompt: PromptView, params: SamplingParams, stream: bool) -> dict[str, Any]:
        """The ``create(...)`` keyword arguments of one gen. Raises BackendRequestError for a chat-mode misuse and
        for ``stop_regex`` (the OpenAI API has no such parameter)."""
        if params.stop_regex is not None:
            raise BackendRequestError(
                "stop_regex: the OpenAI backend cannot stop on a regular expression (the OpenAI API has no such "
                "parameter); use stop=... or a RuntimeEndpoint / Runtime backend"
            )
        kw = params.to_openai()
        kw["model"] = self._model(prompt)
        top_n = params.top_logprobs_num or 0
        if self.is_chat_model:
            check_chat_prompt(prompt)
            kw["messages"] = [dict(m) for m in prompt.messages]
            if params.return_logprob:
                kw.update(logprobs=True, top_logprobs=top_n)
        else:
            if params.tools is not None:
                raise BackendRequestError("tools: a gen with tools is a chat completion; use is_chat_model=True")
            kw["prompt"] = prompt.text
            if "response_format" in kw:  # the SDK's completions.create has no such argument
                kw["extra_body"] = {**kw.get("extra_body", {}), "response_format": kw.pop("response_format")}
            if params.return_logprob:
                kw["logprobs"] = max(1, top_n)
        if stream:
            kw.update(stream=True, stream_options={"include_usage": True})
        return kw

    def generate(self, prompt: PromptView, params: SamplingParams, on_delta: DeltaCallback | None = None) -> GenOutput:
        """Generate with one chat or completions request (streamed when ``on_delta`` is given). Raises
        BackendRequestError for a chat-mode misuse (see ``OpenAI``) or a 4xx, BackendError for other failures."""
        kw = self._gen_kwargs(prompt, params, on_delta is not None)
        api = self._client.chat.completions if self.is_chat_model else self._client.completions
        acc = Accumulator(self.is_chat_model, params)
        with self._errors():
            if on_delta is None:
                acc.absorb(api.create(**kw))
            else:
                with api.create(**kw) as stream:  # closed even if on_delta raises
                    for chunk in stream:
                        acc.absorb(chunk, on_delta)
        return acc.output()

    async def agenerate(
        self, prompt: PromptView, params: SamplingParams, on_delta: DeltaCallback | None = None
    ) -> GenOutput:
        """Async ``generate`` (same errors)."""
        kw = self._gen_kwargs(prompt, params, on_delta is not None)
        client = self._aclient()
        api = client.chat.completions if self.is_chat_model else client.completions
        acc = Accumulator(self.is_chat_model, params)
        with self._errors():
            if on_delta is None:
                acc.absorb(await api.create(**kw))
            else:
                async with await api.create(**kw) as stream:
                    async for chunk in stream:
                        acc.absorb(chunk, on_delta)
        return acc.output()

    def _select_steps(
        self, prompt: PromptView, choices: tuple[str, ...], method: ChoicesMethod, temperature: float
    ) -> Generator[dict[str, Any], Any, SelectOutput]:
        """One echo completions request scoring every choice: yields its ``create(...)`` keyword arguments (prompts
        ``[prompt + choice ...] (+ [choice ...] unconditional)``), receives the response (or has the error thrown
        in) and decides. Sent again with ``max_tokens=1`` when the server refuses 0 (vLLM)."""
        start = time.perf_counter()
        if self.is_chat_model:
            raise BackendRequestError(_CHAT_SELECT + "rg.gen(..., regex=...)")
        if not choices or any(not c for c in choices):
            raise BackendRequestError("choices: must be a non-empty list of non-empty strings")
        prompts = [prompt.text + c for c in choices]
        if method.requires_unconditional_logprobs:
            prompts += list(choices)
        kw = dict(model=self._model(prompt), prompt=prompts, echo=True, logprobs=1)
        for retry in (False, True):
            try:
                resp = yield {**kw, "max_tokens": self._echo_max_tokens}
                return _decide(resp, prompt.text, choices, method, temperature, start)
            except BackendRequestError as e:  # max_tokens=0 refused (vLLM): use 1, ignore the generated token
                if retry or self._echo_max_tokens or "max_tokens" not in str(e):
                    raise
                self._echo_max_tokens = 1
        raise AssertionError("unreachable")

    def select(
        self, prompt: PromptView, choices: tuple[str, ...], method: ChoicesMethod, temperature: float = 0.0
    ) -> SelectOutput:
        """Score each choice by the logprobs of its tokens after ``prompt.text`` and decide with ``method``: one
        ``echo`` completions request (``max_tokens=0``, or 1 with the generated token ignored where 0 is refused)
        for all choices. A choice's tokens are the echoed tokens ending after ``len(prompt.text)``: a token
        straddling the prompt/choice boundary counts as a choice token. ``unconditional_likelihood_normalized`` also
        scores each choice alone after the server's BOS. Raises BackendRequestError in chat mode, for empty choices,
        an unconditional score the API cannot give (no BOS, or a choice tokenized differently alone) or a 4xx;
        BackendError for other failures."""

        async def create(kw: dict[str, Any]) -> Any:
            with self._errors():
                return self._client.completions.create(**kw)

        return run_blocking(drive(self._select_steps(prompt, choices, method, temperature), create, (BackendError,)))

    async def aselect(
        self, prompt: PromptView, choices: tuple[str, ...], method: ChoicesMethod, temperature: float = 0.0
    ) -> SelectOutput:
        """Async ``select`` (same errors)."""

        async def create(kw: dict[str, Any]) -> Any:
            with self._errors():
                return await self._aclient().completions.create(**kw)

        return await drive(self._select_steps(prompt, choices, method, temperature), create, (BackendError,))

    def cache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        """No-op returning {}: the OpenAI API has no explicit prefill; servers cache prefixes on their own."""
        return {}

    async def acache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        """Async ``cache_prefix`` (a no-op returning {})."""
        return {}


def _server_message(e: Any) -> str:
    body = getattr(e, "body", None)
    return body["message"] if isinstance(body, dict) and isinstance(body.get("message"), str) else str(e.message)


def _token_spans(tokens: list[str], offsets: list[int], text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each echoed token in ``text``: from its ``text_offset`` to the next one's (a BOS spans
    nothing) when the offsets fit ``text``, else (e.g. a tokenizer's dummy-prefix space counted in the token texts,
    which shifts the offsets) measured back from the end of ``text``."""
    if offsets and len(offsets) == len(tokens) and offsets[-1] + len(tokens[-1]) == len(text):
        return list(zip(offsets, [*offsets[1:], len(text)], strict=True))
    after = list(accumulate((len(t) for t in reversed(tokens)), initial=0))[-2::-1]  # chars of later tokens
    return [(len(text) - a - len(tok), len(text) - a) for tok, a in zip(tokens, after, strict=True)]


def _choice_logprobs(item: Any, boundary: int, sent: str, what: str) -> list[float]:
    """Logprobs of the echoed tokens that end after ``boundary`` and start before ``len(sent)`` (a generated
    token, when ``max_tokens=1`` had to be used, starts at or after it)."""
    lp = item.logprobs
    if lp is None or not lp.tokens:
        raise BackendError("select: the server returned no prompt logprobs for an echo request")
    spans = _token_spans(list(lp.tokens), list(lp.text_offset or []), item.text)
    out = []
    for (start, end), value in zip(spans, lp.token_logprobs, strict=True):
        if end > boundary and start < len(sent):
            if value is None:
                raise BackendRequestError(
                    f"select: {what} has no logprob for its first token: the server adds no BOS token to "
                    "completions prompts, so a leading token cannot be scored"
                )
            out.append(float(value))
    return out


def _decide(
    resp: Any, text: str, choices: tuple[str, ...], method: ChoicesMethod, temp: float, t0: float
) -> SelectOutput:
    """Extract each choice's token logprobs from the echo response and decide with ``method``."""
    items = sorted(resp.choices, key=lambda c: c.index)
    n = len(choices)
    if len(items) != n * (2 if method.requires_unconditional_logprobs else 1):
        raise BackendError(f"select: expected one echo result per prompt, got {len(items)}")
    cond = [_choice_logprobs(items[i], len(text), text + c, "the prompt") for i, c in enumerate(choices)]
    uncond = None
    if method.requires_unconditional_logprobs:
        uncond = [_choice_logprobs(items[n + i], 0, c, f"choice {c!r} alone") for i, c in enumerate(choices)]
        for c, a, b in zip(choices, cond, uncond, strict=True):
            if len(a) != len(b):
                raise BackendRequestError(
                    f"select: choice {c!r} is {len(a)} token(s) after the prompt but {len(b)} alone, so "
                    f"{method.name} cannot compare them token by token; use another choices_method"
                )
    try:
        decision = method(cond, uncond, temp)
    except ValueError as e:
        raise BackendRequestError(f"select: {e}") from e
    usage = usage_of(resp.usage)
    return SelectOutput.decided(
        choices, method, decision, cond, uncond, prompt_tokens=usage["prompt_tokens"],
        cached_tokens=usage["cached_tokens"], e2e_latency=time.perf_counter() - t0,
    )
