"""Repetition, frequency and presence penalties over a batch, as dense per-row tensors.

Semantics (the same as vLLM / SGLang / Hugging Face):

* repetition penalty ``r`` (Keskar et al. 2019, "CTRL", arXiv:1909.05858; HF
  ``RepetitionPenaltyLogitsProcessor``): for every token that occurs in the prompt or in the output so far,
  a positive logit is divided by ``r`` and a negative logit is multiplied by ``r``.
* frequency penalty ``f`` and presence penalty ``p`` (OpenAI API, "Parameter details"): over the *output*
  tokens only, ``logit[t] -= f * count[t] + p * (count[t] > 0)``.

The tensors are built only for the rows that use a penalty, and each kind only if some row uses it, so an
unpenalised batch costs nothing (``PenaltyTensors.build`` returns ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixgen.runtime.sampling_params import SamplingParams


def flat_row_tokens(
    seqs: Sequence[Sequence[int]], vocab_size: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten ragged token lists into (row index, token id) pairs, on the CPU.

    Args:
        seqs: ``n`` lists of token ids.
        vocab_size: ids must lie in ``[0, vocab_size)``.
        what: name used in the error message.

    Returns:
        ``(rows, ids)``: int64 ``[T]`` each, ``T = sum(len(s) for s in seqs)``; ``rows[j]`` is the index in
        ``seqs`` that ``ids[j]`` came from.

    Raises:
        ValueError: an id is outside ``[0, vocab_size)``.
    """
    ids = torch.tensor(list(chain.from_iterable(seqs)), dtype=torch.int64)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    rows = torch.repeat_interleave(torch.arange(len(seqs), dtype=torch.int64), lengths)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0].item()
        raise ValueError(f"{what}: token id {bad} out of range [0, {vocab_size})")
    return rows, ids


@dataclass
class PenaltyTensors:
    """Penalty state of the ``n`` penalised rows of a batch of ``bs`` rows and ``V`` vocabulary entries.

    Attributes:
        rows: int64 ``[n]`` the penalised rows' indices in the batch, or ``None`` when ``n == bs``.
        frequency: float32 ``[n, 1]`` frequency penalties (0 = off), or ``None`` if no row uses
            frequency or presence penalties.
        presence: float32 ``[n, 1]`` presence penalties (0 = off); ``None`` together with ``frequency``.
        counts: float32 ``[n, V]`` occurrences of each token in each row's output; ``None`` with
            ``frequency``.
        repetition: float32 ``[n, 1]`` repetition penalties (1 = off), or ``None`` if no row uses one.
        repetition_mask: bool ``[n, V]`` token occurs in the row's prompt or output; ``None`` with
            ``repetition``.
    """

    rows: torch.Tensor | None
    frequency: torch.Tensor | None
    presence: torch.Tensor | None
    counts: torch.Tensor | None
    repetition: torch.Tensor | None
    repetition_mask: torch.Tensor | None

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        output_ids: Sequence[Sequence[int]],
        prompt_ids: Sequence[Sequence[int]],
        vocab_size: int,
        device: torch.device,
    ) -> PenaltyTensors | None:
        """Build the tensors for the rows of ``params`` that use a penalty; ``None`` if none does.

        Counting is vectorised (``torch.bincount`` over ``row * V + token``); the only Python iteration is
        the flattening of the ragged id lists.

        Raises:
            ValueError: an output or prompt token id is outside ``[0, vocab_size)``.
        """
        use_fp = [p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params]
        use_rep = [p.repetition_penalty != 1.0 for p in params]
        sel = [i for i in range(len(params)) if use_fp[i] or use_rep[i]]
        if not sel:
            return None
        n, V = len(sel), vocab_size
        rows = None if n == len(params) else torch.tensor(sel, dtype=torch.int64, device=device)
        frequency = presence = counts = repetition = repetition_mask = None
        if any(use_fp):
            frequency = _column([params[i].frequency_penalty for i in sel], device)
            presence = _column([params[i].presence_penalty for i in sel], device)
            r, t = flat_row_tokens([output_ids[i] for i in sel], V, "output_ids")
            flat = (r * V + t).to(device)
            counts = torch.bincount(flat, minlength=n * V).view(n, V).to(torch.float32)
        if any(use_rep):
            repetition = _column([params[i].repetition_penalty for i in sel], device)
            seqs = [list(prompt_ids[i]) + list(output_ids[i]) for i in sel]
            r, t = flat_row_tokens(seqs, V, "prompt_ids/output_ids")
            repetition_mask = torch.zeros((n, V), dtype=torch.bool, device=device)
            repetition_mask[r.to(device), t.to(device)] = True
        return cls(rows, frequency, presence, counts, repetition, repetition_mask)

    def apply(self, logits: torch.Tensor) -> None:
        """Apply the penalties to ``logits`` (float32 ``[bs, V]``) in place; -inf entries stay -inf."""
        x = logits if self.rows is None else logits[self.rows]
        if self.repetition is not None:
            assert self.repetition_mask is not None
            penalised = torch.where(x > 0, x / self.repetition, x * self.repetition)
            x = torch.where(self.repetition_mask, penalised, x)
        if self.counts is not None:
            assert self.frequency is not None and self.presence is not None
            x = x - self.frequency * self.counts - self.presence * (self.counts > 0).to(x.dtype)
        if self.rows is None:
            if x is not logits:
                logits.copy_(x)
        else:
            logits[self.rows] = x


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    """float32 ``[len(values), 1]`` on ``device``."""
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)
