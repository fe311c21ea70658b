"""POST /v1/chat/completions: messages rendered with a chat template → ``chat.completion`` objects / SSE chunks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from radixgen.runtime.openai_api.chat_templates import ChatTemplateError, render_chat
from radixgen.runtime.openai_api.errors import (
    OpenAIError,
    bad_request,
    error_body,
    from_validation_error,
    from_value_error,
)
from radixgen.runtime.openai_api.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogProbs,
    ChatResponseMessage,
    ChatTokenLogprob,
    TopLogprob,
    dump,
)
from radixgen.runtime.openai_api.serving import (
    ApiContext,
    ChoiceJob,
    TokenTexts,
    check_request,
    expand_choices,
    finish_reason,
    generate_all,
    native_sampling_params,
    new_id,
    reject_unsupported,
    safe_stream_text,
    sse,
    stream_all,
    usage_of,
)

_RENAMES = {"input_ids": "messages"}


def chat_logprobs(tt: TokenTexts, prompt_ids: list[int], res: dict[str, Any], out_from: int = 0) -> ChatLogProbs:
    """OpenAI chat-format logprobs of the output tokens from ``out_from`` on."""
    meta = res["meta_info"]
    full = prompt_ids + list(res.get("output_ids", []))
    outs = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    content = []
    for i in range(out_from, len(outs)):
        logprob, tid = outs[i][0], outs[i][1]
        pos = len(prompt_ids) + i
        ctx = full[max(0, pos - 4) : pos]
        alts = tops[i] if i < len(tops) else []
        names = tt.pieces(ctx, [tid, *(a[1] for a in alts)])
        top = [
            TopLogprob(token=name, logprob=a[0], bytes=list(name.encode("utf-8")))
            for name, a in zip(names[1:], alts, strict=True)
        ]
        content.append(
            ChatTokenLogprob(token=names[0], logprob=logprob, bytes=list(names[0].encode("utf-8")), top_logprobs=top)
        )
    return ChatLogProbs(content=content)


def _build(ctx: ApiContext, req: ChatCompletionRequest, rid: str) -> list[ChoiceJob]:
    tm = ctx.tm
    ctx.check_model(req.model)
    tool_choice = None if req.tool_choice in (None, "none") else req.tool_choice
    reject_unsupported(
        req, {"tools": req.tools or None, "tool_choice": tool_choice, "functions": req.functions or None}
    )
    if req.function_call is not None and req.function_call != "none":
        raise bad_request("function_call: not supported by this server yet", "function_call")
    if req.top_logprobs is not None and req.top_logprobs > 0 and not req.logprobs:
        raise bad_request("top_logprobs: requires logprobs to be true", "top_logprobs")
    messages = []
    for m in req.messages:
        d = m.model_dump(exclude_none=True)
        d.setdefault("content", "")
        messages.append(d)
    try:
        text = render_chat(
            tm.tokenizer,
            messages,
            ctx.chat_template,
            continue_final_message=req.continue_final_message,
            template_kwargs=req.chat_template_kwargs,
        )
    except ChatTemplateError as e:
        raise bad_request(f"messages: {e}", "messages") from None
    ids = tm.tokenizer.encode(text, add_special_tokens=False)  # the template writes any BOS itself
    if req.max_completion_tokens is not None:
        field, max_new = "max_completion_tokens", req.max_completion_tokens
    elif req.max_tokens is not None:
        field, max_new = "max_tokens", req.max_tokens
    else:
        field, max_new = "max_tokens", max(tm.context_len - len(ids), 0)
    extra_stop = ctx.chat_template.stop if ctx.chat_template is not None else ()
    sp = native_sampling_params(req, max_new, extra_stop)
    check_request(sp, ids, tm, "messages", field, min_tokens_requested=req.min_tokens)
    return expand_choices(
        [ids],
        [sp],
        req.n,
        req.rid or rid,
        return_logprob=req.logprobs,
        top_logprobs_num=(req.top_logprobs or 0) if req.logprobs else 0,
    )


async def create_chat_completion(ctx: ApiContext, body: Any, request: Request | None = None) -> Response:
    """Handle one /v1/chat/completions call (``body`` is the parsed JSON)."""
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise from_validation_error(e) from None
    rid = new_id("chatcmpl")
    jobs = _build(ctx, req, rid)
    if req.stream:
        return await _stream(ctx, req, jobs, rid)
    try:
        results = await generate_all(ctx.tm, jobs, request)
    except ValueError as e:
        raise from_value_error(e, _RENAMES) from None
    choices = []
    for job, res in zip(jobs, results, strict=True):
        reason, matched = finish_reason(res["meta_info"])
        lp = chat_logprobs(ctx.token_texts, job.input_ids, res) if req.logprobs else None
        choices.append(
            ChatCompletionChoice(
                index=job.index,
                message=ChatResponseMessage(content=res["text"]),
                logprobs=lp,
                finish_reason=reason,
                matched_stop=matched,
            )
        )
    usage = usage_of({job.index: res for job, res in zip(jobs, results, strict=True)}, jobs)
    return JSONResponse(dump(ChatCompletionResponse(id=rid, model=ctx.model_name, choices=choices, usage=usage)))


async def _stream(ctx: ApiContext, req: ChatCompletionRequest, jobs: list[ChoiceJob], rid: str) -> StreamingResponse:
    merged = stream_all(ctx.tm, jobs)
    try:  # the first update: input errors surface here, before any byte of the response is sent
        first = await anext(merged, None)
    except ValueError as e:
        await merged.aclose()
        raise from_value_error(e, _RENAMES) from None
    except BaseException:
        await merged.aclose()
        raise
    created = int(time.time())
    stop = jobs[0].sampling_params["stop"] if jobs else []
    sent_text = {j.index: 0 for j in jobs}
    sent_lp = {j.index: 0 for j in jobs}
    finals: dict[int, dict[str, Any]] = {}

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
        d: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": ctx.model_name}
        d["choices"] = choices
        if usage is not None:
            d["usage"] = usage.model_dump(mode="json")
        return sse(d)

    def choice(index: int, delta: dict[str, Any], lp: Any = None, reason: Any = None, matched: Any = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason, "matched_stop": matched}

    def update(job: ChoiceJob, res: dict[str, Any]) -> list[str]:
        meta = res["meta_info"]
        finished = meta.get("finish_reason") is not None
        reason, matched = finish_reason(meta)
        safe = safe_stream_text(res["text"], stop, finished)
        delta = safe[sent_text[job.index] :]
        sent_text[job.index] = max(sent_text[job.index], len(safe))
        lp = None
        if req.logprobs:
            lp = chat_logprobs(ctx.token_texts, job.input_ids, res, out_from=sent_lp[job.index])
            sent_lp[job.index] = len(meta.get("output_token_logprobs") or [])
        out = []
        if delta or (lp is not None and lp.content):
            lp_json = lp.model_dump(mode="json") if lp is not None else None
            out.append(chunk([choice(job.index, {"content": delta}, lp_json)]))
        if finished:
            finals[job.index] = res
            out.append(chunk([choice(job.index, {}, None, reason, matched)]))
        return out

    async def events() -> AsyncIterator[str]:
        try:
            for job in jobs:
                yield chunk([choice(job.index, {"role": "assistant", "content": ""})])
            item = first
            while item is not None:
                for out in update(*item):
                    yield out
                item = await anext(merged, None)
            if req.stream_options is not None and req.stream_options.include_usage:
                yield chunk([], usage_of(finals, jobs))
        except OpenAIError as e:
            yield sse(e.body())
        except ValueError as e:
            yield sse(from_value_error(e, _RENAMES).body())
        except Exception as e:  # the runtime failed mid-stream (503 server down, ...): an error event
            yield sse(error_body(e)[1])
        finally:
            await merged.aclose()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
