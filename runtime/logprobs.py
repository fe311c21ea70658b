"""Log-probability helpers for the ``logprobs`` / ``top_logprobs`` outputs.

Logprobs are those of the model's own distribution: ``log_softmax`` of the raw logits, before logit bias,
penalties, temperature and top-k/top-p/min-p filtering (what vLLM and the OpenAI API report).
"""

from __future__ import annotations

import torch


def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax of raw logits.

    Args:
        logits: ``[n, V]`` model logits (any float dtype).

    Returns:
        float32 ``[n, V]`` log-probabilities.
    """
    return torch.log_softmax(logits.to(torch.float32), dim=-1)


def gather_token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor) -> list[float]:
    """The logprob of one chosen token per row.

    Args:
        logprobs: float32 ``[n, V]`` from :func:`compute_logprobs`.
        token_ids: int64 ``[n]`` token id per row.

    Returns:
        ``n`` floats, ``logprobs[i, token_ids[i]]``.

    Raises:
        ValueError: the shapes do not match.
    """
    if logprobs.dim() != 2 or token_ids.shape != (logprobs.shape[0],):
        raise ValueError(
            f"gather_token_logprobs: expected logprobs [n, V] and token_ids [n], "
            f"got {tuple(logprobs.shape)} and {tuple(token_ids.shape)}"
        )
    ids = token_ids.to(device=logprobs.device, dtype=torch.int64).unsqueeze(1)
    return logprobs.gather(1, ids).squeeze(1).tolist()


def top_logprobs(logprobs: torch.Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """The ``k`` most likely tokens of every row, best first.

    Args:
        logprobs: float32 ``[n, V]``.
        k: how many per row, ``>= 0``; values above ``V`` are clamped to ``V``.

    Returns:
        ``(values, ids)``: ``n`` lists of ``k`` logprobs sorted descending and the matching token ids
        (``n`` empty lists each when ``k == 0``).

    Raises:
        ValueError: ``k < 0``.
    """
    if k < 0:
        raise ValueError(f"top_logprobs: k must be >= 0, got {k}")
    n = logprobs.shape[0]
    if k == 0:
        return [[] for _ in range(n)], [[] for _ in range(n)]
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1, largest=True, sorted=True)
    return values.tolist(), ids.tolist()
