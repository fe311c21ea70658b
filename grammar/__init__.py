"""radixgen.grammar: grammar-constrained decoding (DESIGN.md, "Grammar-constrained decoding").

Modules:
    base: the backend interface (GrammarBackend.compile → CompiledGrammar → one GrammarMatcher per request),
        the packed token-bitmask layout, GrammarError, GrammarLimits.
    xgrammar_backend / llguidance_backend / outlines_backend: the backends (xgrammar is the default).
    whitespace: compact separators while generating, any JSON whitespace accepted (wraps a backend's matchers).
    schema_strict: ``strict`` JSON schemas (OpenAI's ``json_schema.strict``): every object closed.
    validation: synchronous checks before compiling (size, nesting, syntax, meta-schema, unenforced keywords).
    json_schema / schema_normalize / schema_support: JSON-schema walking, semantics-preserving rewrites, and
        the measured tables of what each backend enforces.
    cache: GrammarManager — validation, LRU cache of compiled grammars, compilation on worker threads.
    jump_forward: forced-continuation detection, canonical retokenization and matcher rollback.

Imports nothing from the rest of radixgen. The names below are imported lazily (PEP 562), so that the torch-free
modules (json_schema, schema_*, validation) can be imported by the HTTP process without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from radixgen.grammar.schema_strict import strict_json_schema
    from radixgen.grammar.validation import PreparedSpec

_EXPORTS = {
    "KINDS": "base",
    "CompiledGrammar": "base",
    "GrammarBackend": "base",
    "GrammarError": "base",
    "GrammarLimits": "base",
    "GrammarMatcher": "base",
    "allocate_token_bitmask": "base",
    "bitmask_width": "base",
    "GrammarManager": "cache",
    "backend_class": "cache",
    "Jump": "jump_forward",
    "jump_forward": "jump_forward",
    "PreparedSpec": "validation",
    "strict_json_schema": "schema_strict",
}

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
    "strict_json_schema",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'radixgen.grammar' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"radixgen.grammar.{module}"), name)
    globals()[name] = value
    return value
