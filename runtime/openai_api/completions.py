"""POST /v1/completions: prompts (text or token ids, one or many) → OpenAI ``text_completion`` objects / SSE."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from radixgen.runtime.api_keys import owner_of
from radixgen.runtime.generate_request import check_prompt_chars
from radixgen.runtime.http_common import bad_request, from_validation_error, http_error, is_large, off_loop_if
from radixgen.runtime.openai_api.protocol import (
    CompletionChoice,
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
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


def _prompts(req: CompletionRequest, tokenizer: Any, max_chars: int | None) -> tuple[list[list[int]], list[str]]:
    """Token ids and text (for echo) of every prompt (a text too long to fit the context is refused untokenized)."""
    p = req.prompt
    if isinstance(p, str):
        texts: list[str] = [p]
    elif all(isinstance(x, str) for x in p):
        texts = list(p)  # type: ignore[arg-type]
    else:
        ids = [list(p)] if all(isinstance(x, int) for x in p) else [list(x) for x in p]  # type: ignore[arg-type,union-attr]
        size = len(tokenizer)
        if any(not 0 <= t < size for lst in ids for t in lst):  # before decoding them for echo
            raise bad_request(f"prompt: token ids must be in [0, {size})", "prompt")
        return ids, [tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    for t in texts:
        check_prompt_chars(t, "prompt", max_chars)
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


def _build(ctx: ApiContext, req: CompletionRequest, rid: str) -> tuple[OpenAIRun, list[str]]:
    tm = ctx.tm
    lora_path = ctx.check_model(req.model)
    reject_unsupported(req, {"suffix": req.suffix or None})
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of: only best_of equal to n is supported", "best_of")
    prompts, texts = _prompts(req, tm.tokenizer, getattr(tm, "max_prompt_chars", None))
    explicit_null = "max_tokens" in req.model_fields_set and req.max_tokens is None
    renames = openai_renames("prompt")
    try:
        params = [
            sampling_params(req, max(tm.context_len - len(ids) if explicit_null else int(req.max_tokens or 0), 0))
            for ids in prompts
        ]
    except ValueError as e:
        raise http_error(e, renames) from None
    want_lp = req.logprobs is not None
    logprobs = {
        "return_logprob": want_lp,
        "logprob_start_len": 0 if (want_lp and req.echo) else -1,
        "top_logprobs_num": req.logprobs or 0,
    }
    return OpenAIRun(prompts, params, req.rid or rid, renames, logprobs, lora_path=lora_path), texts


async def create_completion(ctx: ApiContext, body: Any, request: Request | None = None) -> Response:
    """Handle one /v1/completions call (``body`` is the parsed JSON)."""
    try:
        req = CompletionRequest.model_validate(body)
    except ValidationError as e:
        raise from_validation_error(e) from None
    rid = new_id("cmpl")
    run, texts = await off_loop_if(is_large(request), _build, ctx, req, rid)
    run.owner = owner_of(request)
    if req.stream:
        return await _stream(ctx, req, run, texts, rid)
    results = await run.results(ctx.tm, request)
    choices = []
    for index, res in enumerate(results):
        reason, matched = finish_reason(res["meta_info"])
        p = run.prompt_index(index)
        prompt_text = texts[p] if req.echo else ""
        lp = None
        if req.logprobs is not None:
            lp, _ = completion_logprobs(ctx.token_texts, run.prompts[p], res, with_input=req.echo)
        choices.append(
            CompletionChoice(
                index=index, text=prompt_text + res["text"], logprobs=lp, finish_reason=reason, matched_stop=matched
            )
        )
    usage = usage_of(dict(enumerate(results)), run)
    resp = CompletionResponse(id=rid, model=ctx.model_name, choices=choices, usage=usage)
    return JSONResponse(dump(resp))


async def _stream(
    ctx: ApiContext, req: CompletionRequest, run: OpenAIRun, texts: list[str], rid: str
) -> StreamingResponse:
    sent_text = dict.fromkeys(range(run.num_choices), 0)
    sent_lp = dict.fromkeys(range(run.num_choices), 0)
    offsets = dict.fromkeys(range(run.num_choices), 0)
    started: set[int] = set()

    def choices_of(index: int, res: dict[str, Any]) -> list[dict[str, Any]]:
        meta = res["meta_info"]
        reason, matched = finish_reason(meta)
        p = run.prompt_index(index)
        text = res["text"]  # append-only: the detokenizer holds back text that may become a stop string
        first_chunk = index not in started
        delta = text[sent_text[index] :]
        sent_text[index] = len(text)
        if req.echo and first_chunk:
            delta = texts[p] + delta
        lp = None
        if req.logprobs is not None:
            lp, offsets[index] = completion_logprobs(
                ctx.token_texts,
                run.prompts[p],
                res,
                with_input=req.echo and first_chunk,
                out_from=sent_lp[index],
                offset=offsets[index],
            )
            sent_lp[index] = len(meta.get("output_token_logprobs") or [])
        if reason is None and not delta and not (lp and lp.tokens):
            return []
        started.add(index)
        lp_json = lp.model_dump(mode="json") if lp is not None else None
        return [{"index": index, "text": delta, "logprobs": lp_json, "finish_reason": reason, "matched_stop": matched}]

    usage = req.stream_options is not None and req.stream_options.include_usage
    return await run.stream_response(ctx.tm, "text_completion", ctx.model_name, rid, usage, choices_of)
