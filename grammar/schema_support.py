"""Which JSON-schema keywords a backend really enforces, and a check that names the ones it would ignore.

The tables were measured, not copied from documentation: for each keyword a schema was compiled and a document
violating only that keyword was fed to the matcher (tests/test_grammar.py ``PROBES``, tests/test_schema_keywords.py,
and the MaskBench-style check of benchmarks/bench_schema_enforcement.py keep the measurements). They describe a
schema after ``schema_normalize`` (which rewrites ``allOf``, ``dependencies``, simple ``not``, untyped keywords,
lengths next to patterns, ... into the keywords below) and before the backend's lowering (``schema_lowering``).

xgrammar 0.2.9 (``strict_mode=False``: JSON Schema's defaults):

* enforced: ``type``, ``enum``, ``const``, ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``
  (integer and number), ``multipleOf`` (integer type, integral divisor only), ``minLength``/``maxLength``,
  ``pattern`` (whole-string: ``schema_lowering`` makes the search explicit), the formats in
  ``XGRAMMAR_FORMATS``, ``minItems``/``maxItems``, ``items``, ``prefixItems``, ``properties``, ``required``,
  ``additionalProperties``, ``patternProperties`` (names no pattern matches are lowered to one more pattern),
  ``propertyNames``, ``minProperties``/``maxProperties``, ``anyOf``, local ``$ref`` (recursion included);
* ignored: ``not``, ``if``/``then``/``else``, ``uniqueItems``, ``contains``/``minContains``/``maxContains``,
  ``unevaluatedProperties``/``unevaluatedItems`` (``{"a": 1, "b": 2}`` passes ``unevaluatedProperties: false``
  in non-strict mode), non-local or anchor ``$ref``, formats outside the table; keywords next to
  ``$ref``/``enum``/``const``/``anyOf``/``oneOf``; ``minLength``/``maxLength`` next to ``pattern`` or
  ``format``; ``pattern`` next to ``format``; numeric and string keywords in a subschema without ``type``;
  a ``false`` subschema does not compile (lowered for ``properties``);
* ``oneOf`` is enforced as ``anyOf``: accepted only when its branches provably exclude each other.

llguidance 1.9.1 refuses what it does not implement itself (``propertyNames``, ``unevaluated*``, ``contains``,
``uniqueItems``, ``not``, ``if``, ``dependent*``, formats outside ``LLGUIDANCE_FORMATS``, ``min``/``maxProperties``
next to optional properties); the table lists what it implements so the refusal names the keyword as for the
others. outlines-core 0.2.14 (``build_regex_from_schema``) additionally ignores every numeric bound and
``multipleOf``, ``minProperties``/``maxProperties``, and supports fewer formats (``OUTLINES_FORMATS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from radixgen.grammar.json_schema import (
    ASSERTIONS,
    is_local_ref,
    json_key,
    resolve_ref,
    types_of,
    walk,
)
from radixgen.grammar.schema_lowering import lower_for_outlines, lower_for_xgrammar

#: formats defined by JSON Schema 2020-12 §7.3; other format values are annotations nobody enforces
STANDARD_FORMATS = frozenset(
    {
        "date-time", "date", "time", "duration", "email", "idn-email", "hostname", "idn-hostname", "ipv4",
        "ipv6", "uri", "uri-reference", "iri", "iri-reference", "uuid", "uri-template", "json-pointer",
        "relative-json-pointer", "regex",
    }
)  # fmt: skip
XGRAMMAR_FORMATS = frozenset(
    {
        "date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference",
        "uuid", "uri-template", "json-pointer", "relative-json-pointer",
    }
)  # fmt: skip
OUTLINES_FORMATS = frozenset({"date-time", "date", "time", "email", "uri", "uuid"})

_NUMERIC = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_STRING = ("minLength", "maxLength", "pattern", "format")
_XGRAMMAR_ENFORCED = frozenset(
    {
        "type", "enum", "const", *_NUMERIC, *_STRING, "minItems", "maxItems", "items", "prefixItems",
        "properties", "required", "additionalProperties", "patternProperties", "propertyNames", "minProperties",
        "maxProperties", "anyOf", "oneOf", "$ref",
    }
)  # fmt: skip
LLGUIDANCE_FORMATS = frozenset(
    {"date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uuid"}
)
_LLGUIDANCE_ENFORCED = frozenset(
    {
        "type", "enum", "const", *_NUMERIC, *_STRING, "minItems", "maxItems", "items", "prefixItems",
        "properties", "required", "additionalProperties", "patternProperties", "minProperties", "maxProperties",
        "allOf", "anyOf", "oneOf", "$ref",
    }
)  # fmt: skip
_OUTLINES_ENFORCED = frozenset(
    {
        "type", "enum", "const", *_STRING, "minItems", "maxItems", "items", "prefixItems", "properties",
        "required", "additionalProperties", "anyOf", "oneOf", "$ref",
    }
)  # fmt: skip

Issue = tuple[str, str, str]  # (json pointer, keyword, why it is not enforced)


@dataclass(frozen=True)
class SchemaSupport:
    """What one backend enforces. ``extra`` adds backend-specific precedence findings for one subschema;
    ``lower`` rewrites a normalised schema (in place) into forms the backend compiles, exactly, and returns
    what it could not rewrite (refused like an unenforced keyword)."""

    backend: str
    enforced: frozenset[str]
    formats: frozenset[str]
    extra: Callable[[dict[str, Any]], list[tuple[str, str]]] = field(default=lambda s: [])
    lower: Callable[[Any], list[Issue]] = field(default=lambda s: [])


def _precedence(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Keywords a keyword-by-keyword converter drops because a higher-precedence keyword is present."""
    out: list[tuple[str, str]] = []
    for lead in ("$ref", "const", "enum", "anyOf", "oneOf"):
        if lead in s:
            out += [(k, f"ignored next to {lead!r}") for k in s if k in ASSERTIONS and k not in (lead, "type")]
            if lead in ("$ref", "anyOf", "oneOf") and "type" in s:
                out.append(("type", f"ignored next to {lead!r}"))
            return out
    types = types_of(s)
    if types is None:
        for k in (*_NUMERIC, *_STRING):
            if k in s:
                out.append((k, "ignored in a subschema without 'type'"))
    return out


def _xgrammar_extra(s: dict[str, Any]) -> list[tuple[str, str]]:
    out = _precedence(s)
    if out:
        return out
    if "format" in s and s["format"] in XGRAMMAR_FORMATS:
        out += [(k, "ignored next to 'format'") for k in ("pattern", "minLength", "maxLength") if k in s]
    elif "pattern" in s:
        out += [(k, "ignored next to 'pattern'") for k in ("minLength", "maxLength") if k in s]
    mult = s.get("multipleOf")
    if mult is not None and (types_of(s) != {"integer"} or not isinstance(mult, int) or isinstance(mult, bool)):
        out.append(("multipleOf", "enforced only for type integer with an integral divisor"))
    return out


def _outlines_extra(s: dict[str, Any]) -> list[tuple[str, str]]:
    out = _precedence(s)
    if not out and "format" in s and s["format"] in OUTLINES_FORMATS:
        out += [(k, "ignored next to 'format'") for k in ("pattern", "minLength", "maxLength") if k in s]
    return out


XGRAMMAR_SUPPORT = SchemaSupport("xgrammar", _XGRAMMAR_ENFORCED, XGRAMMAR_FORMATS, _xgrammar_extra, lower_for_xgrammar)
OUTLINES_SUPPORT = SchemaSupport("outlines", _OUTLINES_ENFORCED, OUTLINES_FORMATS, _outlines_extra, lower_for_outlines)
#: llguidance 1.9.1 refuses (an error at compile, never a silent drop) every keyword it does not implement; the
#: table lists what it implements, so the refusal names the keyword the same way as for the other backends
LLGUIDANCE_SUPPORT = SchemaSupport("llguidance", _LLGUIDANCE_ENFORCED, LLGUIDANCE_FORMATS)


_TRIVIAL_WHEN_TRUE = (
    "additionalProperties", "additionalItems", "items", "unevaluatedProperties", "unevaluatedItems", "propertyNames",
)  # fmt: skip


def _is_noop(k: str, v: Any, s: dict[str, Any]) -> bool:
    """Keyword values that constrain nothing."""
    if k in _TRIVIAL_WHEN_TRUE and (v is True or v == {}):
        return True
    if k == "uniqueItems":
        return v is False
    if k in ("minItems", "minLength", "minProperties", "minContains") and v == 0:
        return True
    if k in ("required", "dependentRequired", "dependencies", "dependentSchemas", "properties", "allOf") and not v:
        return True
    if k == "if":
        return "then" not in s and "else" not in s
    if k in ("then", "else"):
        return "if" not in s
    return k == "format" and v not in STANDARD_FORMATS


def find_unenforced(root: Any, support: SchemaSupport) -> list[Issue]:
    """Every keyword of ``root`` (a normalised schema) that ``support``'s backend would not enforce."""
    issues: list[Issue] = []
    for path, s in walk(root):
        for k, v in s.items():
            if k not in ASSERTIONS or _is_noop(k, v, s):
                continue
            if k == "$ref" and not is_local_ref(v):
                issues.append((path, k, f"only local JSON-pointer references ('#/...') are resolved, got {v!r}"))
            elif k == "format" and v not in support.formats:
                issues.append((path, k, f"format {v!r} is not enforced"))
            elif k == "oneOf" and isinstance(v, list) and not _pairwise_disjoint(v, root):
                issues.append((path, k, "enforced as anyOf and the branches may overlap (exclusivity unchecked)"))
            elif k not in support.enforced:
                issues.append((path, k, "not enforced"))
        issues += [(path, k, why) for k, why in support.extra(s)]
    return issues


# ---------------------------------------------------------------------------------------------------- oneOf
def _pairwise_disjoint(branches: list[Any], root: Any) -> bool:
    resolved = [_deref(b, root) for b in branches]
    return all(
        _disjoint(resolved[i], resolved[j], root) for i in range(len(resolved)) for j in range(i + 1, len(resolved))
    )


def _deref(s: Any, root: Any, depth: int = 0) -> Any:
    while isinstance(s, dict) and is_local_ref(s.get("$ref")) and depth < 16:
        try:
            s = resolve_ref(root, s["$ref"])
        except KeyError:
            return s
        depth += 1
    return s


def _type_set(s: dict[str, Any]) -> set[str] | None:
    types = types_of(s)
    if types is None:
        values = [s["const"]] if "const" in s else s.get("enum")
        if isinstance(values, list):
            from radixgen.grammar.json_schema import value_type

            types = {value_type(v) for v in values}
    if types is not None and "number" in types:
        types = types | {"integer"}
    return types


def _values(s: dict[str, Any]) -> set[str] | None:
    if "const" in s:
        return {json_key(s["const"])}
    if isinstance(s.get("enum"), list):
        return {json_key(v) for v in s["enum"]}
    return None


def disjoint(a: Any, b: Any, root: Any) -> bool:
    """True only when no JSON value can satisfy both ``a`` and ``b`` (sound, not complete; ``$ref`` resolved)."""
    return _disjoint(_deref(a, root), _deref(b, root), root)


def _disjoint(a: Any, b: Any, root: Any) -> bool:
    """True only when no JSON value can satisfy both ``a`` and ``b`` (sound, not complete)."""
    if a is False or b is False:
        return True
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    ta, tb = _type_set(a), _type_set(b)
    if ta is not None and tb is not None and not ta & tb:
        return True
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None and not va & vb:
        return True
    # both branches generate objects only (typed object, or untyped with object keywords, which the backends
    # turn into objects): a generated object must fail the other branch
    if _makes_objects(a, ta) and _makes_objects(b, tb):
        return _objects_disjoint(a, b, root) or _objects_disjoint(b, a, root)
    return False


def _makes_objects(s: dict[str, Any], types: set[str] | None) -> bool:
    return types == {"object"} or (types is None and ("properties" in s or "required" in s))


def _objects_disjoint(a: dict[str, Any], b: dict[str, Any], root: Any) -> bool:
    """Objects only: a property required by both whose values are disjoint, or one that ``b`` requires and ``a``
    forbids (``additionalProperties: false`` without it)."""
    pa, pb = a.get("properties") or {}, b.get("properties") or {}
    req_a, req_b = set(a.get("required") or []), set(b.get("required") or [])
    for name in req_a & req_b:
        if name in pa and name in pb and _disjoint(_deref(pa[name], root), _deref(pb[name], root), root):
            return True
    if any(pa.get(name) is False for name in req_b):
        return True
    if a.get("additionalProperties") is False and "patternProperties" not in a:
        if any(name not in pa for name in req_b):
            return True
    return False
