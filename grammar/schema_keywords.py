"""Exact rewrites of JSON-schema keywords grammar backends lack into keywords they enforce (issue 17).

Each function takes one subschema (already upgraded to 2020-12 spellings) and returns a schema that accepts
exactly the same documents, or the subschema unchanged when its case is not covered (the keyword then stays and
validation refuses it by name). Applied by ``schema_normalize``:

* :func:`dependencies_to_all_of` — ``dependentRequired`` / ``dependentSchemas`` / draft-7 ``dependencies``:
  ``{a: [b, c]}`` ("if ``a`` is present, so are ``b`` and ``c``") is ``anyOf [{required: [a, b, c]},
  {properties: {a: false}}]`` (``a`` present with its dependencies, or ``a`` absent); a schema dependency
  ``{a: S}`` is ``anyOf [{required: [a], allOf: [S]}, {properties: {a: false}}]``. The two branches exclude
  each other (one requires ``a``, the other forbids it). Each dependency becomes one ``allOf`` part, which
  ``schema_normalize`` folds into the subschema (at most ``MAX_DEPENDENCIES`` of them: the branches multiply).
* :func:`split_untyped` — a subschema without ``type`` applies its type-specific keywords only to values of
  that type (``{"format": "date"}`` accepts ``1``; ``{"required": ["a"]}`` accepts ``null``): it becomes
  ``anyOf`` of one typed branch per keyword family present plus one branch for every other type. Backends
  otherwise guess a single type from the keywords and reject valid documents of the others.
* :func:`type_one_of` — ``oneOf`` branches that each accept *every* value of a type T (no keyword constrains
  T): when two or more do, no T value matches exactly one branch, so T is removed from every branch (this
  makes ``oneOf: [{required: [a]}, {required: [b]}]`` objects-only, and its branches provably exclusive).
* :func:`simple_not` — ``not`` of a ``type``, of ``{}`` / ``true`` / ``false``, of one ``required`` name
  (that property is then forbidden), or of a schema the rest of the subschema already excludes (``disjoint``).

``{name: false}`` under ``properties`` means "``name`` must not appear"; it is kept as such (a backend that
cannot compile ``false`` lowers it, see ``schema_support.lower_forbidden_properties``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from radixgen.grammar.json_schema import ANNOTATIONS, JSON_TYPES, types_of

#: most dependencies rewritten per subschema (each doubles the branches of the object)
MAX_DEPENDENCIES = 4

OBJECT_KEYWORDS = (
    "properties", "required", "additionalProperties", "patternProperties", "propertyNames", "minProperties",
    "maxProperties", "dependentRequired", "dependentSchemas", "dependencies", "unevaluatedProperties",
)  # fmt: skip
ARRAY_KEYWORDS = (
    "items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains", "minContains",
    "maxContains", "unevaluatedItems",
)  # fmt: skip
STRING_KEYWORDS = ("minLength", "maxLength", "pattern", "format")
NUMBER_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
#: the JSON types each keyword family applies to
FAMILIES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("object",), OBJECT_KEYWORDS),
    (("array",), ARRAY_KEYWORDS),
    (("string",), STRING_KEYWORDS),
    (("number", "integer"), NUMBER_KEYWORDS),
)
_TYPED = frozenset(k for _, kws in FAMILIES for k in kws)
#: keywords that constrain values of every type (a subschema with one of them is left alone by split_untyped)
_GENERAL = ("enum", "const", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef",
            "$recursiveRef")  # fmt: skip


def dependencies_to_all_of(s: dict[str, Any]) -> dict[str, Any]:
    """``dependentRequired`` / ``dependentSchemas`` / ``dependencies`` → ``allOf`` parts (module docstring)."""
    kws = [k for k in ("dependentRequired", "dependentSchemas", "dependencies") if isinstance(s.get(k), dict)]
    if not kws:
        return s
    parts: list[Any] = []
    for kw in kws:
        for name, dep in s[kw].items():
            if isinstance(dep, list) and all(isinstance(x, str) for x in dep):
                present: dict[str, Any] = {"required": list(dict.fromkeys([name, *dep]))}
            elif isinstance(dep, dict | bool):
                present = {"required": [name], "allOf": [dep]}
            else:
                return s
            if dep == [] or dep is True or dep == {}:
                continue  # no constraint
            parts.append({"anyOf": [present, {"properties": {name: False}}]})
    if len(parts) > MAX_DEPENDENCIES:
        return s
    out = {k: v for k, v in s.items() if k not in kws}
    if parts:
        out["allOf"] = [*(out.get("allOf") or []), *parts]
    return out


def _families(s: dict[str, Any]) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    out = []
    for types, kws in FAMILIES:
        present = {k: s[k] for k in kws if k in s}
        if present:
            out.append((types, present))
    return out


def split_untyped(s: dict[str, Any]) -> dict[str, Any]:
    """An untyped subschema with type-specific keywords → ``anyOf`` of typed branches (module docstring)."""
    if "type" in s or any(k in s for k in _GENERAL):
        return s
    families = _families(s)
    if not families:
        return s
    rest = {k: v for k, v in s.items() if k not in _TYPED}
    branches: list[dict[str, Any]] = []
    covered: set[str] = set()
    for types, kws in families:
        branches.append({"type": types[0], **kws})  # "number" covers "integer"
        covered.update(types)
    others = [t for t in JSON_TYPES if t not in covered and not (t == "integer" and "number" not in covered)]
    if others:
        branches.append({"type": others[0] if len(others) == 1 else others})
    return {**rest, "anyOf": branches}


def _accepts_all_of_type(s: Any, t: str) -> bool:
    """``s`` accepts every JSON value of type ``t`` (sound: False when unsure)."""
    if s is True or s == {}:
        return True
    if not isinstance(s, dict):
        return False
    types = types_of(s)
    if "type" in s and (types is None or (t not in types and not (t == "integer" and "number" in types))):
        return False
    if any(k in s for k in _GENERAL):
        return False
    family = next((kws for ts, kws in FAMILIES if t in ts), ())
    return not any(k in s for k in family) and all(k in ANNOTATIONS or k in _TYPED or k == "type" for k in s)


def type_one_of(s: dict[str, Any]) -> dict[str, Any]:
    """Remove from every ``oneOf`` branch the types that two or more branches accept entirely."""
    branches = s.get("oneOf")
    if not isinstance(branches, list) or not all(isinstance(b, dict) for b in branches):
        return s
    dead = [t for t in JSON_TYPES if t != "integer" and sum(_accepts_all_of_type(b, t) for b in branches) >= 2]
    if not dead:
        return s
    if "number" in dead:
        dead.append("integer")
    out = []
    for b in branches:
        types = types_of(b) if "type" in b else set(JSON_TYPES)
        if types is None:
            return s
        if "number" in types:
            types = types | {"integer"}
        keep = [t for t in JSON_TYPES if t in types and t not in dead]
        if not keep:
            continue  # the branch matches only values that also match another branch
        out.append({**b, "type": keep[0] if len(keep) == 1 else keep})
    return {**s, "oneOf": out} if out else {**s, "oneOf": [False]}


def simple_not(s: dict[str, Any], disjoint: Callable[[Any, Any], bool]) -> dict[str, Any]:
    """``not`` of a simple form → keywords the backends enforce (module docstring); ``disjoint(a, b)`` must be
    sound (True only when no value satisfies both).

    Raises:
        ValueError: ``not: {}`` / ``not: true`` (nothing satisfies the subschema); the caller reports it.
    """
    neg = s.get("not")
    if "not" not in s:
        return s
    rest = {k: v for k, v in s.items() if k != "not"}
    if neg is False:
        return rest
    if neg is True or neg == {}:
        raise ValueError("'not' of a schema every value satisfies")
    if not isinstance(neg, dict):
        return s
    keys = {k for k in neg if k not in ANNOTATIONS}
    if keys == {"type"} and types_of(neg) is not None and "anyOf" not in s and "oneOf" not in s:
        mine = types_of(s) if "type" in s else set(JSON_TYPES)
        if mine is None:
            return s
        banned = types_of(neg) or set()
        if "number" in banned:
            banned = banned | {"integer"}
        if "number" in mine:
            if "integer" in banned and "number" not in banned:
                return s  # "non-integer numbers" has no type of its own
            mine = mine | {"integer"}
        keep = [
            t
            for t in JSON_TYPES
            if t in mine and t not in banned and not (t == "integer" and "number" in mine and "number" not in banned)
        ]
        if not keep:
            raise ValueError("'not' excludes every type the schema allows")
        return {**rest, "type": keep[0] if len(keep) == 1 else keep}
    required = neg.get("required")
    if keys == {"required"} and isinstance(required, list) and len(required) == 1 and isinstance(required[0], str):
        # not(required [a]) fails for every non-object (required is vacuous there): objects without a only
        mine = types_of(rest) if "type" in rest else {"object"}
        if mine is None or "object" not in mine:
            raise ValueError("'not' of 'required' admits only objects, which the schema does not allow")
        props = rest.get("properties")
        props = props if isinstance(props, dict) else {}
        return {**rest, "type": "object", "properties": {**props, required[0]: False}}
    if rest and disjoint(rest, neg):
        return rest
    return s
