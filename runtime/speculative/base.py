"""What every proposer returns (Draft) and what SpecWorker needs from a proposer (Proposer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from radixgen.runtime.req import Req
from radixgen.runtime.speculative.grammar_draft import DraftGrammar


@dataclass
class Draft:
    """One request's proposal: ``tokens`` ``d_1..d_K``; ``probs`` float32 ``[K, V]`` the draft model's processed
    distributions they were drawn from, or None for deterministic (n-gram) proposals."""

    tokens: list[int]
    probs: torch.Tensor | None = None


class Proposer(Protocol):
    """What SpecWorker needs from a proposer."""

    def propose(self, reqs: list[Req], ks: list[int], grammars: list[DraftGrammar | None]) -> list[Draft]:
        """At most ``ks[i]`` tokens for ``reqs[i]``, each offered to ``grammars[i]`` (when not None) in order and
        the draft ended at the first one it refuses."""
        ...

    def commit(self, req: Req) -> None:
        """``req``'s outputs changed (tokens committed): drop state that no longer matches its sequence."""
        ...

    def release(self, req: Req) -> None:
        """``req`` gives back its memory (finished, retracted, aborted)."""
        ...

    def check_integrity(self, reqs: list[Req]) -> None:
        """Assert the proposer's own memory accounting, given the live requests ``reqs``."""
        ...
