"""JSON-schema helpers shared by normalisation and the keyword-support check: keyword classes, the subschema
walk, local ``$ref`` resolution and JSON value equality.

Keyword classes follow JSON Schema 2020-12 (Core §10, Validation §6) plus the draft 4-7 spellings
(``definitions``, ``dependencies``, ``additionalItems``, ``items`` as an array, boolean ``exclusiveMinimum``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TypeGuard

# keywords whose value is a map of name -> subschema
MAP_KEYWORDS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# keywords whose value is one subschema
ONE_KEYWORDS = (
    "additionalProperties", "additionalItems", "contains", "propertyNames", "if", "then", "else", "not",
    "unevaluatedItems", "unevaluatedProperties", "contentSchema",
)  # fmt: skip
# keywords whose value is a list of subschemas
LIST_KEYWORDS = ("allOf", "anyOf", "oneOf", "prefixItems")

#: every assertion (or applicator) keyword of drafts 4 .. 2020-12: the ones that can make a document invalid
ASSERTIONS = frozenset(
    {
        "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
        "maxLength", "minLength", "pattern", "format", "maxItems", "minItems", "uniqueItems", "maxContains",
        "minContains", "contains", "maxProperties", "minProperties", "required", "dependentRequired",
        "dependencies", "dependentSchemas", "properties", "patternProperties", "additionalProperties",
        "propertyNames", "items", "prefixItems", "additionalItems", "unevaluatedItems", "unevaluatedProperties",
        "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef",
    }
)  # fmt: skip

#: keywords that never constrain a document (metadata, identifiers, definitions containers)
ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "id", "$anchor", "$dynamicAnchor", "$recursiveAnchor", "$vocabulary", "$comment",
        "$defs", "definitions", "title", "description", "default", "examples", "example", "deprecated",
        "readOnly", "writeOnly", "contentEncoding", "contentMediaType", "contentSchema",
    }
)  # fmt: skip

JSON_TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")


def subschemas(schema: Any) -> Iterator[tuple[str, str, Any]]:
    """Direct subschemas of ``schema``: ``(keyword, json_pointer_suffix, subschema)``."""
    if not isinstance(schema, dict):
        return
    for kw in MAP_KEYWORDS:
        value = schema.get(kw)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield kw, f"/{kw}/{escape_pointer(name)}", sub
    for kw in ONE_KEYWORDS:
        if kw in schema:
            yield kw, f"/{kw}", schema[kw]
    for kw in LIST_KEYWORDS:
        value = schema.get(kw)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield kw, f"/{kw}/{i}", sub
    items = schema.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            yield "items", f"/items/{i}", sub
    elif items is not None:
        yield "items", "/items", items
    deps = schema.get("dependencies")
    if isinstance(deps, dict):
        for name, sub in deps.items():
            if isinstance(sub, dict | bool):
                yield "dependencies", f"/dependencies/{escape_pointer(name)}", sub


def walk(schema: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object subschema of ``schema`` (itself included), depth first: ``(json_pointer, subschema)``."""
    stack = [(path, schema)]
    while stack:
        p, s = stack.pop()
        if not isinstance(s, dict):
            continue
        yield p, s
        children = [(p + suffix, sub) for _, suffix, sub in subschemas(s)]
        stack.extend(reversed(children))


def escape_pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def resolve_ref(root: Any, ref: str) -> Any:
    """The target of a local ``$ref`` (``#`` or ``#/json/pointer``, percent-decoding included).

    Raises:
        KeyError: not a local JSON pointer, or nothing at that pointer.
    """
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        raise KeyError(ref)
    from urllib.parse import unquote

    node = root
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(ref)
    return node


def is_local_ref(ref: Any) -> TypeGuard[str]:
    return isinstance(ref, str) and (ref == "#" or ref.startswith("#/"))


def dangling_ref(schema: Any) -> tuple[str, str] | None:
    """The first local ``$ref`` of ``schema`` (depth first) that points to nothing, as ``(json_pointer, ref)``;
    None when every local ``$ref`` resolves."""
    for path, sub in walk(schema):
        ref = sub.get("$ref")
        if is_local_ref(ref):
            try:
                resolve_ref(schema, ref)
            except KeyError:
                return path, ref
    return None


def json_key(value: Any) -> str:
    """A canonical string for JSON equality (``1 == 1.0``, ``True != 1``, key order ignored)."""

    def canon(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, int | float):
            return v
        if isinstance(v, list):
            return [canon(x) for x in v]
        if isinstance(v, dict):
            return {k: canon(x) for k, x in v.items()}
        return v

    return json.dumps(canon(value), sort_keys=True)


def types_of(schema: dict[str, Any]) -> set[str] | None:
    """The declared ``type`` as a set (``None`` when absent or malformed)."""
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list) and all(isinstance(x, str) for x in t):
        return set(t)
    return None


def value_type(v: Any) -> str:
    """The JSON type of a Python value (``integer`` for integral numbers, as JSON Schema counts them)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"
