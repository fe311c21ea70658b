"""radixgen.grammar: grammar-constrained decoding (DESIGN.md, "Grammar-constrained decoding").

Modules:
    base: the backend interface (GrammarBackend.compile → CompiledGrammar → one GrammarMatcher per request),
        the packed token-bitmask layout, GrammarError, GrammarLimits.
    xgrammar_backend / outlines_backend: the two backends (xgrammar is the default).
    validation: synchronous checks before compiling (size, nesting, syntax, meta-schema, unenforced keywords).
    json_schema / schema_normalize / schema_support: JSON-schema walking, semantics-preserving rewrites, and
        the measured tables of what each backend enforces.
    cache: GrammarManager — validation, LRU cache of compiled grammars, compilation on worker threads.
    jump_forward: forced-continuation detection, canonical retokenization and matcher rollback.

Imports nothing from the rest of radixgen.
"""

from __future__ import annotations

from radixgen.grammar.base import (
    KINDS,
    CompiledGrammar,
    GrammarBackend,
    GrammarError,
    GrammarLimits,
    GrammarMatcher,
    allocate_token_bitmask,
    bitmask_width,
)
from radixgen.grammar.cache import GrammarManager, backend_class
from radixgen.grammar.jump_forward import Jump, jump_forward
from radixgen.grammar.validation import PreparedSpec

__all__ = [
    "KINDS",
    "CompiledGrammar",
    "GrammarBackend",
    "GrammarError",
    "GrammarLimits",
    "GrammarManager",
    "GrammarMatcher",
    "Jump",
    "PreparedSpec",
    "allocate_token_bitmask",
    "backend_class",
    "bitmask_width",
    "jump_forward",
]
