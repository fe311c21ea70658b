"""POST /v1/chat/completions: messages rendered with a chat template → ``chat.completion`` objects / SSE chunks.

Tools reach the template's own ``tools`` argument; calls, reasoning and content are read back out of each choice's
output by ``chat_output`` (the request's grammar comes from ``tools.constrain``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from radixgen.runtime.api_keys import owner_of
from radixgen.runtime.generate_request import check_prompt_chars
from radixgen.runtime.http_common import bad_request, from_validation_error, http_error, is_large, off_loop_if
from radixgen.runtime.openai_api.chat_output import ChoiceStream, final_message
from radixgen.runtime.openai_api.chat_templates import ChatTemplateError, render_chat
from radixgen.runtime.openai_api.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogProbs,
    ChatTokenLogprob,
    TopLogprob,
    dump,
)
from radixgen.runtime.openai_api.serving import (
    ApiContext,
    OpenAIRun,
    TokenTexts,
    finish_reason,
    new_id,
    openai_renames,
    reject_unsupported,
    sampling_params,
    usage_of,
)
from radixgen.runtime.openai_api.tools import ToolPlan, constrain, plan_tools, reasoning_of, template_messages


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


def _build(ctx: ApiContext, req: ChatCompletionRequest, rid: str) -> tuple[OpenAIRun, ToolPlan]:
    tm = ctx.tm
    lora_path = ctx.check_model(req.model)
    reject_unsupported(req)
    if req.top_logprobs is not None and req.top_logprobs > 0 and not req.logprobs:
        raise bad_request("top_logprobs: requires logprobs to be true", "top_logprobs")
    plan = plan_tools(req, ctx.grammar)
    messages = template_messages(req)
    kwargs = dict(req.chat_template_kwargs or {})
    if plan.template_tools is not None:
        kwargs["tools"] = plan.template_tools
    try:
        text = render_chat(
            tm.tokenizer,
            messages,
            ctx.chat_template,
            continue_final_message=req.continue_final_message,
            template_kwargs=kwargs,
        )
    except ChatTemplateError as e:
        raise bad_request(f"messages: {e}", "messages") from None
    check_prompt_chars(text, "messages", getattr(tm, "max_prompt_chars", None))
    ids = tm.tokenizer.encode(text, add_special_tokens=False)  # the template writes any BOS itself
    if req.max_completion_tokens is not None:
        field, max_new = "max_completion_tokens", req.max_completion_tokens
    elif req.max_tokens is not None:
        field, max_new = "max_tokens", req.max_tokens
    else:
        field, max_new = "max_tokens", max(tm.context_len - len(ids), 0)
    extra_stop = ctx.chat_template.stop if ctx.chat_template is not None else ()
    renames = openai_renames("messages", field)
    try:
        params = constrain(sampling_params(req, max_new, extra_stop), plan, req, ctx.grammar)
    except ValueError as e:
        raise http_error(e, renames) from None
    logprobs = {"return_logprob": req.logprobs, "top_logprobs_num": (req.top_logprobs or 0) if req.logprobs else 0}
    return OpenAIRun([ids], [params], req.rid or rid, renames, logprobs, lora_path=lora_path), plan


async def create_chat_completion(ctx: ApiContext, body: Any, request: Request | None = None) -> Response:
    """Handle one /v1/chat/completions call (``body`` is the parsed JSON)."""
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise from_validation_error(e) from None
    rid = new_id("chatcmpl")
    # off the event loop when large, or when tool schemas are checked (the grammar layer's first import is slow)
    run, plan = await off_loop_if(is_large(request) or bool(req.tools), _build, ctx, req, rid)
    run.owner = owner_of(request)
    fmt = reasoning_of(req, ctx.grammar)
    if req.stream:
        return await _stream(ctx, req, run, rid, plan)
    results = await run.results(ctx.tm, request)
    choices = []
    for index, res in enumerate(results):
        reason, matched = finish_reason(res["meta_info"])
        lp = chat_logprobs(ctx.token_texts, run.prompts[run.prompt_index(index)], res) if req.logprobs else None
        message, reason = final_message(res["text"], reason, fmt, plan)
        choices.append(
            ChatCompletionChoice(index=index, message=message, logprobs=lp, finish_reason=reason, matched_stop=matched)
        )
    usage = usage_of(dict(enumerate(results)), run)
    return JSONResponse(dump(ChatCompletionResponse(id=rid, model=ctx.model_name, choices=choices, usage=usage)))


async def _stream(
    ctx: ApiContext, req: ChatCompletionRequest, run: OpenAIRun, rid: str, plan: ToolPlan
) -> StreamingResponse:
    sent_lp = dict.fromkeys(range(run.num_choices), 0)
    fmt = reasoning_of(req, ctx.grammar)
    outputs = {i: ChoiceStream(fmt, plan, req.stream_reasoning) for i in range(run.num_choices)}

    def choice(index: int, delta: dict[str, Any], lp: Any = None, reason: Any = None, matched: Any = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason, "matched_stop": matched}

    def choices_of(index: int, res: dict[str, Any]) -> list[dict[str, Any]]:
        meta = res["meta_info"]
        reason, matched = finish_reason(meta)
        # the text is append-only (the detokenizer holds back text that may become a stop string)
        deltas, reason = outputs[index].deltas(res["text"], reason)
        lp = None
        if req.logprobs:
            lp = chat_logprobs(ctx.token_texts, run.prompts[run.prompt_index(index)], res, out_from=sent_lp[index])
            sent_lp[index] = len(meta.get("output_token_logprobs") or [])
        out = []
        if lp is not None and lp.content and not deltas:
            deltas = [{"content": ""}]
        for k, delta in enumerate(deltas):
            lp_json = lp.model_dump(mode="json") if lp is not None and k == 0 else None
            out.append(choice(index, delta, lp_json))
        if reason is not None:
            out.append(choice(index, {}, None, reason, matched))
        return out

    usage = req.stream_options is not None and req.stream_options.include_usage
    opening = [choice(i, {"role": "assistant", "content": ""}) for i in range(run.num_choices)]
    return await run.stream_response(ctx.tm, "chat.completion.chunk", ctx.model_name, rid, usage, choices_of, opening)
