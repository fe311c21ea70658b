"""The interface every DSL backend implements, sync and async, and the values it returns.

The interpreter hands a backend a ``PromptView`` (the accumulated text, plus the same conversation as
OpenAI-style messages for chat-only APIs) and a ``SamplingParams``; it gets back a ``GenOutput`` or a
``SelectOutput``. Backends raise ``BackendError`` (or its subclass ``BackendRequestError`` for a 4xx the caller
caused: bad constraint, bad parameter) with the server's message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from radixgen.choices import ChoicesDecision, ChoicesMethod
from radixgen.sampling import SamplingParams

if TYPE_CHECKING:
    from radixgen.chat_template import ChatTemplate

DeltaCallback = Callable[[str], None]
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "cached_tokens")


def add_usage(usage: dict[str, int], meta: dict[str, Any], calls: int = 1) -> None:
    """Add a call's token counts (the ``USAGE_KEYS`` of its meta info that are ints) and ``calls`` to ``usage``."""
    for key in USAGE_KEYS:
        value = meta.get(key)
        if isinstance(value, int):
            usage[key] += value
    usage["calls"] += calls


class BackendError(RuntimeError):
    """A backend call failed (connection, server error, malformed response)."""


class BackendRequestError(BackendError, ValueError):
    """The server rejected the request (HTTP 4xx): the message names the offending field."""


@dataclass(frozen=True)
class PromptView:
    """What a backend call sees of a program state.

    Attributes:
        text: the whole accumulated prompt text (roles already rendered with the chat template).
        messages: the finished turns as OpenAI-style ``{"role", "content"}`` dicts.
        open_role: the role whose block is open at the call (None outside any role).
        open_content: the text inside the open role so far (what an assistant turn has before the gen).
        outside_text: text added outside any role block (a chat-only API cannot send it and must refuse).
        lora: the LoRA adapter every request of the call runs under (None: the base model): the call's own
            ``lora=`` or the program's default. Part of the prompt because the server caches KV per adapter: the
            same text under another adapter is another prefix. Backends that can send it set ``supports_lora``.
    """

    text: str
    messages: tuple[dict[str, str], ...] = ()
    open_role: str | None = None
    open_content: str = ""
    outside_text: str = ""
    lora: str | None = None


@dataclass
class GenOutput:
    """A finished generation: its text and meta info (``samples``: every sample of an ``n`` > 1 gen).

    ``meta`` keys (native API names): ``prompt_tokens``, ``completion_tokens``, ``cached_tokens`` (tokens),
    ``finish_reason`` (``{"type": "stop"|"length"|"abort", ...}`` or None), ``e2e_latency`` (seconds), and with
    ``return_logprob`` the ``output_token_logprobs`` / ``output_top_logprobs`` lists
    (``[logprob, token_id, text]`` entries). For n > 1 see ``gathered``.
    """

    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    samples: list[GenOutput] = field(default_factory=list)

    @classmethod
    def gathered(cls, samples: list[GenOutput], **meta: Any) -> GenOutput:
        """The output of an ``n`` > 1 gen from its ``samples``: the text is the first sample's (what the state
        continues with, as in SGLang); meta ``n``, ``samples`` (each sample's meta plus its ``text``), the usage
        keys summed over the samples, then ``meta`` (e.g. a response's own usage) over them."""
        usage = {k: sum(s.meta.get(k) or 0 for s in samples) for k in USAGE_KEYS if any(k in s.meta for s in samples)}
        info = {**usage, **meta, "n": len(samples), "samples": [{**s.meta, "text": s.text} for s in samples]}
        return cls(samples[0].text, info, list(samples))


@dataclass
class SelectOutput:
    """A decided select: the chosen string, its index, the per-choice scores and meta info.

    ``meta`` holds at least ``scores``, ``choices``, ``choices_method``, ``input_token_logprobs`` (one list of
    floats per choice), ``prompt_tokens`` and ``cached_tokens`` (tokens, summed over the choice requests).
    """

    choice: str
    index: int
    scores: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def decided(
        cls, choices: tuple[str, ...], method: ChoicesMethod, decision: ChoicesDecision, logprobs: list[list[float]],
        unconditional: list[list[float]] | None, **meta: Any,
    ) -> SelectOutput:
        """``method``'s ``decision`` from the choices' token ``logprobs`` (and ``unconditional`` ones); its meta: the
        decision's, the keys above, ``normalized_prompt_logprobs``, ``meta``, ``unconditional_token_logprobs``."""
        out = {**decision.meta, "scores": decision.scores, "choices": list(choices), "choices_method": method.name}
        out |= {"input_token_logprobs": logprobs, "normalized_prompt_logprobs": [sum(lp) / len(lp) for lp in logprobs]}
        if unconditional is not None:
            meta["unconditional_token_logprobs"] = unconditional
        return cls(choices[decision.index], decision.index, decision.scores, out | meta)


class Backend(ABC):
    """A model endpoint the interpreter calls. Implementations must be safe to call from many threads at once
    (sync methods) and from one event loop (async methods).

    ``supports_lora``: whether the backend sends ``PromptView.lora`` with every request of a call (generate, select
    and cache_prefix); the interpreter refuses an adapter for a backend that does not (``check_lora``).
    """

    supports_lora: bool = False

    def check_lora(self, lora: str | None) -> None:
        """Refuse a call under LoRA adapter ``lora`` on a backend that would ignore it.

        Raises:
            BackendRequestError: ``lora`` is set and ``supports_lora`` is False (the message names ``lora``).
        """
        if lora is not None and not self.supports_lora:
            raise BackendRequestError(
                f"lora: {type(self).__name__} cannot run a call under a LoRA adapter ({lora!r}); use a "
                "RuntimeEndpoint / Runtime (native lora_path) or an OpenAI backend (model = the adapter name)"
            )

    @abstractmethod
    def chat_template(self) -> ChatTemplate | None:
        """The template roles are rendered with, or None when the backend has none (roles then raise)."""

    @abstractmethod
    def generate(
        self, prompt: PromptView, params: SamplingParams, on_delta: DeltaCallback | None = None
    ) -> GenOutput:
        """Generate a continuation of ``prompt``; with ``on_delta`` stream, calling it with each new piece of text
        (the pieces concatenate to ``GenOutput.text``). ``params.n`` > 1: ``GenOutput.gathered`` of the samples
        (the interpreter streams only single samples, so ``on_delta`` is then None)."""

    @abstractmethod
    async def agenerate(
        self, prompt: PromptView, params: SamplingParams, on_delta: DeltaCallback | None = None
    ) -> GenOutput:
        """Async ``generate``."""

    @abstractmethod
    def select(
        self, prompt: PromptView, choices: tuple[str, ...], method: ChoicesMethod, temperature: float = 0.0
    ) -> SelectOutput:
        """Score every choice as a continuation of ``prompt`` and decide with ``method``."""

    @abstractmethod
    async def aselect(
        self, prompt: PromptView, choices: tuple[str, ...], method: ChoicesMethod, temperature: float = 0.0
    ) -> SelectOutput:
        """Async ``select``."""

    @abstractmethod
    def cache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        """Prefill ``prompt`` with no output (max_new_tokens=0) so later calls sharing it hit the prefix cache;
        returns the meta info (``prompt_tokens``, ``cached_tokens``). A backend without a prefix cache returns {}.
        """

    @abstractmethod
    async def acache_prefix(self, prompt: PromptView) -> dict[str, Any]:
        """Async ``cache_prefix``."""

    def get_server_info(self) -> dict[str, Any] | None:
        """The server's settings and statistics (SGLang's ``backend.get_server_info()``); None when the backend
        cannot tell (the default)."""
        return None

    def flush_cache(self) -> Any:
        """Empty the server's prefix cache (SGLang's ``backend.flush_cache()``); a no-op returning None by default."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections / processes. Idempotent."""

    async def aclose(self) -> None:
        """Async ``close``."""
        self.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_chat_prompt(prompt: PromptView) -> None:
    """Chat completions can only continue a conversation with a fresh assistant turn.

    Raises:
        BackendRequestError: the gen is not the first thing of an assistant turn after other turns, or text lies
            outside role blocks.
    """
    if prompt.outside_text:
        where = f"text outside any role block ({prompt.outside_text[:40]!r}) cannot be sent as a message"
    elif prompt.open_role != "assistant":
        where = f"gen is {f'inside a {prompt.open_role!r} block' if prompt.open_role else 'outside any role block'}"
    elif prompt.open_content:
        where = f"gen follows text already in the assistant turn ({prompt.open_content[:40]!r})"
    elif not prompt.messages:
        where = "there are no messages before the assistant turn"
    else:
        return
    raise BackendRequestError(
        f"chat model: {where}; a gen must be the first thing in `with s.assistant():`, after system/user turns, "
        "with all text inside role blocks (or use is_chat_model=False with a chat_template)"
    )
