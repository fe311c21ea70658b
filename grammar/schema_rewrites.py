"""Local rewrites of one JSON subschema (no references followed), applied by ``schema_normalize``.

Each keeps the set of valid documents or narrows it (see the list in ``schema_normalize``'s docstring): draft
4-7 spellings, ``required`` names declared, integer bounds, implicit members made explicit, formats the backends
enforce loosely turned into exact patterns, lengths folded into simple patterns, and optional regex groups
rewritten around an xgrammar bug.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any, TypeGuard

from radixgen.grammar.json_formats import EMAIL_PATTERN
from radixgen.grammar.json_schema import types_of


class Unsatisfiable(Exception):
    """No JSON value satisfies the (sub)schema."""


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_YEAR = "([0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001-9999 (Python's date range)
_LEAP_YEAR = "([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    f"({_YEAR}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|"
    f"02-(0[1-9]|1[0-9]|2[0-8]))|{_LEAP_YEAR}-02-29)"
)
_TIME = "([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
#: exact patterns for formats whose backend regexes differ from radixgen's format checker (json_formats):
#: the backends' own regexes accept days a month does not have (``2023-02-30``) and octets with leading zeros
#: (``1.02.3.4``), and their email regexes disagree with each other
FORMAT_PATTERNS = {
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_DATE}[Tt]{_TIME}$",
    "ipv4": f"^{_OCTET}(\\.{_OCTET}){{3}}$",
    "email": EMAIL_PATTERN,
    "uuid": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
}


def numbers(*vs: Any) -> bool:
    """All arguments are JSON numbers (bools excluded)."""
    return all(is_number(v) for v in vs)


def is_number(v: Any) -> TypeGuard[int | float]:
    """``v`` is a JSON number (bools excluded)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def local_rewrites(s: dict[str, Any]) -> dict[str, Any]:
    """Every rewrite of this module, in order, on one subschema (modified and returned)."""
    s = unevaluated_as_additional(s)
    s = resolve_dependencies(s)
    s = declare_required(s)
    s = integer_bounds(s)
    s = explicit_extras(s)
    s = drop_unknown_formats(s)
    s = format_patterns(s)
    s = lengths_into_pattern(s)
    return fix_patterns(s)


def upgrade_drafts(s: dict[str, Any]) -> dict[str, Any]:
    for excl, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(s.get(excl), bool):
            flag = s.pop(excl)
            if flag and bound in s:
                s[excl] = s.pop(bound)
    if isinstance(s.get("items"), list):
        s["prefixItems"] = s.pop("items")
        if "additionalItems" in s:
            s["items"] = s.pop("additionalItems")
    else:
        s.pop("additionalItems", None)
    return s


_IN_PLACE_APPLICATORS = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "dependentSchemas",
                         "dependencies", "$dynamicRef", "$recursiveRef")  # fmt: skip


def unevaluated_as_additional(s: dict[str, Any]) -> dict[str, Any]:
    """``unevaluatedProperties`` / ``unevaluatedItems`` in a subschema without in-place applicators (so only its
    own ``properties`` / ``patternProperties`` / ``prefixItems`` evaluate anything): the same as
    ``additionalProperties`` / ``items`` when those are absent, and redundant when they are present (they
    evaluate every remaining member). With applicators the keyword stays (and is refused)."""
    if any(k in s for k in _IN_PLACE_APPLICATORS):
        return s
    for unevaluated, additional in (("unevaluatedProperties", "additionalProperties"), ("unevaluatedItems", "items")):
        if unevaluated in s:
            value = s.pop(unevaluated)
            s.setdefault(additional, value)
    return s


def resolve_dependencies(s: dict[str, Any]) -> dict[str, Any]:
    """``dependentRequired`` / array-valued ``dependencies`` ({a: [b, ...]}: "if a is present, so are b, ...")
    → a required ``a`` makes its dependencies required (transitively); an optional ``a`` is left out of the
    object (subset). Only on closed objects (``additionalProperties: false``, no ``patternProperties``), where
    leaving a property out of ``properties`` forbids it, and only for what ``schema_keywords`` does not rewrite
    exactly (more than ``MAX_DEPENDENCIES`` dependencies)."""
    kws = [k for k in ("dependentRequired", "dependencies") if isinstance(s.get(k), dict) and s[k]]
    if not kws or "patternProperties" in s or s.get("additionalProperties", True) is not False:
        return s
    deps: dict[str, list[str]] = {}
    for kw in kws:
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in s[kw].values()):
            return s  # schema-valued dependencies stay (and are reported as not enforced)
        for name, needs in s[kw].items():
            deps.setdefault(name, []).extend(needs)
    props = dict(s.get("properties") or {})
    required = list(s.get("required") or [])
    changed = True
    while changed:
        changed = False
        for name in list(required):
            for need in deps.get(name, []):
                if need not in required:
                    if need not in props:
                        if s.get("additionalProperties", True) is False:
                            raise Unsatisfiable(f"{name!r} requires {need!r}, which the object does not allow")
                        props[need] = {}
                    required.append(need)
                    changed = True
    for name in deps:
        if name not in required:
            props.pop(name, None)
    out = {k: v for k, v in s.items() if k not in kws}
    out.update(properties=props, required=required, additionalProperties=False)
    if not required:
        del out["required"]
    return out


def declare_required(s: dict[str, Any]) -> dict[str, Any]:
    required = s.get("required")
    if not isinstance(required, list) or not required or "patternProperties" in s:
        return s
    if "properties" not in s and types_of(s) != {"object"}:
        return s
    props = s.get("properties", {})
    if not isinstance(props, dict):
        return s
    missing = [r for r in required if isinstance(r, str) and r not in props]
    if not missing:
        return s
    addl = s.get("additionalProperties", True)
    if addl is False:
        raise Unsatisfiable(f"required {missing[0]!r} is not allowed by additionalProperties: false")
    s["properties"] = {**props, **{r: copy.deepcopy(addl) if isinstance(addl, dict) else {} for r in missing}}
    return s


def integer_bounds(s: dict[str, Any]) -> dict[str, Any]:
    types = types_of(s)
    mult = s.get("multipleOf")
    if types == {"number"} and is_number(mult) and mult > 0 and float(mult).is_integer():
        s["type"] = "integer"
        types = {"integer"}
    if types != {"integer"}:
        return s
    if is_number(mult) and float(mult).is_integer():
        s["multipleOf"] = int(mult)
    for key, rnd in (("minimum", math.ceil), ("maximum", math.floor)):
        v = s.get(key)
        if is_number(v) and math.isfinite(v) and not float(v).is_integer():
            s[key] = int(rnd(v))
    for key, bound, rnd in (("exclusiveMinimum", "minimum", math.ceil), ("exclusiveMaximum", "maximum", math.floor)):
        v = s.get(key)
        if is_number(v) and math.isfinite(v) and not float(v).is_integer():
            s.pop(key)
            b = int(rnd(v))
            old = s.get(bound)
            s[bound] = b if not is_number(old) else (max(b, old) if bound == "minimum" else min(b, old))
        elif isinstance(v, float):
            s[key] = int(v)
    return s


def explicit_extras(s: dict[str, Any]) -> dict[str, Any]:
    props = s.get("properties", {})
    min_props = s.get("minProperties")
    if is_number(min_props) and isinstance(props, dict) and min_props > len(props) and "additionalProperties" not in s:
        if "patternProperties" not in s:
            s["additionalProperties"] = True
    prefix = s.get("prefixItems", [])
    min_items = s.get("minItems")
    if is_number(min_items) and isinstance(prefix, list) and min_items > len(prefix) and "items" not in s:
        s["items"] = True
    return s


def drop_unknown_formats(s: dict[str, Any]) -> dict[str, Any]:
    """A ``format`` that is neither one of JSON Schema's nor checked by radixgen's format checker
    (``json_formats``) is an annotation (JSON Schema 2020-12 §7.2.3): dropped, so a backend that refuses unknown
    formats (llguidance) does not refuse the schema."""
    from radixgen.grammar.json_formats import format_checker
    from radixgen.grammar.schema_support import STANDARD_FORMATS

    fmt = s.get("format")
    if isinstance(fmt, str) and fmt not in STANDARD_FORMATS and fmt not in format_checker().checkers:
        s = {k: v for k, v in s.items() if k != "format"}
    return s


def format_patterns(s: dict[str, Any]) -> dict[str, Any]:
    fmt = s.get("format")
    if fmt in FORMAT_PATTERNS and types_of(s) == {"string"}:
        if "pattern" not in s:
            s["pattern"] = FORMAT_PATTERNS[s.pop("format")]
        elif "minLength" not in s and "maxLength" not in s:
            both = _intersect_patterns(s["pattern"], FORMAT_PATTERNS[fmt])
            if both is not None:
                s.pop("format")
                s["pattern"] = both
    return s


def _intersect_patterns(a: str, b: str) -> str | None:
    """A whole-string regex for strings matching both (search semantics for each); None when not built."""
    from radixgen.grammar.regex_algebra import intersect_patterns

    return intersect_patterns(a, b)


def fix_patterns(s: dict[str, Any]) -> dict[str, Any]:
    if isinstance(s.get("pattern"), str):
        s["pattern"] = fix_optional_groups(s["pattern"])
    props = s.get("patternProperties")
    if isinstance(props, dict):
        s["patternProperties"] = {fix_optional_groups(k): v for k, v in props.items()}
    return s


def fix_optional_groups(pattern: str) -> str:
    """``(...)?`` → ``(...|)`` (same language), outside character classes and escapes.

    xgrammar 0.2.8 mis-compiles an optional group ending in a variable repetition inside a JSON-schema
    ``pattern`` (``^0(x[0-9]{1,2})?Z$`` accepts ``00Z``); the empty alternative compiles correctly.
    """
    out: list[str] = []
    opens: list[int] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]" or bool(out and out[-1] in ("[", "[^"))
            out.append(ch)
        elif ch == "[":
            in_class = True
            out.append("[^" if pattern[i + 1 : i + 2] == "^" else "[")
            i += 1 if pattern[i + 1 : i + 2] == "^" else 0
        elif ch == "(":
            opens.append(len(out))
            out.append(ch)
        elif ch == ")" and pattern[i + 1 : i + 2] == "?" and pattern[i + 2 : i + 3] != "?" and opens:
            start = opens.pop()
            inner = "".join(out[start + 1 :])
            if inner.startswith("?") and not inner.startswith("?:"):
                out.append(")?")  # lookaround and other special groups stay as they are
            else:
                out.append("|)")
            i += 2
            continue
        else:
            if ch == ")" and opens:
                opens.pop()
            out.append(ch)
        i += 1
    return "".join(out)


_SINGLE_ATOM_STAR = re.compile(r"\^(\[(?:\\.|[^\]\\])+\]|\\.|[^\\()|\[\]{}*+?^$])([*+])\$")


def lengths_into_pattern(s: dict[str, Any]) -> dict[str, Any]:
    pattern = s.get("pattern")
    lo, hi = s.get("minLength"), s.get("maxLength")
    if (
        not isinstance(pattern, str)
        or (lo is None and hi is None)
        or not numbers(*(v for v in (lo, hi) if v is not None))
    ):
        return s
    m = _SINGLE_ATOM_STAR.fullmatch(pattern)
    if m is None:
        from radixgen.grammar.regex_algebra import pattern_with_lengths

        both = pattern_with_lengths(pattern, None if lo is None else int(lo), None if hi is None else int(hi))
        if both is None:
            return s
        return {**{k: v for k, v in s.items() if k not in ("minLength", "maxLength")}, "pattern": both}
    low = max(int(lo or 0), 1 if m.group(2) == "+" else 0)
    high = "" if hi is None else str(int(hi))
    if hi is not None and int(hi) < low:
        raise Unsatisfiable(f"maxLength {hi} is below the pattern's minimum length {low}")
    s = {k: v for k, v in s.items() if k not in ("minLength", "maxLength")}
    s["pattern"] = f"^{m.group(1)}{{{low},{high}}}$"
    return s
