"""Incremental detokenization and stop-string handling (torch-free: runs in the detokenizer process).

``IncrementalDetokenizer`` turns a growing list of output token ids into text deltas with the
prefix_offset/read_offset algorithm of vLLM and SGLang's DetokenizerManager: the text of the tokens added
since the last emission is the difference between decoding a short window that ends with them and the same
window without them. Only O(new tokens) are decoded per ``append``.

``Detokenizer`` keeps one per request (with its stop-string holdback) and turns a scheduler step's token deltas into
text deltas; the detokenizer process and the offline Engine both run it. ``StopStringMatcher`` and ``trim_stop``
find stop strings in generated text, tell how much of a streamed text
is safe to send (no tail that could still grow into a stop string), and cut the final text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import regex

from radixgen.runtime.io_struct import BatchStrOut, BatchTokenOut, DetokRegister, FinishReason, ReqOutput

__all__ = ["Detokenizer", "IncrementalDetokenizer", "StopStringMatcher", "trim_stop"]

_REPLACEMENT = "\ufffd"
# Prompt tokens decoded before the first output token, so that its word-boundary space comes out right.
_INITIAL_CONTEXT = 5
# An incomplete UTF-8 character has at most 3 bytes, hence spans at most 3 tokens at the end of the ids.
_MAX_INCOMPLETE_TOKENS = 3
# Bound on how far a window may grow while its leading tokens decode to nothing (e.g. skipped specials).
_MAX_WINDOW = 32


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text deltas.

    Each ``append`` decodes the windows ``ids[prefix_offset:]`` and ``ids[prefix_offset:read_offset]`` and
    emits the difference; only tokens since the last emission (plus a short context) are decoded. Text
    that ends in an incomplete UTF-8 sequence (decoded as U+FFFD, e.g. a byte-fallback token of a CJK
    character or emoji) is held back until its bytes complete, or until ``finish`` flushes it. Because the
    window always starts with already-emitted context, sentencepiece word-boundary spaces ('▁') come out
    exactly as ``decode(prompt + output)`` minus ``decode(prompt)``, and without a prompt exactly as
    ``decode(output)``.

    Args:
        tokenizer: a Hugging Face tokenizer (anything with ``decode(ids, skip_special_tokens=...,
            spaces_between_special_tokens=..., clean_up_tokenization_spaces=...)``).
        prompt_ids: the prompt's token ids (only its last few tokens are kept, as decoding context).
        skip_special_tokens: drop special tokens from the text.
        spaces_between_special_tokens: passed to ``tokenizer.decode`` (some tokenizers ignore it).

    Tokenization-space clean-up is always off: it rewrites text across token boundaries, which no
    incremental detokenizer can reproduce.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        prompt = list(prompt_ids or [])
        # Start the context a few tokens back, then further back while the context starts inside a UTF-8
        # character (a byte-fallback run would otherwise decode to U+FFFD as a whole) or decodes to nothing.
        start = max(len(prompt) - _INITIAL_CONTEXT, 0)
        while start > 0 and len(prompt) - start < _MAX_WINDOW:
            head = self._decode(prompt[start:])
            if head and not head.startswith(_REPLACEMENT):
                break
            start -= 1
        self._ids: list[int] = prompt[start:]
        self._prefix_offset = 0  # window start (relative to self._ids)
        self._read_offset = len(self._ids)  # end of the already-emitted tokens
        self._prefix_text: str | None = None  # cached decode of ids[prefix_offset:read_offset]
        self._pieces: list[str] = []

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(
            list(ids),
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    @property
    def text(self) -> str:
        """All text emitted so far (the concatenation of every delta returned)."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def append(self, new_ids: Sequence[int]) -> str:
        """Add output token ids; return the newly stable text (possibly ``""``)."""
        if not new_ids:
            return ""
        self._ids.extend(int(i) for i in new_ids)
        return self._step(final=False)

    def finish(self) -> str:
        """Flush text held back for an incomplete UTF-8 sequence; return the final delta (possibly ``""``)."""
        if self._read_offset == len(self._ids):
            return ""
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        prefix_len = len(self._prefix_text)
        end = len(self._ids)
        window_text = self._decode(self._ids[self._prefix_offset :])
        if not final and window_text[prefix_len:].endswith(_REPLACEMENT):
            # Incomplete character at the end: commit up to the last token boundary before it, if any.
            carried = end - self._read_offset
            for cut in range(end - 1, max(self._read_offset, end - _MAX_INCOMPLETE_TOKENS - 1), -1):
                cut_text = self._decode(self._ids[self._prefix_offset : cut])
                if not cut_text[prefix_len:].endswith(_REPLACEMENT):
                    return self._commit(cut, cut_text)
            if carried <= _MAX_INCOMPLETE_TOKENS:
                return ""  # hold back: the character may still complete
            # More tokens than any valid character can span: genuinely invalid bytes; emit them as they are.
        return self._commit(end, window_text)

    def _commit(self, cut: int, window_text: str) -> str:
        """Emit the text of ids[read_offset:cut] (``window_text``: decode of ids[prefix_offset:cut])."""
        delta = window_text[len(self._prefix_text or "") :]
        chunk_text = self._decode(self._ids[self._read_offset : cut])
        if chunk_text or cut - self._prefix_offset >= _MAX_WINDOW:
            # The next window starts at the just-emitted tokens; they decode to text, so the decoder's
            # start-of-text handling (e.g. stripping one leading space) is spent on them.
            self._prefix_offset, self._prefix_text = self._read_offset, chunk_text
        else:
            # They decode to nothing (e.g. skipped special tokens): keep the older context in the window.
            self._prefix_text = window_text
        self._read_offset = cut
        if self._prefix_offset > 0:  # drop ids that no window will read again
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        if delta:
            self._pieces.append(delta)
        return delta


class StopStringMatcher:
    """Finds stop strings and stop regexes in generated text.

    Args:
        stop: the stop strings (a single ``str`` is accepted too); empty strings are ignored.
        stop_regex: stop patterns (``regex`` module syntax, a superset of Python's ``re``): the earliest match in the
            text counts; a partial match at the end of the text (``regex``'s ``partial=True``) is text that may
            still become a match.

    Raises:
        TypeError: if a stop string is not a ``str``. regex.error: an invalid pattern (validated before, by
        SamplingParams).
    """

    def __init__(self, stop: Sequence[str] | str | None, stop_regex: Sequence[str] = ()) -> None:
        self.patterns = [regex.compile(p) for p in dict.fromkeys(stop_regex)]
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        for s in stop:
            if not isinstance(s, str):
                raise TypeError(f"stop strings must be str, got {type(s).__name__}: {s!r}")
        # Deduplicated, in the given order (shorter first on ties, see find).
        self.stop: list[str] = list(dict.fromkeys(s for s in stop if s))
        self.max_len = max((len(s) for s in self.stop), default=0)

    def __bool__(self) -> bool:
        return bool(self.stop or self.patterns)

    def find_regex(self, text: str) -> tuple[str, int, int] | None:
        """``(pattern, start, end)`` of the earliest stop-regex match in ``text`` (the whole text is searched: a
        match may start anywhere), or None."""
        best: tuple[str, int, int] | None = None
        for pat in self.patterns:
            m = pat.search(text)
            if m is not None and (best is None or m.start() < best[1]):
                best = (pat.pattern, m.start(), m.end())
        return best

    def trim_regex(self, text: str, pattern: str, no_stop_trim: bool) -> str:
        """Cut ``text`` where ``pattern`` first matches (after the match with ``no_stop_trim``); unchanged if it
        does not match."""
        m = regex.search(pattern, text)
        if m is None:
            return text
        return text[: m.end()] if no_stop_trim else text[: m.start()]

    def find(self, text: str) -> tuple[str, int] | None:
        """Return ``(stop_string, start_index)`` of the earliest stop string in ``text``, or ``None``.

        On a tie (two stop strings starting at the same index) the shorter one wins: it completes first.
        To scan a growing text, pass only its tail (the new text plus ``max_len - 1`` characters before it)
        and add the tail's offset to the index.
        """
        best: tuple[str, int] | None = None
        for s in self.stop:
            i = text.find(s)
            if i < 0:
                continue
            if best is None or i < best[1] or (i == best[1] and len(s) < len(best[0])):
                best = (s, i)
        return best

    def safe_prefix_len(self, text: str) -> int:
        """Length of the prefix of ``text`` that can be streamed now.

        Excludes a tail of ``text`` that is a proper prefix of some stop string (it might still become one)
        and, if a stop string already occurs, everything from its start on.
        """
        match = self.find(text)
        safe = len(text) if match is None else match[1]
        for pat in self.patterns:  # a full or partial match: its start is the earliest text that may be cut
            m = pat.search(text, partial=True)
            if m is not None:
                safe = min(safe, m.start())
        if match is not None:
            return safe
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return min(safe, len(text) - hold)


def trim_stop(text: str, matched: str, no_stop_trim: bool) -> str:
    """Cut ``text`` at the first occurrence of the stop string ``matched``.

    The stop string itself is removed, or kept (and everything after it dropped) if ``no_stop_trim``.
    ``text`` is returned unchanged if ``matched`` does not occur in it.

    Raises:
        ValueError: if ``matched`` is empty.
    """
    if not matched:
        raise ValueError("matched stop string must be non-empty")
    i = text.find(matched)
    if i < 0:
        return text
    return text[: i + len(matched)] if no_stop_trim else text[:i]


def text_token_ids(new_ids: list[int], finish_reason: FinishReason | None, no_stop_trim: bool) -> list[int]:
    """The ids of ``new_ids`` whose text is shown: a final stop token (eos or one of stop_token_ids, reported as an
    integer ``finish_reason.matched``) stays in ``output_ids`` but its text is left out, as in SGLang, unless
    ``no_stop_trim``."""
    matched = None if finish_reason is None else finish_reason.matched
    if new_ids and isinstance(matched, int) and not no_stop_trim and new_ids[-1] == matched:
        return new_ids[:-1]
    return new_ids


class DetokState:
    """Incremental text of one request.

    Args:
        reg: the request's detokenization options.
        tokenizer: anything with a Hugging Face-style ``decode``.
    """

    def __init__(self, reg: DetokRegister, tokenizer: Any) -> None:
        self.detok = IncrementalDetokenizer(
            tokenizer,
            prompt_ids=reg.prompt_tail,
            skip_special_tokens=reg.skip_special_tokens,
            spaces_between_special_tokens=reg.spaces_between_special_tokens,
        )
        self.matcher = StopStringMatcher(reg.stop, reg.stop_regex) if reg.stop or reg.stop_regex else None
        self.no_stop_trim = reg.no_stop_trim
        self.pending = ""  # decoded text not sent yet (it may still turn into a stop string)

    def step(self, out: ReqOutput) -> str:
        """The text delta to send for one output."""
        text = self.pending + self.detok.append(
            text_token_ids(out.new_token_ids, out.finish_reason, self.no_stop_trim)
        )
        if out.finish_reason is not None:
            text += self.detok.finish()
            self.pending = ""
            matched = out.finish_reason.matched
            # nothing sent so far contains (the start of) a stop string or regex match, so it is in this final text
            if not isinstance(matched, str) or not matched or self.matcher is None:
                return text
            if matched in self.matcher.stop:
                return trim_stop(text, matched, self.no_stop_trim)
            return self.matcher.trim_regex(text, matched, self.no_stop_trim)
        if self.matcher is None:
            return text
        safe = self.matcher.safe_prefix_len(text)
        self.pending = text[safe:]
        return text[:safe]


class Detokenizer:
    """Per-request detokenization state and the message handlers (separate from the sockets, for tests)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, DetokState] = {}

    def register(self, reg: DetokRegister) -> None:
        self.states[reg.rid] = DetokState(reg, self.tokenizer)

    def process(self, batch: BatchTokenOut) -> BatchStrOut:
        """Text deltas for one scheduler step; finished requests are forgotten."""
        texts: list[str] = []
        for out in batch.outputs:
            st = self.states.get(out.rid)
            if st is None:  # not registered (should not happen): decode without context or stop strings
                st = self.states[out.rid] = DetokState(DetokRegister(out.rid, []), self.tokenizer)
            texts.append(st.step(out))
            if out.finish_reason is not None:
                del self.states[out.rid]
        return BatchStrOut(batch.outputs, texts, batch.stats)
