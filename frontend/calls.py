"""The backend calls an executor's instruction generator yields, and how each driver performs them."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from radixgen.backends.base import Backend, DeltaCallback, PromptView
from radixgen.choices import ChoicesMethod
from radixgen.sampling import SamplingParams


@dataclass
class GenCall:
    prompt: PromptView
    params: SamplingParams
    on_delta: DeltaCallback | None


@dataclass
class SelectCall:
    prompt: PromptView
    choices: tuple[str, ...]
    method: ChoicesMethod
    temperature: float


@dataclass
class PrefixCall:
    """Prefill ``prompt`` (max_new_tokens=0) so fork branches hit the prefix cache."""

    prompt: PromptView


@dataclass
class TemplateCall:
    """Fetch the backend's chat template (may be an HTTP request the first time)."""


@dataclass
class WaitCall:
    """Wait for another executor's future (a fork snapshot, a branch's end)."""

    future: Future[Any]


Call = GenCall | SelectCall | PrefixCall | TemplateCall | WaitCall


def perform_sync(call: Call, backend: Backend) -> Any:
    """Run ``call`` on the current (worker) thread, blocking."""
    if isinstance(call, GenCall):
        return backend.generate(call.prompt, call.params, call.on_delta)
    if isinstance(call, SelectCall):
        return backend.select(call.prompt, call.choices, call.method, call.temperature)
    if isinstance(call, PrefixCall):
        return backend.cache_prefix(call.prompt)
    if isinstance(call, TemplateCall):
        return backend.chat_template()
    return call.future.result()


async def perform_async(call: Call, backend: Backend) -> Any:
    """Run ``call`` on the event loop (the one sync method, ``chat_template``, goes to a worker thread)."""
    if isinstance(call, GenCall):
        return await backend.agenerate(call.prompt, call.params, call.on_delta)
    if isinstance(call, SelectCall):
        return await backend.aselect(call.prompt, call.choices, call.method, call.temperature)
    if isinstance(call, PrefixCall):
        return await backend.acache_prefix(call.prompt)
    if isinstance(call, TemplateCall):
        return await asyncio.to_thread(backend.chat_template)
    return await asyncio.wrap_future(call.future)
