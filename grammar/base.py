"""The grammar backend interface: compile ``(kind, spec)`` once, then one matcher per request.

A backend turns a constraint into a :class:`CompiledGrammar` (immutable, shared, cached by
``(backend, kind, spec)``); each request gets its own :class:`GrammarMatcher` from it. Per decode step the
runtime asks every matcher of the batch to fill its row of one packed token bitmask, masks the logits, samples,
and feeds the sampled token back with :meth:`GrammarMatcher.accept_token` (DESIGN.md, "Grammar-constrained
decoding").

Bitmask layout (xgrammar's, Dong et al. 2024, "XGrammar: Flexible and Efficient Structured Generation Engine for
Large Language Models", arXiv:2411.15100): int32 ``[batch, ceil(vocab_size / 32)]``; bit ``j`` (LSB = 0) of
word ``w`` of a row is token ``32 * w + j``; 1 = allowed. ``vocab_size`` is the model's vocabulary (the logits
width), which may exceed the tokenizer's: ids the tokenizer does not have are never allowed.

This package imports nothing from the rest of radixgen.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

Kind = Literal["json_schema", "json_object", "regex", "ebnf", "structural_tag"]
KINDS: tuple[str, ...] = get_args(Kind)


class GrammarError(ValueError):
    """An invalid, unsupported or too large constraint; the message names the field and the problem.

    A ValueError, so the runtime answers it like any other invalid request field (HTTP 400).
    """


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds that keep any input from hanging the compiler.

    Attributes:
        max_spec_bytes: largest spec (UTF-8 bytes) accepted.
        max_nesting_depth: deepest nesting accepted: JSON nesting of a schema document, parentheses / brackets
            in a regex or EBNF grammar.
    """

    max_spec_bytes: int = 256 * 1024
    max_nesting_depth: int = 128


def bitmask_width(vocab_size: int) -> int:
    """Words per bitmask row: ``ceil(vocab_size / 32)``."""
    return math.ceil(vocab_size / 32)


def allocate_token_bitmask(batch: int, vocab_size: int) -> torch.Tensor:
    """A bitmask of ``batch`` rows, all tokens allowed: int32 ``[batch, ceil(vocab_size / 32)]`` filled with -1."""
    return torch.full((batch, bitmask_width(vocab_size)), -1, dtype=torch.int32)


class GrammarMatcher(ABC):
    """One request's position in its grammar. Not thread-safe; used by the scheduler thread only."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one token. Returns False (state unchanged) when the grammar does not allow it.

        A stop token (eos) is accepted only where the grammar may end; the matcher is terminated afterwards.
        """

    @abstractmethod
    def fill_next_token_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (int32 ``[batch, ceil(vocab / 32)]``, CPU,
        contiguous). Stop tokens are allowed exactly where the grammar may end."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once a stop token was accepted at the end of the grammar (nothing more may follow)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens.

        Raises:
            ValueError: more tokens than the matcher can undo.
        """

    @abstractmethod
    def find_jump_forward_string(self) -> str:
        """The continuation the grammar forces from here (the only possible next characters), or "" when the
        next characters are not determined (SGLang's compressed-FSM jump-forward, Zheng et al. 2024)."""


class CompiledGrammar(ABC):
    """An immutable compiled constraint; cheap to instantiate matchers from, safe to share between threads."""

    @abstractmethod
    def matcher(self) -> GrammarMatcher:
        """A fresh matcher at the start of the grammar."""


class GrammarBackend(ABC):
    """Compiles constraints for one tokenizer and model vocabulary.

    Attributes:
        name: ``"xgrammar"``, ``"llguidance"`` or ``"outlines"``.
        vocab_size: the model's vocabulary size (bitmask width in tokens).
        token_bytes: the bytes each token id stands for (``b""`` for special and padding ids); jump-forward
            checks a retokenization against it.
    """

    name: str
    vocab_size: int

    @abstractmethod
    def compile(self, kind: str, spec: str) -> CompiledGrammar:
        """Compile a validated (and normalised) spec. Runs on a worker thread.

        Raises:
            GrammarError: the backend cannot compile it (the message names the problem).
        """

    @property
    @abstractmethod
    def token_bytes(self) -> list[bytes]:
        """``token_bytes[i]``: the UTF-8 bytes token ``i`` decodes to inside a sequence."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Tokenize ``text`` as a continuation (no special tokens, no dummy-prefix space)."""


class TokenizerBackend(GrammarBackend):
    """A backend for one Hugging Face tokenizer: every backend is constructed with these arguments (the runtime
    builds whichever one is configured the same way); a backend builds its own state in :meth:`_setup`.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        vocab_size: the model's vocabulary size (>= the tokenizer's).
        stop_token_ids: every eos id of the model.
        any_whitespace: let JSON constraints allow any whitespace between tokens (default: fixed separators;
            see the backend's module docstring).
    """

    def __init__(
        self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], any_whitespace: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = tuple(stop_token_ids)
        self.any_whitespace = any_whitespace
        self._setup()

    @abstractmethod
    def _setup(self) -> None:
        """Build the backend's tokenizer description from the attributes above (the end of ``__init__``)."""

    def encode(self, text: str) -> list[int]:
        return encode_continuation(self.tokenizer, text)


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as it would continue a sequence: no special tokens and no sentencepiece dummy
    prefix. Encodes ``"\\n" + text`` and drops the ids of ``"\\n"`` (a newline never merges with the next
    character in sentencepiece vocabularies); falls back to a plain encode when that prefix does not match."""
    anchor = tokenizer.encode("\n", add_special_tokens=False)
    ids = tokenizer.encode("\n" + text, add_special_tokens=False)
    if anchor and ids[: len(anchor)] == anchor:
        return list(ids[len(anchor) :])
    return list(tokenizer.encode(text, add_special_tokens=False))


def apply_token_bitmask_cpu(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int], vocab_size: int) -> None:
    """Set ``logits[r, t] = -inf`` where bit ``t`` of ``bitmask[r]`` is 0, for ``r`` in ``rows``, in place.

    Args:
        logits: float ``[batch, >= vocab_size]`` on the CPU; columns ``>= vocab_size`` are left untouched.
        bitmask: int32 ``[batch, ceil(vocab_size / 32)]`` on the CPU.
        rows: the rows to mask (the others are not read).

    float32 logits with contiguous rows go through numpy (``unpackbits`` + ``copyto``: ~0.55 ms for 16 rows of
    32k tokens, single-threaded, so immune to OpenMP stalls on a busy host); xgrammar's C++ kernel (~1.5 ms)
    takes the rest.
    """
    if not rows:
        return
    if logits.dtype == torch.float32 and logits.stride(-1) == 1 and not logits.requires_grad:
        bits = np.ascontiguousarray(bitmask.numpy())
        if bits.dtype != np.int32:
            raise ValueError(f"bitmask: must be int32, got {bitmask.dtype}")
        out = logits.numpy()
        neg = np.float32(-np.inf)
        if len(rows) == out.shape[0] and rows == list(range(len(rows))):
            forbidden = np.unpackbits(~bits[: len(rows)].view(np.uint8), axis=1, count=vocab_size, bitorder="little")
            np.copyto(out[:, :vocab_size], neg, where=forbidden.view(bool))
        else:
            for r in rows:
                forbidden = np.unpackbits(~bits[r].view(np.uint8), count=vocab_size, bitorder="little")
                np.copyto(out[r, :vocab_size], neg, where=forbidden.view(bool))
        return
    import xgrammar as xgr

    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, indices=rows, backend="cpu")
