"""Typed messages between the runtime's parts (tokenizer manager → scheduler → detokenizer).

msgspec Structs, encoded as msgpack on the ZeroMQ sockets; the offline Engine passes them in-process. One class
per message; receivers dispatch on the class through a type → handler table. Outputs carry deltas (new token
ids since the last message), never whole sequences. This module imports neither torch nor numpy.
"""

from __future__ import annotations

from typing import Any

import msgspec


class TokenizedGenerateReq(msgspec.Struct, tag=True):
    """A new request: prompt token ids plus sampling parameters (a SamplingParams.to_dict())."""

    rid: str
    input_ids: list[int]
    sampling_params: dict[str, Any]
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False


class AbortReq(msgspec.Struct, tag=True):
    """Abort a queued or running request; everything it holds is freed."""

    rid: str


class FlushCacheReq(msgspec.Struct, tag=True):
    """Drop every cached prefix (only when no request is running or queued)."""


class ReqOutput(msgspec.Struct):
    """What one request produced in one scheduler step.

    new_token_ids: tokens generated this step (delta). finish_reason: None while running, else
    {"type": "stop"|"length"|"abort", "matched": int | str | None, ...}. Logprob lists hold the delta too:
    each entry is [logprob, token_id]; top entries are lists of [logprob, token_id] per position.
    """

    rid: str
    new_token_ids: list[int]
    finish_reason: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    input_token_logprobs: list[list[Any]] | None = None
    input_top_logprobs: list[list[list[Any]]] | None = None
    output_token_logprobs: list[list[Any]] | None = None
    output_top_logprobs: list[list[list[Any]]] | None = None


class BatchTokenOut(msgspec.Struct, tag=True):
    """All request outputs of one scheduler step."""

    outputs: list[ReqOutput]


SchedulerInput = TokenizedGenerateReq | AbortReq | FlushCacheReq
