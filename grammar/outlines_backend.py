r"""The second backend: outlines-core (Willard & Louf 2023, "Efficient Guided Generation for Large Language
Models", arXiv:2307.09702) — a regex compiled to a DFA whose states are indexed by the tokens they allow.

Kinds: ``regex`` (outlines' Rust-regex dialect: no lookaround or backreferences) and ``json_schema`` (turned
into a regex by ``outlines_core.json_schema.build_regex_from_schema``; its whitespace is at most one space
around separators). ``json_object`` and ``ebnf`` are not supported (a JSON object is not a regular language).
``\d``, ``\w`` and ``\s`` are made ASCII (as in ECMA-262, JSON Schema's regex dialect, and in xgrammar): Rust's
are Unicode-aware and follow a newer Unicode version than Python's ``re``.

The vocabulary handed to outlines maps each token's bytes (xgrammar's ``TokenizerInfo.decoded_vocab``, which
resolves sentencepiece ``▁`` and ``<0xNN>`` byte tokens and byte-level BPE) to its ids, special tokens
excluded. outlines supports a single eos id; the matcher allows every stop id in final states itself.

Index building determinises the regex and can take exponential time (``(a|b)*a(a|b){20}`` takes minutes);
``validation.regex_stats`` bounds the unrolled size of bounded repetitions and the compile timeout
bounds the wait, but a running index build cannot be interrupted.
"""

from __future__ import annotations

from typing import Any

import outlines_core as oc
import torch
from outlines_core.json_schema import build_regex_from_schema

from radixgen.grammar.base import CompiledGrammar, GrammarError, GrammarMatcher, TokenizerBackend
from radixgen.grammar.schema_support import OUTLINES_SUPPORT
from radixgen.grammar.validation import regex_stats
from radixgen.grammar.xgrammar_backend import XGrammarBackend

#: largest regex, with bounded repetitions unrolled, that is indexed
MAX_EXPANDED_REGEX = 20_000
_MAX_ROLLBACK = 256
_MAX_JUMP_BYTES = 256


class OutlinesMatcher(GrammarMatcher):
    """A DFA state walked token by token (the state history gives rollback)."""

    def __init__(self, grammar: OutlinesCompiled) -> None:
        self.g = grammar
        self.states = [grammar.index.get_initial_state()]
        self.terminated = False

    def _allowed(self, state: int) -> list[int]:
        return [t for t in (self.g.index.get_allowed_tokens(state) or []) if t != self.g.eos_id]

    def accept_token(self, token_id: int) -> bool:
        if self.terminated:
            return False
        state = self.states[-1]
        if token_id in self.g.stop_ids:
            if not self.g.index.is_final_state(state):
                return False
            self.terminated = True
            self.states.append(state)
            return True
        nxt = self.g.index.get_next_state(state, token_id)
        if nxt is None:
            return False
        self.states.append(nxt)
        return True

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        words = torch.zeros(bitmask.shape[1], dtype=torch.int64)
        if not self.terminated:
            state = self.states[-1]
            ids = self._allowed(state)
            if self.g.index.is_final_state(state):
                ids = ids + list(self.g.stop_ids)
            if ids:
                t = torch.tensor(ids, dtype=torch.int64)
                words.index_add_(0, t >> 5, torch.ones_like(t) << (t & 31))  # ids are distinct: add == or
        bitmask[row] = words.to(torch.int32)  # wraps bit 31 into the sign bit, as int32 bitmasks do

    def is_terminated(self) -> bool:
        return self.terminated

    def rollback(self, num_tokens: int) -> None:
        if num_tokens >= len(self.states):
            raise ValueError(f"rollback({num_tokens}): only {len(self.states) - 1} tokens accepted")
        if num_tokens > 0:
            del self.states[-num_tokens:]
            self.terminated = False

    def find_jump_forward_string(self) -> str:
        """Walk while every allowed token starts with the same bytes and a token spells exactly them."""
        if self.terminated:
            return ""
        index, tb = self.g.index, self.g.token_bytes
        state, out = self.states[-1], b""
        while len(out) < _MAX_JUMP_BYTES and not index.is_final_state(state):
            ids = self._allowed(state)
            if not ids:
                break
            words = [tb[t] for t in ids]
            prefix = bytes(_common_prefix(words))
            exact = [t for t, w in zip(ids, words, strict=True) if w == prefix]
            if not prefix or not exact:
                break
            nxt = index.get_next_state(state, exact[0])
            if nxt is None:
                break
            out += prefix
            state = nxt
        return out.decode("utf-8", errors="ignore")


def _common_prefix(words: list[bytes]) -> bytes:
    first = min(words, key=len)
    for i, ch in enumerate(first):
        if any(w[i] != ch for w in words):
            return first[:i]
    return first


class OutlinesCompiled(CompiledGrammar):
    def __init__(self, index: Any, eos_id: int, stop_ids: tuple[int, ...], token_bytes: list[bytes]) -> None:
        self.index = index
        self.eos_id = eos_id
        self.stop_ids = stop_ids
        self.token_bytes = token_bytes

    def matcher(self) -> GrammarMatcher:
        return OutlinesMatcher(self)


class OutlinesBackend(TokenizerBackend):
    """outlines-core for one Hugging Face tokenizer (arguments: :class:`~radixgen.grammar.base.TokenizerBackend`;
    ``any_whitespace`` is ignored: outlines' JSON regex allows at most one space around separators)."""

    name = "outlines"
    support = OUTLINES_SUPPORT

    def _setup(self) -> None:
        # the token bytes come from xgrammar's tokenizer description (one implementation of byte decoding)
        self._tb = XGrammarBackend(self.tokenizer, self.vocab_size, list(self.stop_ids)).token_bytes
        by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(self._tb):
            if b:
                by_bytes.setdefault(b, []).append(i)
        self.vocabulary = oc.Vocabulary(self.stop_ids[0], by_bytes)

    @staticmethod
    def check_syntax(kind: str, spec: str) -> None:
        """outlines' front end for schemas (``build_regex_from_schema``); for the regex (given or built) the
        constructs its Rust regex engine lacks (lookaround, backreferences, conditionals) and the unrolled
        size. Parsing is checked without building an index: determinising can take exponential time.

        Raises:
            GrammarError: unsupported kind or construct, or outlines' message.
        """
        if kind not in ("regex", "json_schema"):
            raise GrammarError(f"{kind}: not supported by the outlines backend (use grammar_backend xgrammar)")
        try:
            regex = build_regex_from_schema(spec) if kind == "json_schema" else spec
        except Exception as e:  # noqa: BLE001 - outlines raises TypeError / ValueError
            raise GrammarError(f"{kind}: {str(e).splitlines()[0]}") from None
        size, features = regex_stats(regex)
        if features:
            raise GrammarError(
                f"{kind}: outlines does not support {', '.join(sorted(features))} in regular expressions"
            )
        if size > MAX_EXPANDED_REGEX:
            raise GrammarError(f"{kind}: the regex unrolls to {size} positions (outlines limit {MAX_EXPANDED_REGEX})")

    def compile(self, kind: str, spec: str) -> CompiledGrammar:
        self.check_syntax(kind, spec)
        regex = ascii_classes(build_regex_from_schema(spec) if kind == "json_schema" else spec)
        try:
            index = oc.Index(regex, self.vocabulary)
        except Exception as e:  # noqa: BLE001
            raise GrammarError(f"{kind}: outlines cannot index it: {str(e).splitlines()[0]}") from None
        return OutlinesCompiled(index, self.stop_ids[0], self.stop_ids, self._tb)

    @property
    def token_bytes(self) -> list[bytes]:
        return self._tb


_ASCII = {"d": "0-9", "w": "0-9A-Za-z_", "s": " \\t\\n\\r\\f\\v"}


def ascii_classes(pattern: str) -> str:
    """``\\d`` / ``\\w`` / ``\\s`` → their ASCII classes (inside or outside ``[...]``); other escapes kept."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt in _ASCII:
                out.append(_ASCII[nxt] if in_class else f"[{_ASCII[nxt]}]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                out.append("]")
                i += 1
        elif ch == "]" and in_class:
            in_class = False
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)
