"""The default backend: xgrammar (Dong et al. 2024, "XGrammar: Flexible and Efficient Structured Generation
Engine for Large Language Models", arXiv:2411.15100) — a byte-level pushdown automaton with context-independent
tokens precomputed per grammar, so filling a bitmask costs a few microseconds per row.

Kinds:
    json_schema: ``Grammar.from_json_schema`` in strict mode (``additionalProperties`` and ``items``
        default to false, as OpenAI's strict structured outputs: a subset of the valid documents). Whitespace:
        ``any_whitespace=False`` (the default here) fixes the separators to ``", "`` and ``": "`` with no other
        whitespace, so a model cannot pad a document forever; ``any_whitespace=True`` allows JSON whitespace
        between tokens (at most ``MAX_WHITESPACE`` characters in a row).
    json_object: any JSON object (the JSON schema ``{"type": "object"}``), same whitespace rule.
    regex: ``Grammar.from_regex`` (the whole output must match; ECMAScript-like syntax, no backreferences or
        ``\\p{..}`` classes).
    ebnf: ``Grammar.from_ebnf`` with xgrammar's GBNF dialect, root rule ``root``.

Every kind is converted to an xgrammar ``Grammar`` first and its bounded repetitions unrolled
(grammar/ebnf_rewrite.py: the same language, bitmask fills ~100x cheaper inside ``maxLength`` strings), then
compiled with ``compile_grammar``.

The tokenizer is described once per backend (``TokenizerInfo.from_huggingface`` with the model's vocabulary
size, so padding ids are never allowed, and every eos id as a stop token).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import torch
import xgrammar as xgr

from radixgen.grammar.base import CompiledGrammar, GrammarError, GrammarMatcher, TokenizerBackend, bitmask_width
from radixgen.grammar.ebnf_rewrite import unroll_bounded_repeats
from radixgen.grammar.schema_support import XGRAMMAR_SUPPORT

MAX_WHITESPACE = 4


def _message(e: Exception) -> str:
    """xgrammar's C++ errors start with a ``[time] file.cc:line:`` prefix; keep the human part."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "] " in text and ".cc:" in text:
        text = text.split(": ", 1)[-1] if ".cc:" in text.split(": ", 1)[0] else text
    return text


def _unrolled(grammar: xgr.Grammar) -> xgr.Grammar:
    """``grammar`` with its bounded repetitions unrolled (grammar/ebnf_rewrite.py: same language, bitmask fills
    ~100x cheaper inside ``maxLength`` strings); ``grammar`` itself when it has none."""
    text = str(grammar)
    unrolled = unroll_bounded_repeats(text)
    return grammar if unrolled is text else xgr.Grammar.from_ebnf(unrolled)


class XGrammarMatcher(GrammarMatcher):
    """Wraps ``xgrammar.GrammarMatcher`` (unlimited rollback). ``allowed``: an optional static int32 ``[W]``
    bitmask ANDed into every row it fills (see :meth:`XGrammarBackend.json_token_mask`)."""

    def __init__(self, compiled: xgr.CompiledGrammar, allowed: torch.Tensor | None = None) -> None:
        self._m = xgr.GrammarMatcher(compiled)
        self._allowed = allowed

    def accept_token(self, token_id: int) -> bool:
        return bool(self._m.accept_token(token_id))

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)
        if self._allowed is not None:
            bitmask[row] &= self._allowed

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
    def __init__(self, compiled: xgr.CompiledGrammar, allowed: torch.Tensor | None = None) -> None:
        self.compiled = compiled
        self.allowed = allowed

    def matcher(self) -> GrammarMatcher:
        return XGrammarMatcher(self.compiled, self.allowed)


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
        self._json_mask: torch.Tensor | None = None

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
                xgr.Grammar.from_json_schema(spec, any_whitespace=False, strict_mode=True)
            elif kind == "structural_tag":
                _structural_tag_grammar(spec)
        except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError / InvalidJSONError / ValueError
            raise GrammarError(f"{kind}: {_message(e)}") from None

    def compile(self, kind: str, spec: str) -> CompiledGrammar:
        ws: dict[str, Any] = {"any_whitespace": self.any_whitespace}
        if self.any_whitespace:
            ws["max_whitespace_cnt"] = MAX_WHITESPACE
        try:
            if kind == "json_schema":
                grammar = xgr.Grammar.from_json_schema(spec, strict_mode=True, **ws)
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
        return XGrammarCompiled(out, self.json_token_mask() if kind in ("json_schema", "json_object") else None)

    def json_token_mask(self) -> torch.Tensor:
        """int32 ``[ceil(V / 32)]``: tokens without raw control characters (bytes < 0x20; with
        ``any_whitespace`` tab, newline and carriage return are kept). JSON never contains them outside
        whitespace, but xgrammar 0.2.8's ``minLength``/``maxLength`` strings accept them (``[^"\\\r\n]``)."""
        if self._json_mask is None:
            keep = {9, 10, 13} if self.any_whitespace else set()
            bad = [i for i, b in enumerate(self.token_bytes) if any(c < 0x20 and c not in keep for c in b)]
            words = torch.full((bitmask_width(self.vocab_size),), -1, dtype=torch.int64) & 0xFFFFFFFF
            if bad:
                t = torch.tensor(bad, dtype=torch.int64)
                words.index_add_(0, t >> 5, -(torch.ones_like(t) << (t & 31)))  # clear each bad bit once
            self._json_mask = words.to(torch.int32)
        return self._json_mask

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
