"""``strict`` JSON schemas: every object closed (OpenAI's ``response_format.json_schema.strict: true``).

By default radixgen enforces JSON Schema as written: an object takes properties it does not list unless
``additionalProperties`` / ``unevaluatedProperties`` / ``patternProperties`` say otherwise. OpenAI's strict
structured outputs (and radixgen before issue 17, through xgrammar's ``strict_mode``) close every object instead:
only the listed properties may appear. This module is that opt-in, as a schema rewrite applied before
compiling — by the OpenAI layer for a request with ``strict: true``, and by ``GrammarManager`` for every request
when the server runs with ``--grammar-strict-json-schema`` — so every backend sees an explicit schema and the
compile cache keys on it.

The rewrite narrows the set of valid documents (every document it admits is valid against the original), and
it is applied after ``schema_normalize`` has folded ``allOf`` and ``$ref`` siblings into single subschemas, so
closing one part of an intersection never forbids the properties another part declares.

Torch-free (the HTTP process imports it).
"""

from __future__ import annotations

import copy
from typing import Any

from radixgen.grammar.json_schema import subschemas, types_of
from radixgen.grammar.schema_normalize import Unsatisfiable, normalize_schema

#: keywords that make a subschema describe objects
_OBJECT_KEYWORDS = ("properties", "required", "minProperties", "maxProperties", "dependentRequired")
#: subschemas that are not a document's own shape (closing them would change the meaning)
_SKIP = ("allOf", "not", "if", "propertyNames", "contains", "dependentSchemas", "dependencies")


def strict_json_schema(schema: Any) -> Any:
    """A copy of ``schema`` in which every object subschema without ``additionalProperties``,
    ``unevaluatedProperties`` or ``patternProperties`` gets ``additionalProperties: false``.

    ``$defs`` / ``definitions`` targets are closed where they are used (``schema_normalize`` inlines local
    references that carry sibling keywords; a plain ``$ref`` target is closed in place under ``$defs``).

    Never raises: a schema normalisation cannot handle (or that nothing satisfies) is closed as written, and
    validation reports its problems when the request is checked.
    """
    if not isinstance(schema, dict):
        return schema
    try:
        out = normalize_schema(schema)
    except Unsatisfiable:
        out = schema  # validation reports it when the request is checked
    if out is schema:  # normalisation gave up (budget, dangling reference): close a copy of the original
        out = copy.deepcopy(schema)
    close_objects(out)
    return out


def _describes_objects(s: dict[str, Any]) -> bool:
    types = types_of(s)
    if types is not None:
        return "object" in types
    return any(k in s for k in _OBJECT_KEYWORDS)


def close_objects(s: Any) -> None:
    """In place: ``additionalProperties: false`` on every object subschema of ``s`` (a normalised schema) that
    says nothing about unlisted properties (see :func:`strict_json_schema`)."""
    stack = [s]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if _describes_objects(node) and not any(
            k in node for k in ("additionalProperties", "unevaluatedProperties", "patternProperties")
        ):
            node["additionalProperties"] = False
        for kw, _, sub in subschemas(node):
            if kw not in _SKIP:
                stack.append(sub)
