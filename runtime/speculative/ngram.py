"""N-gram (prompt-lookup) proposals: copy what followed the most recent earlier occurrence of the sequence's tail.

Prompt lookup decoding (Saxena 2023; vLLM's ``ngram`` proposer, SGLang's ``NGRAM`` algorithm): outputs of
extraction, editing, RAG and agent workloads repeat spans of their inputs, so the tokens that followed an earlier
occurrence of the last few tokens are good guesses for the next ones. No model runs: a proposal costs a few numpy
comparisons over the request's own prompt + output.
"""

from __future__ import annotations

import numpy as np

from radixgen.runtime.req import Req
from radixgen.runtime.speculative.base import Draft
from radixgen.runtime.speculative.grammar_draft import DraftGrammar


class NgramProposer:
    """Longest-suffix-match proposer over a request's own tokens.

    Args:
        min_window: shortest suffix n-gram that must match (``speculative_ngram_min_match_window_size``).
        max_window: longest suffix n-gram tried (``speculative_ngram_max_match_window_size``).

    Raises:
        ValueError: ``min_window < 1`` or ``min_window > max_window``.
    """

    def __init__(self, min_window: int, max_window: int) -> None:
        if not 1 <= min_window <= max_window:
            raise ValueError(f"ngram windows: need 1 <= min ({min_window}) <= max ({max_window})")
        self.min_window = min_window
        self.max_window = max_window

    def propose(self, seq: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest matching suffix of ``seq``.

        Among the earlier positions where the last ``n`` tokens of ``seq`` also occur (``min_window <= n <=
        max_window``, an occurrence must end before the last token), the one with the longest ``n`` wins, ties
        going to the most recent; the proposal is the ``k`` tokens that followed it, continued past the end of
        ``seq`` as an overlapping copy (a match ending ``p`` tokens before the end proposes the period-``p``
        repetition: loops, lists and runs of a repeated token keep full-length proposals).

        Args:
            seq: the request's prompt + output token ids.
            k: the most tokens to propose (``<= 0`` proposes nothing).

        Returns:
            The proposed token ids (empty when no suffix of ``min_window`` tokens recurs).
        """
        n = len(seq)
        if k <= 0 or n <= self.min_window:
            return []
        arr = np.asarray(seq, dtype=np.int64)
        # candidate ends j (< n - 1): arr[j] == arr[n - 1]; extend the match backwards while it holds
        cand = np.flatnonzero(arr[: n - 1] == arr[n - 1])
        length = 1
        while cand.size and length < self.max_window:
            prev = cand - length
            ok = prev >= 0
            ok[ok] = arr[prev[ok]] == arr[n - 1 - length]
            if not ok.any():
                break
            cand = cand[ok]
            length += 1
        if cand.size == 0 or length < self.min_window:
            return []
        j = int(cand[-1])  # the most recent occurrence of the longest match
        # what followed it; past the end of seq the copy reads its own output (an overlapping, LZ77-style copy), so
        # a match ending p tokens before the end continues the period-p repetition instead of stopping short
        out: list[int] = []
        for i in range(j + 1, j + 1 + k):
            out.append(seq[i] if i < n else out[i - n])
        return out


class NgramSpeculator:
    """The n-gram ``Proposer`` of SpecWorker (runtime/speculative/base.py): stateless, one lookup per request.

    Args:
        min_window / max_window: see NgramProposer.
    """

    def __init__(self, min_window: int, max_window: int) -> None:
        self.lookup = NgramProposer(min_window, max_window)

    def propose(self, reqs: list[Req], ks: list[int], grammars: list[DraftGrammar | None]) -> list[Draft]:
        """Per request the lookup's proposal, cut at the first token its grammar refuses."""
        drafts: list[Draft] = []
        for req, k, g in zip(reqs, ks, grammars, strict=True):
            tokens = self.lookup.propose(req.seq(), k) if k > 0 else []
            if g is not None:
                kept = 0
                while kept < len(tokens) and g.advance(tokens[kept]):
                    kept += 1
                tokens = tokens[:kept]
            drafts.append(Draft(tokens))
        return drafts

    def commit(self, req: Req) -> None:
        """Nothing to update: the lookup reads the request's committed sequence each step."""

    def release(self, req: Req) -> None:
        """Nothing held."""

    def check_integrity(self, reqs: list[Req]) -> None:
        """Nothing held, nothing to check."""
