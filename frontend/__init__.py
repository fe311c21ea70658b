"""radixgen: structured-generation LLM programs on a radix-cache serving runtime.

    import radixgen as rg

    @rg.function
    def qa(s, question):
        s += rg.user(question)
        s += rg.assistant(rg.gen("answer", max_tokens=64))

    with rg.Runtime("../shared/models/stories260K", chat_template="chatml") as runtime:
        state = qa.run(question="Who is Lily?", backend=runtime)
        print(state["answer"])

The language is SGLang's frontend language, name for name: ``import radixgen as sgl`` runs SGLang programs
(``gen`` / ``gen_int`` / ``gen_string`` / ``select``, roles and ``*_begin`` / ``*_end`` markers, ``fork``,
``separate_reasoning``, ``run`` / ``run_batch``, ``Runtime`` / ``RuntimeEndpoint`` / ``OpenAI``,
``set_default_backend`` / ``flush_cache`` / ``get_server_info``). ``image`` / ``video`` exist but raise: the
server serves text-only models.

The runtime lives in ``radixgen.runtime`` (``radixgen.runtime.Engine`` is the offline entry point).
"""

from typing import Any

from radixgen.choices import (
    ChoicesMethod,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from radixgen.ir import (
    assistant,
    assistant_begin,
    assistant_end,
    gen,
    gen_int,
    gen_string,
    image,
    select,
    separate_reasoning,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from radixgen.program import Program, flush_cache, function, get_server_info, set_default_backend
from radixgen.sampling import SamplingParams
from radixgen.state import ProgramState, ProgramStateGroup
from radixgen.tools import ToolCall, ToolCalls
from radixgen.typed import TypedOutputError

__version__ = "0.1.0"

_LAZY = {
    "RuntimeEndpoint": "radixgen.backends.runtime_endpoint",
    "Runtime": "radixgen.backends.runtime",
    "OpenAI": "radixgen.backends.openai_backend",
    "Backend": "radixgen.backends.base",
    "BackendError": "radixgen.backends.base",
    "BackendRequestError": "radixgen.backends.base",
}


def __getattr__(name: str) -> Any:
    """Backends are imported on first use (httpx / openai load only when needed)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'radixgen' has no attribute {name!r}")


__all__ = [
    "Backend",
    "BackendError",
    "BackendRequestError",
    "ChoicesMethod",
    "OpenAI",
    "Program",
    "ProgramState",
    "ProgramStateGroup",
    "Runtime",
    "RuntimeEndpoint",
    "SamplingParams",
    "ToolCall",
    "ToolCalls",
    "TypedOutputError",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_server_info",
    "greedy_token_selection",
    "image",
    "select",
    "separate_reasoning",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
    "video",
]
