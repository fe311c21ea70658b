"""The llguidance backend (Microsoft's guidance project, "LLGuidance: Making Structured Outputs Go Brrr", 2025):
an Earley parser over a lexer of lazily built derivative-based regex automata, with the token trie walked per
mask (no per-grammar precomputation over the vocabulary, so compiles are fast and masks cost a trie walk).

Kinds:
    json_schema / json_object: ``LLMatcher.grammar_from_json_schema`` (llguidance's own JSON-schema compiler:
        JSON Schema's defaults — unlisted properties allowed unless ``additionalProperties`` says otherwise — and
        an error, never a silent drop, for any keyword it does not implement; ``lenient`` stays off). Whitespace
        (grammar/whitespace.py): masks come from the compact form (``item_separator`` ``", "``,
        ``key_separator`` ``": "``, ``whitespace_flexible`` false; with ``any_whitespace`` the flexible form), and
        a token only the flexible form accepts switches the matcher to it.
    regex: ``grammar_from_regex`` (Rust ``regex`` syntax: no lookaround or backreferences).
    ebnf: xgrammar's GBNF dialect converted by ``llguidance.gbnf_to_lark``; grammars it cannot convert are
        refused with its message.
    structural_tag: not supported (use xgrammar).

The tokenizer is described once per backend (``llguidance.hf.from_tokenizer``, fast tokenizers only, with the
model's vocabulary size and every eos id). A compiled grammar holds one template matcher; each request's matcher
is a ``deep_copy`` of it. Masks are written by ``unsafe_compute_mask_ptr`` straight into the row of the shared
int32 bitmask (the layout of ``grammar.base``: llguidance uses the same one).
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import llguidance.hf
import torch
from llguidance.gbnf_to_lark import gbnf_to_lark

from radixgen.grammar.base import CompiledGrammar, GrammarError, GrammarMatcher, TokenizerBackend
from radixgen.grammar.schema_support import LLGUIDANCE_SUPPORT
from radixgen.grammar.whitespace import FlexibleWhitespaceCompiled

#: JSON compile options of the compact form (what masks allow) and the flexible form (what is accepted)
#: ``coerce_one_of``: oneOf compiled as anyOf — validation (``schema_support``) admits a oneOf only when its
#: branches provably exclude each other, where the two are the same
COMPACT_JSON: dict[str, Any] = {
    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "coerce_one_of": True,
}  # fmt: skip
FLEXIBLE_JSON: dict[str, Any] = {
    "whitespace_flexible": True, "item_separator": ",", "key_separator": ":", "coerce_one_of": True,
}  # fmt: skip
#: with ``any_whitespace``: at most this many whitespace characters in a row (as the xgrammar backend)
ANY_WHITESPACE_JSON: dict[str, Any] = {**FLEXIBLE_JSON, "whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,4}"}


def _grammar(kind: str, spec: str, options: Any) -> str:
    """llguidance's grammar text for a constraint (not yet checked); ``options``: JSON compile options."""
    if kind == "json_schema":
        return str(llguidance.LLMatcher.grammar_from_json_schema(spec, overrides=options))
    if kind == "json_object":
        return str(llguidance.LLMatcher.grammar_from_json_schema(json.dumps({"type": "object"}), overrides=options))
    if kind == "regex":
        return str(llguidance.LLMatcher.grammar_from_regex(spec))
    if kind == "ebnf":
        try:
            lark = gbnf_to_lark(spec)
        except Exception as e:  # noqa: BLE001 - the converter raises ValueError / AssertionError / KeyError
            raise GrammarError(f"ebnf: llguidance cannot convert the grammar: {str(e).splitlines()[0]}") from None
        return str(llguidance.LLMatcher.grammar_from_lark(lark))
    raise GrammarError(f"{kind}: not supported by the llguidance backend (use grammar_backend xgrammar)")


def _message(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid grammar"


class LLGuidanceMatcher(GrammarMatcher):
    """Wraps ``llguidance.LLMatcher``: a refused token is checked first (``validate_tokens``), so the matcher
    never enters llguidance's sticky error state; ``terminated`` is set once a stop token is accepted."""

    def __init__(self, m: Any, stop_ids: frozenset[int]) -> None:
        self._m = m
        self._stop_ids = stop_ids
        self._terminated = False

    def accept_token(self, token_id: int) -> bool:
        if self._terminated:
            return False
        if token_id in self._stop_ids:
            if not self._m.is_accepting():
                return False
            self._terminated = True
            return True
        if self._m.validate_tokens([token_id]) != 1:
            return False
        return bool(self._m.consume_token(token_id))

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self._terminated:
            bitmask[row] = 0
            return
        v = bitmask[row]
        self._m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())

    def is_terminated(self) -> bool:
        return self._terminated

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        if self._terminated:  # the stop token was never consumed by llguidance
            self._terminated = False
            num_tokens -= 1
        if num_tokens and not self._m.rollback(num_tokens):
            raise ValueError(f"rollback({num_tokens}): {self._m.get_error() or 'more tokens than accepted'}")

    def find_jump_forward_string(self) -> str:
        if self._terminated:
            return ""
        forced = bytes(self._m.compute_ff_bytes())
        for cut in range(len(forced), max(len(forced) - 4, -1), -1):  # drop a trailing partial UTF-8 character
            try:
                return forced[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
        return ""


class LLGuidanceCompiled(CompiledGrammar):
    """A template ``LLMatcher`` at the start of the grammar; :meth:`matcher` deep-copies it (llguidance has no
    separate compiled-grammar object: the copy shares the built lexer and grammar)."""

    def __init__(self, template: Any, stop_ids: frozenset[int]) -> None:
        self.template = template
        self.stop_ids = stop_ids

    def matcher(self) -> GrammarMatcher:
        return LLGuidanceMatcher(self.template.deep_copy(), self.stop_ids)


class LLGuidanceBackend(TokenizerBackend):
    """llguidance for one Hugging Face tokenizer (arguments: :class:`~radixgen.grammar.base.TokenizerBackend`).

    Raises:
        GrammarError: the tokenizer is not a fast (Rust) tokenizer.
    """

    name = "llguidance"
    support = LLGUIDANCE_SUPPORT

    def _setup(self) -> None:
        try:
            self.lltok = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self.vocab_size, eos_token=list(self.stop_ids)
            )
        except ValueError as e:
            raise GrammarError(f"grammar_backend: llguidance needs a fast tokenizer ({e})") from None
        self._stop_set = frozenset(self.stop_ids)
        self._token_bytes: list[bytes] | None = None

    @staticmethod
    def check_syntax(kind: str, spec: str) -> None:
        """llguidance's own front end without a tokenizer: the grammar (JSON schema included) is built and
        checked; unimplemented JSON-schema keywords and unknown formats are errors.

        Raises:
            GrammarError: naming the field and llguidance's message.
        """
        grammar = _grammar(kind, spec, COMPACT_JSON)
        error = llguidance.LLMatcher.validate_grammar(grammar)
        if error:
            raise GrammarError(f"{kind}: {_message(error)}")

    def compile(self, kind: str, spec: str) -> CompiledGrammar:
        if kind in ("json_schema", "json_object"):
            compact = self._compile(kind, spec, ANY_WHITESPACE_JSON if self.any_whitespace else COMPACT_JSON)
            return FlexibleWhitespaceCompiled(compact, lambda: self._compile(kind, spec, FLEXIBLE_JSON))
        return self._compile(kind, spec, COMPACT_JSON)

    def _compile(self, kind: str, spec: str, options: dict[str, Any]) -> LLGuidanceCompiled:
        grammar = _grammar(kind, spec, options)
        template = llguidance.LLMatcher(self.lltok, grammar, log_level=0)
        if template.is_error():
            raise GrammarError(f"{kind}: {_message(template.get_error())}")
        return LLGuidanceCompiled(template, self._stop_set)

    @property
    def token_bytes(self) -> list[bytes]:
        if self._token_bytes is None:
            tok = self.lltok
            n = min(tok.vocab_size, self.vocab_size)
            table = [b"" if tok.is_special_token(i) else bytes(tok.decode_bytes([i])) for i in range(n)]
            self._token_bytes = table + [b""] * (self.vocab_size - n)
        return self._token_bytes
