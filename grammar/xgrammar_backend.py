"""The default backend: xgrammar (Dong et al. 2024, "XGrammar: Flexible and Efficient Structured Generation
Engine for Large Language Models", arXiv:2411.15100) — a byte-level pushdown automaton with context-independent
tokens precomputed per grammar, so filling a bitmask costs a few microseconds per row.

Kinds:
    json_schema: ``Grammar.from_json_schema`` with ``strict_mode=False``: JSON Schema's own defaults (an object
        takes unlisted properties unless ``additionalProperties`` / ``unevaluatedProperties`` forbid them, an
        array without ``items`` takes any items); closed objects are opt-in (``schema_strict``). Whitespace
        (grammar/whitespace.py): masks come from a compact grammar — ``any_whitespace=False`` (the default here)
        fixes the separators to ``", "`` and ``": "`` with no other whitespace, so a model cannot pad a document
        forever; ``any_whitespace=True`` allows at most ``MAX_WHITESPACE`` whitespace characters in a row — and a
        token only a whitespace-flexible grammar accepts switches the matcher to that one (compiled on demand,
        any JSON whitespace).
    json_object: any JSON object (the JSON schema ``{"type": "object"}``), same whitespace rule.
    regex: ``Grammar.from_regex`` (the whole output must match; ECMAScript-like syntax, no backreferences or
        ``\\p{..}`` classes).
    ebnf: ``Grammar.from_ebnf`` with xgrammar's GBNF dialect, root rule ``root``.

Every kind is converted to an xgrammar ``Grammar`` first, its length-bounded JSON string characters made JSON's
own (no raw control characters, escapes allowed) and its bounded and ``{n,}`` repetitions unrolled
(grammar/ebnf_rewrite.py: bitmask fills ~100x cheaper inside ``minLength`` / ``maxLength`` strings), then
compiled with ``compile_grammar``; one mask is filled right away, on the compile thread, because the first fill
of a compiled grammar initialises xgrammar's caches for it.

The tokenizer is described once per backend (``TokenizerInfo.from_huggingface`` with the model's vocabulary
size, so padding ids are never allowed, and every eos id as a stop token).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import torch
import xgrammar as xgr

from radixgen.grammar.base import CompiledGrammar, GrammarError, GrammarMatcher, TokenizerBackend
from radixgen.grammar.ebnf_rewrite import json_string_characters, unroll_bounded_repeats
from radixgen.grammar.schema_support import XGRAMMAR_SUPPORT
from radixgen.grammar.whitespace import FlexibleWhitespaceCompiled

MAX_WHITESPACE = 4


def _message(e: Exception) -> str:
    """xgrammar's C++ errors start with a ``[time] file.cc:line:`` prefix; keep the human part."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "] " in text and ".cc:" in text:
        text = text.split(": ", 1)[-1] if ".cc:" in text.split(": ", 1)[0] else text
    return text


def _unrolled(grammar: xgr.Grammar) -> xgr.Grammar:
    """``grammar`` with JSON's own characters in length-bounded strings and its bounded repetitions unrolled
    (grammar/ebnf_rewrite.py: ``json_string_characters``, ``unroll_bounded_repeats``: bitmask fills ~100x
    cheaper inside ``maxLength`` strings); ``grammar`` itself when neither applies."""
    text = str(grammar)
    rewritten = unroll_bounded_repeats(json_string_characters(text))
    return grammar if rewritten is text else xgr.Grammar.from_ebnf(rewritten)


class XGrammarMatcher(GrammarMatcher):
    """Wraps ``xgrammar.GrammarMatcher`` (unlimited rollback)."""

    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        self._m = xgr.GrammarMatcher(compiled)

    def accept_token(self, token_id: int) -> bool:
        return bool(self._m.accept_token(token_id))

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return bool(self._m.is_terminated())

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0:
            try:
                self._m.rollback(num_tokens)
            except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError
                raise ValueError(f"rollback({num_tokens}): {_message(e)}") from None

    def find_jump_forward_string(self) -> str:
        try:
            return str(self._m.find_jump_forward_string())
        except UnicodeDecodeError:  # the forced bytes end inside a UTF-8 character (e.g. [αβ]: both start 0xCE)
            return ""


class XGrammarCompiled(CompiledGrammar):
    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        self.compiled = compiled

    def matcher(self) -> GrammarMatcher:
        return XGrammarMatcher(self.compiled)


class XGrammarBackend(TokenizerBackend):
    """xgrammar for one Hugging Face tokenizer (arguments: :class:`~radixgen.grammar.base.TokenizerBackend`)."""

    name = "xgrammar"
    support = XGRAMMAR_SUPPORT

    def _setup(self) -> None:
        self.info = xgr.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=list(self.stop_ids)
        )
        # our own LRU (cache.py) sits in front; xgrammar's cache would hold a second copy
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self._token_bytes: list[bytes] | None = None

    @staticmethod
    def check_syntax(kind: str, spec: str) -> None:
        """xgrammar's own parsers (no tokenizer needed): regex, EBNF, and the JSON-schema converter.

        Raises:
            GrammarError: naming the field and xgrammar's message.
        """
        try:
            if kind == "regex":
                xgr.Grammar.from_regex(spec)
            elif kind == "ebnf":
                xgr.Grammar.from_ebnf(spec)
            elif kind == "json_schema":
                xgr.Grammar.from_json_schema(spec, any_whitespace=False, strict_mode=False)
            elif kind == "structural_tag":
                _structural_tag_grammar(spec)
        except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError / InvalidJSONError / ValueError
            raise GrammarError(f"{kind}: {_message(e)}") from None

    def compile(self, kind: str, spec: str) -> CompiledGrammar:
        if kind in ("json_schema", "json_object"):
            compact = self._compile(kind, spec, flexible=False)
            return FlexibleWhitespaceCompiled(compact, lambda: self._compile(kind, spec, flexible=True))
        return self._compile(kind, spec, flexible=False)

    def _compile(self, kind: str, spec: str, flexible: bool) -> CompiledGrammar:
        """One grammar; JSON kinds with the compact whitespace rule, or any whitespace when ``flexible``."""
        ws: dict[str, Any] = {"any_whitespace": self.any_whitespace or flexible}
        if self.any_whitespace and not flexible:
            ws["max_whitespace_cnt"] = MAX_WHITESPACE
        try:
            if kind == "json_schema":
                grammar = xgr.Grammar.from_json_schema(spec, strict_mode=False, **ws)
            elif kind == "json_object":
                grammar = xgr.Grammar.from_json_schema(json.dumps({"type": "object"}), strict_mode=False, **ws)
            elif kind == "regex":
                grammar = xgr.Grammar.from_regex(spec)
            elif kind == "ebnf":
                grammar = xgr.Grammar.from_ebnf(spec)
            elif kind == "structural_tag":
                grammar = _structural_tag_grammar(spec)
            else:
                raise GrammarError(f"grammar: unknown constraint kind {kind!r}")
            out = self.compiler.compile_grammar(_unrolled(grammar))
        except GrammarError:
            raise
        except Exception as e:  # noqa: BLE001
            raise GrammarError(f"{kind}: {_message(e)}") from None
        # the first mask a compiled grammar fills initialises xgrammar's per-grammar caches (~0.1-10 ms): do it
        # here, on the compile thread, rather than in the first decode step of the first request
        xgr.GrammarMatcher(out).fill_next_token_bitmask(xgr.allocate_token_bitmask(1, self.vocab_size))
        return XGrammarCompiled(out)

    @property
    def token_bytes(self) -> list[bytes]:
        if self._token_bytes is None:
            special = set(self.info.special_token_ids) | set(self.info.stop_token_ids)
            special |= set(getattr(self.tokenizer, "all_special_ids", []) or [])
            decoded = list(self.info.decoded_vocab)
            decoded += [b""] * (self.vocab_size - len(decoded))
            self._token_bytes = [b"" if i in special else bytes(b) for i, b in enumerate(decoded[: self.vocab_size])]
        return self._token_bytes


def _structural_tag_grammar(spec: str) -> Any:
    """xgrammar's grammar of a structural tag in SGLang's two forms: the legacy ``structures`` + ``triggers`` (each
    structure ``begin`` + a JSON-schema ``schema`` + ``end``; free text outside them) or xgrammar's ``format``.

    Raises:
        Whatever xgrammar raises for an invalid tag (the caller names the field).
    """
    tag = json.loads(spec)
    if "format" in tag:
        return xgr.Grammar.from_structural_tag(spec)
    items = [
        xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(s.get("schema", s.get("parameters"))), end=s["end"])
        for s in tag["structures"]
    ]
    with warnings.catch_warnings():  # the legacy call form is deprecated in xgrammar, not in SGLang's API
        warnings.simplefilter("ignore", DeprecationWarning)
        return xgr.Grammar.from_structural_tag(items, tag["triggers"])
