"""POST /v1/completions: prompts (text or token ids, one or many) → OpenAI ``text_completion`` objects / SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from radixgen.runtime.openai_api.errors import (
    OpenAIError,
    bad_request,
    error_body,
    from_validation_error,
    from_value_error,
)
from radixgen.runtime.openai_api.protocol import (
    CompletionChoice,
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
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

_RENAMES = {"input_ids": "prompt"}


def _prompts(req: CompletionRequest, tokenizer: Any) -> tuple[list[list[int]], list[str]]:
    """Token ids and text (for echo) of every prompt."""
    p = req.prompt
    if isinstance(p, str):
        texts: list[str] = [p]
    elif all(isinstance(x, str) for x in p):
        texts = list(p)  # type: ignore[arg-type]
    elif all(isinstance(x, int) for x in p):
        ids = [list(p)]  # type: ignore[arg-type]
        return ids, [tokenizer.decode(ids[0], skip_special_tokens=True) for _ in ids]
    else:
        ids = [list(x) for x in p]  # type: ignore[union-attr]
        return ids, [tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    return [tokenizer.encode(t) for t in texts], texts


def completion_logprobs(
    tt: TokenTexts,
    prompt_ids: list[int],
    res: dict[str, Any],
    with_input: bool,
    out_from: int = 0,
    offset: int = 0,
) -> tuple[CompletionLogProbs, int]:
    """Legacy-format logprobs of the output tokens from ``out_from`` on (and of the prompt if ``with_input``).

    ``text_offset`` counts from ``offset``; returns the logprobs and the offset after the last token.
    """
    meta = res["meta_info"]
    full = prompt_ids + list(res.get("output_ids", []))
    entries: list[tuple[int, list[Any], list[list[Any]] | None]] = []
    if with_input:
        tops = meta.get("input_top_logprobs") or []
        for i, e in enumerate(meta.get("input_token_logprobs") or []):
            entries.append((i, e, tops[i] if i < len(tops) else None))
    tops = meta.get("output_top_logprobs") or []
    outs = meta.get("output_token_logprobs") or []
    for i in range(out_from, len(outs)):
        entries.append((len(prompt_ids) + i, outs[i], tops[i] if i < len(tops) else None))
    lp = CompletionLogProbs()
    # the first text token's piece may carry a space that decoding drops at the start of a text (SentencePiece's
    # "▁Once" -> "Once"): measure that one token in the decoded text itself
    first_text = next((i for i, t in enumerate(full) if t not in tt.special_ids), len(full))
    for pos, (logprob, tid, *_), top in entries:
        ctx = full[max(0, pos - 4) : pos]
        token = tt.pieces(ctx, [tid])[0]
        lp.tokens.append(token)
        lp.token_logprobs.append(logprob)
        lp.text_offset.append(offset)
        if tid in tt.special_ids:
            pass  # skipped special tokens take no text
        elif pos == first_text:
            offset += len(tt.tokenizer.decode(full[: pos + 1], skip_special_tokens=True))
        else:
            offset += len(token)
        if logprob is None:
            lp.top_logprobs.append(None)
        else:
            alts = top or []
            names = tt.pieces(ctx, [a[1] for a in alts])
            lp.top_logprobs.append({name: a[0] for name, a in zip(names, alts, strict=True)})
    return lp, offset


def _build(ctx: ApiContext, req: CompletionRequest, rid: str) -> tuple[list[ChoiceJob], list[str]]:
    tm = ctx.tm
    ctx.check_model(req.model)
    reject_unsupported(req, {"suffix": req.suffix or None})
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of: only best_of equal to n is supported", "best_of")
    prompts, texts = _prompts(req, tm.tokenizer)
    explicit_null = "max_tokens" in req.model_fields_set and req.max_tokens is None
    params = []
    for ids in prompts:
        max_new = tm.context_len - len(ids) if explicit_null else int(req.max_tokens or 0)
        sp = native_sampling_params(req, max(max_new, 0))
        check_request(sp, ids, tm, "prompt", min_tokens_requested=req.min_tokens)
        params.append(sp)
    want_lp = req.logprobs is not None
    jobs = expand_choices(
        prompts,
        params,
        req.n,
        req.rid or rid,
        return_logprob=want_lp,
        logprob_start_len=0 if (want_lp and req.echo) else -1,
        top_logprobs_num=req.logprobs or 0,
    )
    return jobs, texts


async def create_completion(ctx: ApiContext, body: Any, request: Request | None = None) -> Response:
    """Handle one /v1/completions call (``body`` is the parsed JSON)."""
    try:
        req = CompletionRequest.model_validate(body)
    except ValidationError as e:
        raise from_validation_error(e) from None
    rid = new_id("cmpl")
    jobs, texts = _build(ctx, req, rid)
    if req.stream:
        return await _stream(ctx, req, jobs, texts, rid)
    try:
        results = await generate_all(ctx.tm, jobs, request)
    except ValueError as e:
        raise from_value_error(e, _RENAMES) from None
    by_index = {job.index: res for job, res in zip(jobs, results, strict=True)}
    choices = []
    for job, res in zip(jobs, results, strict=True):
        reason, matched = finish_reason(res["meta_info"])
        prompt_text = texts[job.prompt_index] if req.echo else ""
        lp = None
        if req.logprobs is not None:
            lp, _ = completion_logprobs(ctx.token_texts, job.input_ids, res, with_input=req.echo)
        choices.append(
            CompletionChoice(
                index=job.index, text=prompt_text + res["text"], logprobs=lp, finish_reason=reason, matched_stop=matched
            )
        )
    resp = CompletionResponse(id=rid, model=ctx.model_name, choices=choices, usage=usage_of(by_index, jobs))
    return JSONResponse(dump(resp))


async def _stream(
    ctx: ApiContext, req: CompletionRequest, jobs: list[ChoiceJob], texts: list[str], rid: str
) -> StreamingResponse:
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
    offsets = {j.index: 0 for j in jobs}
    finals: dict[int, dict[str, Any]] = {}
    started: set[int] = set()

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
        d: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": ctx.model_name}
        d["choices"] = choices
        if usage is not None:
            d["usage"] = usage.model_dump(mode="json")
        return sse(d)

    def update(job: ChoiceJob, res: dict[str, Any]) -> str | None:
        meta = res["meta_info"]
        finished = meta.get("finish_reason") is not None
        reason, matched = finish_reason(meta)
        safe = safe_stream_text(res["text"], stop, finished)
        first_chunk = job.index not in started
        delta = safe[sent_text[job.index] :]
        sent_text[job.index] = max(sent_text[job.index], len(safe))
        if req.echo and first_chunk:
            delta = texts[job.prompt_index] + delta
        lp = None
        if req.logprobs is not None:
            lp, offsets[job.index] = completion_logprobs(
                ctx.token_texts,
                job.input_ids,
                res,
                with_input=req.echo and first_chunk,
                out_from=sent_lp[job.index],
                offset=offsets[job.index],
            )
            sent_lp[job.index] = len(meta.get("output_token_logprobs") or [])
        if finished:
            finals[job.index] = res
        elif not delta and not (lp and lp.tokens):
            return None
        started.add(job.index)
        choice = {
            "index": job.index,
            "text": delta,
            "logprobs": lp.model_dump(mode="json") if lp is not None else None,
            "finish_reason": reason,
            "matched_stop": matched,
        }
        return chunk([choice])

    async def events() -> AsyncIterator[str]:
        try:
            item = first
            while item is not None:
                out = update(*item)
                if out is not None:
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
