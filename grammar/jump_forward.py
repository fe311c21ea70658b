"""Jump-forward decoding: append the continuation a grammar forces without a forward pass per token.

After SGLang's compressed finite-state machine (Zheng et al. 2024, "SGLang: Efficient Execution of Structured
Language Model Programs", arXiv:2312.07104, §4): when the matcher admits exactly one continuation string, the
string is appended at once. Token boundaries matter: the forced text would often merge with the tail of what
was already generated (``{`` + ``"name": "`` is canonically ``{"`` ``name`` ``":`` `` "``), so the last few
output tokens are re-tokenized together with the forced string, the matcher is rolled back over the tokens that
change and fed the new ones. Every retokenization is checked byte for byte against the backend's token table
(``GrammarBackend.token_bytes``); when the check fails the tail is left as is, and when even the forced string
alone does not tokenize back to itself the jump is skipped (the model then decodes it token by token, under the
mask, which is always correct).
"""

from __future__ import annotations

from dataclasses import dataclass

from radixgen.grammar.base import GrammarBackend, GrammarMatcher


@dataclass(frozen=True)
class Jump:
    """Replace the last ``num_removed`` output tokens by ``new_ids`` (the matcher has already been advanced)."""

    num_removed: int
    new_ids: list[int]

    @property
    def num_added(self) -> int:
        """Net tokens added without a forward."""
        return len(self.new_ids) - self.num_removed


def _spell(backend: GrammarBackend, ids: list[int]) -> bytes | None:
    table = backend.token_bytes
    parts = [table[t] if 0 <= t < len(table) else b"" for t in ids]
    return None if any(not p for p in parts) else b"".join(parts)


def _tokenize(backend: GrammarBackend, target: bytes) -> list[int] | None:
    try:
        text = target.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ids = backend.encode(text)
    return ids if ids and _spell(backend, ids) == target else None


def plan_jump(backend: GrammarBackend, tail_ids: list[int], forced: str) -> Jump | None:
    """Canonical tokens for ``bytes(tail_ids) + forced``, as a replacement of the tail.

    Args:
        backend: gives the token byte table and the tokenizer.
        tail_ids: the last output tokens that may be re-tokenized (already accepted by the matcher).
        forced: the matcher's jump-forward string (non-empty).

    Returns:
        The replacement (tokens shared with the tail's start are kept, not replaced), or None when no
        tokenization of the forced string spells it exactly.
    """
    if not forced:
        return None
    tail = _spell(backend, tail_ids) if tail_ids else b""
    if tail:
        ids = _tokenize(backend, tail + forced.encode("utf-8"))
        if ids is not None:
            keep = 0
            while keep < min(len(ids), len(tail_ids)) and ids[keep] == tail_ids[keep]:
                keep += 1
            if keep < len(ids):
                return Jump(len(tail_ids) - keep, ids[keep:])
    ids = _tokenize(backend, forced.encode("utf-8"))
    return Jump(0, ids) if ids is not None else None


def apply_jump(matcher: GrammarMatcher, jump: Jump, removed_ids: list[int]) -> bool:
    """Roll ``matcher`` back over the removed tokens and accept the new ones; all or nothing.

    Args:
        removed_ids: the ``jump.num_removed`` tokens being replaced (to restore the matcher on failure).

    Returns:
        False (matcher unchanged) when the grammar refuses a new token.
    """
    matcher.rollback(jump.num_removed)
    accepted = 0
    for t in jump.new_ids:
        if not matcher.accept_token(t):
            matcher.rollback(accepted)
            for r in removed_ids:
                matcher.accept_token(r)
            return False
        accepted += 1
    return True


def jump_forward(
    backend: GrammarBackend, matcher: GrammarMatcher, output_ids: list[int], retokenize: int, budget: int
) -> Jump | None:
    """Find, tokenize and accept the forced continuation of ``matcher``.

    Args:
        output_ids: the request's outputs so far (all accepted by ``matcher``); not modified.
        retokenize: how many of the last outputs may be replaced (0 = append only).
        budget: tokens the request may still add (``max_new_tokens - len(output_ids)``).

    Returns:
        The jump (the matcher already advanced), or None: nothing forced, no exact tokenization, or no net
        token fits the budget.
    """
    forced = matcher.find_jump_forward_string()
    if not forced:
        return None
    tail = output_ids[len(output_ids) - retokenize :] if retokenize > 0 else []
    jump = plan_jump(backend, tail, forced)
    if jump is None:
        return None
    keep_budget = budget + jump.num_removed
    if len(jump.new_ids) > keep_budget:
        jump = Jump(jump.num_removed, jump.new_ids[:keep_budget])
    if jump.num_added <= 0:
        return None
    removed = tail[len(tail) - jump.num_removed :] if jump.num_removed else []
    return jump if apply_jump(matcher, jump, removed) else None
