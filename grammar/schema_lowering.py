"""Backend-specific lowering of a normalised JSON schema (in place, exact): forms one backend cannot compile or
reads differently, rewritten into forms it enforces as JSON Schema means them. Applied by validation after
``schema_normalize`` (``SchemaSupport.lower``).

* ``properties: {name: false}`` ("``name`` must not appear"): xgrammar 0.2.9 cannot compile a ``false``
  schema → :func:`lower_forbidden_properties`;
* ``pattern`` / ``patternProperties`` are *searched* in JSON Schema (ECMA-262 §22.2, unanchored: ``"ab"``
  matches ``"xaby"``), while xgrammar and outlines-core match the whole string → :func:`search_pattern`
  makes the unanchored sides explicit (``ab`` → ``[\\s\\S]*(ab)[\\s\\S]*``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from radixgen.grammar.json_schema import ANNOTATIONS, walk

#: any run of characters, newlines included (``.`` stops at a newline in ECMA-262 and Python regexes)
_ANY = "[\\s\\S]*"


Issue = tuple[str, str, str]  # (json pointer, keyword, why it cannot be enforced), as schema_support reports


def lower_for_xgrammar(root: Any) -> list[Issue]:
    """Every lowering of the module docstring, for xgrammar; returns what could not be lowered."""
    issues = lower_open_pattern_properties(root)
    issues += lower_property_names(root)
    issues += lower_forbidden_properties(root)
    lower_search_patterns(root)
    return issues


def lower_for_outlines(root: Any) -> list[Issue]:
    """Patterns searched, for outlines-core (which refuses ``false`` schemas with its own message)."""
    issues = lower_open_pattern_properties(root)
    lower_search_patterns(root)
    return issues


def lower_open_pattern_properties(root: Any) -> list[Issue]:
    """In place: an object with ``patternProperties`` whose other names are allowed (``additionalProperties``
    not false) → the names no pattern matches become one more pattern (``regex_algebra.complement_of_patterns``)
    carrying the ``additionalProperties`` schema, and ``additionalProperties: false``. xgrammar 0.2.9 otherwise
    lets a name that matches a pattern through as an additional property, with any value."""
    from radixgen.grammar.regex_algebra import complement_of_patterns

    issues: list[Issue] = []
    for path, s in walk(root):
        patterns = s.get("patternProperties")
        if not isinstance(patterns, dict) or not patterns or s.get("additionalProperties", True) is False:
            continue
        rest = complement_of_patterns(list(patterns))
        if rest is None:
            why = "the names no pattern matches (allowed by additionalProperties) have no regex within the limits"
            issues.append((path, "patternProperties", why))
            continue
        addl = s.get("additionalProperties", True)
        s["patternProperties"] = {**patterns, rest: {} if addl is True else addl}
        s["additionalProperties"] = False
    return issues


def lower_search_patterns(root: Any) -> None:
    """In place: every ``pattern`` and ``patternProperties`` regex through :func:`search_pattern`."""
    for _, s in walk(root):
        if isinstance(s.get("pattern"), str):
            s["pattern"] = search_pattern(s["pattern"])
        props = s.get("patternProperties")
        if isinstance(props, dict):
            s["patternProperties"] = {search_pattern(k): v for k, v in props.items()}


def _outside_classes(pattern: str) -> Iterator[tuple[int, str, int]]:
    """``(index, character, group depth)`` of each unescaped character of ``pattern`` outside ``[...]``."""
    i, depth, n = 0, 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            j = i + 1 + (pattern[i + 1 : i + 2] == "^")
            j += pattern[j : j + 1] == "]"  # a leading "]" is a literal
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
            continue
        depth += ch == "("
        yield i, ch, depth
        depth -= ch == ")"
        i += 1


def _top_level_split(pattern: str) -> list[str] | None:
    """The top-level ``|`` alternatives of ``pattern``; None when a ``^`` / ``$`` sits anywhere but at an
    alternative's start / end (the pattern is then left as is: matching it whole is a subset)."""
    alts, start = [], 0
    for i, ch, depth in _outside_classes(pattern):
        if ch == "|" and depth == 0:
            alts.append(pattern[start:i])
            start = i + 1
        elif ch in "^$" and depth > 0:
            return None
    alts.append(pattern[start:])
    for a in alts:
        core = a[1:] if a.startswith("^") else a
        core = core[:-1] if core.endswith("$") and not core.endswith("\\$") else core
        if any(ch in "^$" for _, ch, _ in _outside_classes(core)):
            return None
    return alts


def search_pattern(pattern: str) -> str:
    """A regex whose whole-string matches are exactly the strings in which ``pattern`` is found (JSON Schema's
    semantics, matched whole as the backends do): each top-level alternative loses its anchors and gets ``.*``
    on each side it was not anchored; an anchored ``^...$`` pattern is returned unchanged, and so is one with
    anchors inside groups (matching it whole is then a subset)."""
    alts = _top_level_split(pattern)
    if alts is None:
        return pattern
    out = []
    for a in alts:
        head, tail = a.startswith("^"), a.endswith("$") and not a.endswith("\\$")
        core = a[1 if head else 0 : len(a) - 1 if tail else len(a)]
        if head and tail and len(alts) == 1:
            return pattern
        out.append(("" if head else _ANY) + f"({core})" + ("" if tail else _ANY))
    return out[0] if len(out) == 1 else "(" + "|".join(out) + ")"


_NAME_KEYWORDS = ("type", "pattern", "minLength", "maxLength")


def lower_property_names(root: Any) -> list[Issue]:
    """In place: ``propertyNames`` of an open object with declared properties. xgrammar 0.2.9 accepts a declared
    name through ``propertyNames``' additional-property path with any value (``{"a": "x"}`` passes
    ``properties: {a: {type: integer}}``): the names' regex (``pattern`` with ``minLength`` / ``maxLength``,
    ``regex_algebra``) is intersected with "no declared name", and declared names the regex refuses are
    dropped from ``properties`` (the object may not have them). Other ``propertyNames`` keywords are reported."""
    from radixgen.grammar.regex_algebra import intersect_patterns, pattern_with_lengths

    issues: list[Issue] = []
    for path, s in walk(root):
        names, props = s.get("propertyNames"), s.get("properties")
        if not isinstance(names, dict) or not isinstance(props, dict) or not props:
            continue
        if s.get("additionalProperties", True) is False:
            continue
        if (
            any(k not in _NAME_KEYWORDS and k not in ANNOTATIONS for k in names)
            or names.get("type", "string") != "string"
        ):
            issues.append((path, "propertyNames", "next to declared properties of an open object: only pattern / "
                           "minLength / maxLength are lowered"))  # fmt: skip
            continue
        allowed = pattern_with_lengths(str(names.get("pattern", "")), names.get("minLength"), names.get("maxLength"))
        both = None if allowed is None else intersect_patterns(allowed, complement_pattern(list(props)))
        if allowed is None or both is None:
            issues.append((path, "propertyNames", "next to declared properties: no regex within the limits"))
            continue
        s["properties"] = {k: v for k, v in props.items() if v is not False and _whole(allowed, k)}
        s["propertyNames"] = {"type": "string", "pattern": both}
    return issues


def _whole(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def lower_forbidden_properties(root: Any) -> list[Issue]:
    """In place: ``properties: {name: false}`` ("``name`` must not appear"; xgrammar 0.2.9 cannot compile a
    ``false`` schema) → the name left out of ``properties``, and, when the object is open, a ``propertyNames``
    pattern that matches every other name (:func:`complement_pattern`). A forbidden name that a
    ``patternProperties`` pattern matches, or one in an open object that already has ``propertyNames``, is
    reported instead."""
    issues: list[Issue] = []
    for path, s in walk(root):
        props = s.get("properties")
        if not isinstance(props, dict):
            continue
        banned = [k for k, v in props.items() if v is False]
        if not banned:
            continue
        patterns = s.get("patternProperties") or {}
        closed = s.get("additionalProperties", True) is False
        if any(_found(p, name) for p in patterns for name in banned):
            issues.append((path, "properties", "a forbidden property ('false') that a pattern property allows"))
            continue
        if not closed and "propertyNames" in s:
            continue  # lower_property_names has excluded every declared name already
        s["properties"] = {k: v for k, v in props.items() if v is not False}
        if not closed:  # every declared name too: xgrammar lets a name through propertyNames with any value
            s["propertyNames"] = {"type": "string", "pattern": complement_pattern(list(props))}
    return issues


def _found(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return True


def complement_pattern(names: list[str]) -> str:
    """An anchored regex matching every string except ``names`` (``.`` for "any other character", so names with
    a newline are refused too: a subset). Built on the trie of ``names``: at each node, end (unless a name ends
    there), take a character no name continues with and then anything, or follow a child."""

    trie: dict[str, Any] = {}
    for name in names:
        node = trie
        for ch in name:
            node = node.setdefault(ch, {})
        node[""] = {}

    def rx(node: dict[str, Any]) -> str:
        children = sorted(k for k in node if k)
        alts = [] if "" in node else [""]
        if children:
            alts.append("[^" + "".join("\\" + c if c in "\\]^-[" else c for c in children) + "\\n].*")
        else:
            alts.append(".+")
        alts += [re.escape(c) + rx(node[c]) for c in children]
        return "(" + "|".join(alts) + ")"

    return "^" + rx(trie) + "$"
