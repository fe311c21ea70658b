"""Walks a grammar-constrained request's matcher along its draft: ends the draft at the first forbidden token and
records the token mask of every position the target verifies.

Position ``j`` (0-based) of a verify forward predicts the token after ``d_1..d_j``; its mask is the matcher's
bitmask in that state. The matcher is rolled back afterwards, so it has accepted exactly the committed outputs
again (the scheduler feeds it the emitted tokens as for any sampled token).
"""

from __future__ import annotations

import torch

from radixgen.grammar.base import GrammarMatcher, bitmask_width


class DraftGrammar:
    """One request's matcher walk over at most ``k`` draft tokens.

    Args:
        matcher: the request's matcher (it has accepted exactly the request's outputs).
        k: the most draft tokens that will be offered.
        vocab_size: V (bitmask width ``ceil(V / 32)``).

    Attributes:
        bitmask: int32 ``[k + 1, ceil(V / 32)]``; row ``j`` is the mask of verify position ``j`` once filled.
        accepted: draft tokens accepted so far.
    """

    def __init__(self, matcher: GrammarMatcher, k: int, vocab_size: int) -> None:
        self.matcher = matcher
        self.bitmask = torch.zeros((k + 1, bitmask_width(vocab_size)), dtype=torch.int32)
        self.accepted = 0
        self.done = False
        self._filled = -1

    def mask(self) -> torch.Tensor:
        """int32 ``[ceil(V / 32)]`` the mask of the next position (filled on first use)."""
        if self._filled < self.accepted:
            self.matcher.fill_next_token_bitmask(self.bitmask, self.accepted)
            self._filled = self.accepted
        return self.bitmask[self.accepted]

    def advance(self, token: int) -> bool:
        """Offer the next draft token. False (and the walk is over) when the grammar forbids it, or when it ends
        the grammar (a stop token is left for the target to sample, so the verified masks stay non-empty)."""
        if self.done or self.accepted + 1 >= self.bitmask.shape[0]:
            self.done = True
            return False
        self.mask()
        if not self.matcher.accept_token(token):
            self.done = True
            return False
        if self.matcher.is_terminated():
            self.matcher.rollback(1)
            self.done = True
            return False
        self.accepted += 1
        return True

    def finish(self) -> torch.Tensor:
        """Fill the last position's mask, roll the matcher back to the committed outputs, and return the masks of
        the ``accepted + 1`` verify positions: int32 ``[accepted + 1, ceil(V / 32)]``."""
        self.mask()
        if self.accepted:
            self.matcher.rollback(self.accepted)
        self.done = True
        return self.bitmask[: self.accepted + 1]
