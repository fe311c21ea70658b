"""How the ``OpenAI`` backend reads a completions / chat response (or a stream of chunks) into a ``GenOutput``:
the text, logprobs and finish reason of every choice (``n`` > 1 gives several), the usage, and the tool calls of a
gen with tools (``meta["tool_calls"]``: ``{"id", "name", "arguments"}`` dicts, assembled from stream deltas by
index; ``meta["content"]``; the text is ``radixgen.tools.calls_text``). ``RuntimeEndpoint`` reads its tool gens'
JSON bodies the same way (``as_attrs``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from radixgen.backends.base import DeltaCallback, GenOutput
from radixgen.sampling import SamplingParams
from radixgen.tools import calls_text

_FINISH = {"stop": "stop", "length": "length", "abort": "abort", "eos": "stop"}


def usage_of(usage: Any) -> dict[str, int]:
    """``prompt_tokens``, ``completion_tokens`` and ``cached_tokens`` of an OpenAI ``usage`` object (or None)."""
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0
    prompt, completion = getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached}


@dataclass
class _Choice:
    """One choice's text pieces, logprob entries (``[logprob, None, token]``) and finish reason."""

    parts: list[str] = field(default_factory=list)
    lps: list[list[Any]] = field(default_factory=list)
    tops: list[list[list[Any]]] = field(default_factory=list)
    finish: dict[str, Any] | None = None
    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def meta(self, with_logprobs: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"finish_reason": self.finish}
        if with_logprobs:
            out |= {"output_token_logprobs": self.lps, "output_top_logprobs": self.tops}
        return out

    def add_calls(self, tool_calls: Any) -> None:
        """Take in a message's ``tool_calls`` or a delta's (announced with id and name, then argument fragments)."""
        for k, tc in enumerate(tool_calls or ()):
            index = getattr(tc, "index", None)
            call = self.calls.setdefault(k if index is None else index, {"id": "", "name": "", "arguments": ""})
            fn = getattr(tc, "function", None)
            call["id"] = getattr(tc, "id", None) or call["id"]
            call["name"] = getattr(fn, "name", None) or call["name"]
            call["arguments"] += getattr(fn, "arguments", None) or ""

    def output(self, with_logprobs: bool, tools: bool) -> GenOutput:
        text = "".join(self.parts)
        meta = self.meta(with_logprobs)
        if not tools:
            return GenOutput(text, meta)
        calls = [c for _, c in sorted(self.calls.items())]
        return GenOutput(calls_text(text or None, calls), meta | {"tool_calls": calls, "content": text or None})


class Accumulator:
    """Builds a ``GenOutput`` from one response or from a stream of chunks (text, logprobs, usage, finish) of
    every choice; ``on_delta`` gets the text of choice 0 (a streamed gen has one sample)."""

    def __init__(self, chat: bool, params: SamplingParams) -> None:
        self.chat = chat
        self.want_lp = bool(params.return_logprob)
        self.tools = params.tools is not None
        self.top_n = params.top_logprobs_num or 0
        self.choices: dict[int, _Choice] = {}
        self.meta: dict[str, Any] = {}
        self.start = time.perf_counter()

    def absorb(self, obj: Any, on_delta: DeltaCallback | None = None) -> None:
        """Take in a response or a stream chunk; call ``on_delta`` with the new text of choice 0, if any."""
        if getattr(obj, "id", None):
            self.meta["id"] = obj.id
        if getattr(obj, "usage", None) is not None:
            self.meta.update(usage_of(obj.usage))
        for choice in obj.choices or ():
            acc = self.choices.setdefault(getattr(choice, "index", 0) or 0, _Choice())
            src = (getattr(choice, "delta", None) or getattr(choice, "message", None)) if self.chat else None
            text = (getattr(src, "content", None) if self.chat else choice.text) or ""
            acc.parts.append(text)
            acc.add_calls(getattr(src, "tool_calls", None))
            if getattr(choice, "logprobs", None) is not None and self.want_lp:
                self._add_logprobs(acc, choice.logprobs)
            reason = getattr(choice, "finish_reason", None)
            if reason is not None:
                acc.finish = {"type": _FINISH.get(reason, reason)}
                if getattr(choice, "matched_stop", None) is not None:  # this project's / SGLang's extension
                    acc.finish["matched"] = choice.matched_stop
            if text and on_delta is not None and acc is self.choices.get(0):
                on_delta(text)

    def _add_logprobs(self, acc: _Choice, lp: Any) -> None:
        if self.chat:
            for item in lp.content or []:
                acc.lps.append([item.logprob, None, item.token])
                acc.tops.append([[t.logprob, None, t.token] for t in (item.top_logprobs or [])][: self.top_n])
            return
        tops = lp.top_logprobs or [None] * len(lp.tokens or [])
        for tok, value, top in zip(lp.tokens or [], lp.token_logprobs or [], tops, strict=False):
            acc.lps.append([value, None, tok])
            ranked = sorted((top or {}).items(), key=lambda kv: -kv[1])[: self.top_n]
            acc.tops.append([[v, None, k] for k, v in ranked])

    def output(self) -> GenOutput:
        """The single output, or ``GenOutput.gathered`` of the choices (the response's usage covers them all)."""
        meta = {**usage_of(None), **self.meta, "e2e_latency": time.perf_counter() - self.start}
        outs = [c.output(self.want_lp, self.tools) for _, c in sorted(self.choices.items())]
        if len(outs) > 1:
            return GenOutput.gathered(outs, **meta)
        only = outs[0] if outs else GenOutput("", _Choice().meta(self.want_lp))
        return GenOutput(only.text, {**meta, **only.meta})


def as_attrs(obj: Any) -> Any:
    """A decoded JSON body with attribute access (dicts become namespaces, recursively), as the ``openai`` client's
    response objects read, so ``Accumulator`` takes either."""
    if isinstance(obj, dict):
        return SimpleNamespace(**{k: as_attrs(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [as_attrs(v) for v in obj]
    return obj
