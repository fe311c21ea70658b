"""How ``select`` turns per-choice token logprobs into a decision (the three methods of SGLang's ``choices.py``).

Input: for each choice, the logprobs of its tokens given the prompt (``[num_choices][choice_len]``, natural log);
for ``unconditional_likelihood_normalized`` also the same tokens' logprobs without the prompt.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChoicesDecision:
    """The chosen index, one score per choice (higher = better), and extra per-method meta info."""

    index: int
    scores: list[float]
    meta: dict[str, Any] = field(default_factory=dict)


class ChoicesMethod:
    """Base class: ``__call__(logprobs, unconditional, temperature, rng) -> ChoicesDecision``; a method defines
    ``scores`` and may override ``pick`` (how the index is chosen from the scores)."""

    name = "base"
    requires_unconditional_logprobs = False

    def scores(self, logprobs: list[list[float]], unconditional: list[list[float]] | None) -> list[float]:
        raise NotImplementedError

    def __call__(
        self,
        logprobs: list[list[float]],
        unconditional: list[list[float]] | None = None,
        temperature: float = 0.0,
        rng: random.Random | None = None,
    ) -> ChoicesDecision:
        if not logprobs or any(len(lp) == 0 for lp in logprobs):
            raise ValueError("choices: every choice needs at least one token logprob")
        if self.requires_unconditional_logprobs and (unconditional is None or len(unconditional) != len(logprobs)):
            raise ValueError(f"{self.name}: needs the choices' unconditional logprobs")
        scores = self.scores(logprobs, unconditional)
        return ChoicesDecision(self.pick(logprobs, scores, temperature, rng), scores, {"choices_method": self.name})

    def pick(
        self, logprobs: list[list[float]], scores: list[float], temperature: float, rng: random.Random | None
    ) -> int:
        """The chosen index: argmax of ``scores`` (first on ties) at temperature 0, else a sample from
        softmax(scores / temperature)."""
        if temperature <= 0:
            return max(range(len(scores)), key=lambda i: (scores[i], -i))
        top = max(scores)
        weights = [math.exp((s - top) / temperature) for s in scores]
        return (rng or random.Random()).choices(range(len(scores)), weights=weights)[0]

    def __repr__(self) -> str:
        return f"<ChoicesMethod {self.name}>"


class TokenLengthNormalized(ChoicesMethod):
    """Mean logprob per token of each choice (SGLang's default; removes the bias towards short choices)."""

    name = "token_length_normalized"

    def scores(self, logprobs: list[list[float]], unconditional: list[list[float]] | None) -> list[float]:
        return [sum(lp) / len(lp) for lp in logprobs]


class GreedyTokenSelection(ChoicesMethod):
    """Token-by-token greedy: keep the choices with the best logprob at each position until one remains.

    A choice shorter than the position being compared is extended with its own mean logprob (SGLang's rule for
    a choice that is a prefix of a longer one). Scores: the mean logprob; the decision is the greedy survivor.
    """

    name = "greedy_token_selection"
    scores = TokenLengthNormalized.scores

    def pick(
        self, logprobs: list[list[float]], scores: list[float], temperature: float, rng: random.Random | None
    ) -> int:
        """The greedy survivor at temperature 0 (``scores`` are the means); else a sample, like the other methods."""
        if temperature > 0:
            return super().pick(logprobs, scores, temperature, rng)
        alive = list(range(len(logprobs)))
        for pos in range(max(len(lp) for lp in logprobs)):
            at = {i: (logprobs[i][pos] if pos < len(logprobs[i]) else scores[i]) for i in alive}
            best = max(at.values())
            alive = [i for i in alive if at[i] == best]
            if len(alive) == 1:
                break
        return alive[0]


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    """Mean over tokens of (logprob given the prompt − logprob without it): PMI-style, favours choices the prompt
    makes likelier rather than ones that are likely anyway (Holtzman et al. 2021, "Surface Form Competition")."""

    name = "unconditional_likelihood_normalized"
    requires_unconditional_logprobs = True

    def scores(self, logprobs: list[list[float]], unconditional: list[list[float]] | None) -> list[float]:
        assert unconditional is not None
        out = []
        for cond, uncond in zip(logprobs, unconditional, strict=True):
            if len(cond) != len(uncond):
                raise ValueError("unconditional_likelihood_normalized: logprob lists differ in length")
            out.append(sum(c - u for c, u in zip(cond, uncond, strict=True)) / len(cond))
        return out


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()

CHOICES_METHODS: dict[str, ChoicesMethod] = {
    m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)
}


def resolve_choices_method(method: ChoicesMethod | str | None) -> ChoicesMethod:
    """A method object from its name (None = token_length_normalized). Raises ValueError for unknown names."""
    if method is None:
        return token_length_normalized
    if isinstance(method, ChoicesMethod):
        return method
    if isinstance(method, str) and method in CHOICES_METHODS:
        return CHOICES_METHODS[method]
    raise ValueError(f"choices_method: must be one of {sorted(CHOICES_METHODS)} (got {method!r})")
