"""JSON whitespace: generate the compact form, accept any valid whitespace.

A JSON grammar that allows whitespace between every token lets a model pad a document (or loop on newlines)
until ``max_new_tokens``; so the masks radixgen samples from allow only the compact form with fixed ``", "`` and
``": "`` separators (token-cheap, and what ``json.dumps`` writes). But any whitespace is valid JSON, and tokens
the model did not sample under that mask can reach a matcher: a document checked against its schema, text a
client supplies, a retokenization. Refusing them would reject valid JSON.

:class:`FlexibleWhitespaceCompiled` pairs the compact grammar with a whitespace-flexible one of the same
schema, compiled only the first time it is needed (the compact grammar refuses a token). Its matcher follows
the compact grammar while every accepted token fits it — masks stay compact — and when a token fits only the
flexible grammar, it replays the accepted tokens into a flexible matcher and continues there (masks then allow
whitespace, bounded by the backend's ``max_whitespace``). Rolling back past that token returns to the compact
matcher. Both grammars enforce the same schema: only whitespace between tokens differs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from radixgen.grammar.base import CompiledGrammar, GrammarMatcher


class FlexibleWhitespaceCompiled(CompiledGrammar):
    """A compact grammar plus a lazily compiled whitespace-flexible twin (module docstring).

    Args:
        compact: the grammar masks are filled from.
        make_flexible: compiles the same constraint with any whitespace allowed (called at most once, by the
            first matcher that needs it; thread-safe).
    """

    def __init__(self, compact: CompiledGrammar, make_flexible: Callable[[], CompiledGrammar]) -> None:
        self.compact = compact
        self._make_flexible = make_flexible
        self._flexible: CompiledGrammar | None = None
        self._lock = threading.Lock()

    def flexible(self) -> CompiledGrammar:
        """The whitespace-flexible grammar (compiled on first use)."""
        with self._lock:
            if self._flexible is None:
                self._flexible = self._make_flexible()
            return self._flexible

    def matcher(self) -> GrammarMatcher:
        return FlexibleWhitespaceMatcher(self)


class FlexibleWhitespaceMatcher(GrammarMatcher):
    """Compact while the accepted tokens are compact, flexible after the first one that is not."""

    def __init__(self, grammar: FlexibleWhitespaceCompiled) -> None:
        self._g = grammar
        self._compact = grammar.compact.matcher()
        self._flexible: GrammarMatcher | None = None
        self._history: list[int] = []
        self._synced = 0  # tokens of _history the compact matcher has accepted

    @property
    def _active(self) -> GrammarMatcher:
        return self._flexible if self._flexible is not None else self._compact

    def accept_token(self, token_id: int) -> bool:
        if self._flexible is None:
            if self._compact.accept_token(token_id):
                self._history.append(token_id)
                self._synced += 1
                return True
            flexible = self._g.flexible().matcher()
            if not all(flexible.accept_token(t) for t in self._history) or not flexible.accept_token(token_id):
                return False
            self._flexible = flexible
        elif not self._flexible.accept_token(token_id):
            return False
        self._history.append(token_id)
        return True

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._active.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return self._active.is_terminated()

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        if num_tokens > len(self._history):
            raise ValueError(f"rollback({num_tokens}): only {len(self._history)} tokens accepted")
        keep = len(self._history) - num_tokens
        if self._flexible is not None:
            self._flexible.rollback(num_tokens)
            if keep <= self._synced:
                self._flexible = None
                self._compact.rollback(self._synced - keep)
                self._synced = keep
        else:
            self._compact.rollback(num_tokens)
            self._synced = keep
        del self._history[keep:]

    def find_jump_forward_string(self) -> str:
        return self._active.find_jump_forward_string()
