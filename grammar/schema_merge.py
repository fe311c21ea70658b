"""Intersection of JSON subschemas (``allOf`` semantics), used by ``schema_normalize`` to fold ``allOf``,
``$ref`` with sibling keywords and keywords next to ``anyOf`` / ``oneOf`` into single subschemas.

``SchemaMerger.merge(a, b)`` returns a schema accepting exactly the documents both accept, or None when this
module cannot express the intersection exactly (the caller then leaves the ``allOf`` in place, and validation
refuses it by name). Keyword rules: equal values are kept; ``type`` intersected (``integer`` ⊂ ``number``);
lower bounds take the max, upper bounds the min; ``enum`` intersected; ``const`` must agree; objects merge
property by property (a name one side does not declare gets that side's ``patternProperties`` matches or its
``additionalProperties``), ``required`` unioned; arrays merge ``prefixItems`` / ``items``; ``anyOf`` on both
sides becomes the ``anyOf`` of the pairwise intersections (``oneOf`` likewise: exactly one ``a_i`` and exactly
one ``b_j`` is exactly one pair), at most ``MAX_BRANCHES`` of them. ``patternProperties`` on one side only is
merged with the other side's ``additionalProperties``; on both sides only when the patterns are the same.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from radixgen.grammar.json_schema import ANNOTATIONS, ASSERTIONS, is_local_ref, json_key, resolve_ref, types_of
from radixgen.grammar.schema_rewrites import Unsatisfiable, numbers, upgrade_drafts

_MIN = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains")
_MAX = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains")
_STRUCTURAL = ("properties", "required", "additionalProperties", "patternProperties", "items", "prefixItems")
_GIVE_UP = ("unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$recursiveRef")
MAX_DEPTH = 48
MAX_STEPS = 20_000  # merges + inlined references per schema: bounds the work (references can nest)
MAX_BRANCHES = 64


class OverBudget(Exception):
    """The schema needs more than ``MAX_STEPS`` merges / inlined references."""


class SchemaMerger:
    """Merges subschemas of one root document (local ``$ref`` resolved against ``root``)."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self._steps = 0

    def expand(self, s: Any, depth: int) -> Any:
        """``s`` with a local ``$ref`` inlined and ``allOf`` folded in; None when that cannot be done exactly."""
        if depth > MAX_DEPTH:
            return None
        if not isinstance(s, dict):
            return s
        self._steps += 1
        if self._steps > MAX_STEPS:
            raise OverBudget
        s = upgrade_drafts(dict(s))
        ref = s.get("$ref")
        if ref is not None:
            if not is_local_ref(ref):
                return None
            try:
                target = copy.deepcopy(resolve_ref(self.root, ref))
            except KeyError:
                return None
            rest = {k: v for k, v in s.items() if k != "$ref"}
            if not any(k in ASSERTIONS for k in rest):
                return self.expand(target, depth + 1)
            return self.merge(target, rest, depth + 1)
        if isinstance(s.get("allOf"), list):
            acc: Any = {k: v for k, v in s.items() if k != "allOf"}
            for branch in s["allOf"]:
                acc = self.merge(acc, branch, depth + 1)
                if acc is None:
                    return None
            return acc
        return s

    def merge(self, a: Any, b: Any, depth: int) -> Any:
        """A schema accepting exactly the documents both accept; None when not expressible here.

        Raises:
            Unsatisfiable: no document satisfies both.
        """
        a, b = self.expand(a, depth), self.expand(b, depth)
        if a is None or b is None:
            return None
        if a is False or b is False:
            raise Unsatisfiable("false schema")
        if a is True or a == {}:
            return b
        if b is True or b == {}:
            return a
        if any(k in a or k in b for k in _GIVE_UP):
            return None
        out: dict[str, Any] = {}
        for k in dict.fromkeys([*a, *b]):
            if k in _STRUCTURAL:
                continue
            if k not in b or k not in a:
                out[k] = a[k] if k in a else b[k]
                continue
            va, vb = a[k], b[k]
            if json_key(va) == json_key(vb) or k in ANNOTATIONS:
                out[k] = va
            elif k == "type":
                out[k] = _intersect_types(a, b)
            elif k in _MIN and numbers(va, vb):
                out[k] = max(va, vb)
            elif k in _MAX and numbers(va, vb):
                out[k] = min(va, vb)
            elif k == "enum" and isinstance(va, list) and isinstance(vb, list):
                keys = {json_key(x) for x in vb}
                out[k] = [x for x in va if json_key(x) in keys]
                if not out[k]:
                    raise Unsatisfiable("enum intersection is empty")
            elif k == "const":
                raise Unsatisfiable("different const values")
            elif k in ("anyOf", "oneOf") and isinstance(va, list) and isinstance(vb, list):
                product = self._product(va, vb, depth)
                if product is None:
                    return None
                out[k] = product
            else:
                return None
        if not self._merge_objects(a, b, out, depth) or not self._merge_arrays(a, b, out, depth):
            return None
        return out

    def _product(self, xs: list[Any], ys: list[Any], depth: int) -> list[Any] | None:
        if len(xs) * len(ys) > MAX_BRANCHES:
            return None
        out = []
        for x in xs:
            for y in ys:
                m = self.merge_or_false(x, y, depth + 1)
                if m is None:
                    return None
                if m is not False:
                    out.append(m)
        if not out:
            raise Unsatisfiable("no pair of branches is compatible")
        return out

    def _sub(self, s: dict[str, Any], name: str, depth: int) -> Any:
        """The schema ``s`` applies to property ``name``: its declaration and every matching pattern (all of
        them apply), else ``additionalProperties``. None when a pattern is not a Python regex."""
        parts = []
        props = s.get("properties") or {}
        if name in props:
            parts.append(props[name])
        for pattern, sub in (s.get("patternProperties") or {}).items():
            try:
                if re.search(pattern, name):
                    parts.append(sub)
            except re.error:
                return None
        if not parts:
            return s.get("additionalProperties", True)
        acc = parts[0]
        for p in parts[1:]:
            try:
                acc = self.merge(acc, p, depth + 1)
            except Unsatisfiable:
                return False
            if acc is None:
                return None
        return acc

    def _merge_objects(self, a: dict[str, Any], b: dict[str, Any], out: dict[str, Any], depth: int) -> bool:
        pa, pb = a.get("properties", {}), b.get("properties", {})
        ppa, ppb = a.get("patternProperties") or {}, b.get("patternProperties") or {}
        if not all(isinstance(x, dict) for x in (pa, pb, ppa, ppb)):
            return False
        if ppa and ppb and list(ppa) != list(ppb):
            return False
        addl_a, addl_b = a.get("additionalProperties", True), b.get("additionalProperties", True)
        props: dict[str, Any] = {}
        for name in dict.fromkeys([*pa, *pb]):
            sa, sb = self._sub(a, name, depth), self._sub(b, name, depth)
            m = None if sa is None or sb is None else self.merge_or_false(sa, sb, depth + 1)
            if m is None:
                return False
            props[name] = m
        if props:
            out["properties"] = props
        required = list(dict.fromkeys([*(a.get("required") or []), *(b.get("required") or [])]))
        if required:
            out["required"] = required
        patterns: dict[str, Any] = {}
        for pattern in dict.fromkeys([*ppa, *ppb]):
            m = self.merge_or_false(ppa.get(pattern, addl_a), ppb.get(pattern, addl_b), depth + 1)
            if m is None:
                return False
            patterns[pattern] = m
        if patterns:
            out["patternProperties"] = patterns
        if "additionalProperties" in a or "additionalProperties" in b:
            addl = self.merge_or_false(addl_a, addl_b, depth + 1)
            if addl is None:
                return False
            out["additionalProperties"] = addl
        return True

    def merge_or_false(self, a: Any, b: Any, depth: int) -> Any:
        """:meth:`merge`, with ``False`` (no value) where the two cannot both hold."""
        try:
            return self.merge(a, b, depth)
        except Unsatisfiable:
            return False

    def _merge_arrays(self, a: dict[str, Any], b: dict[str, Any], out: dict[str, Any], depth: int) -> bool:
        if "prefixItems" in a and "prefixItems" in b:
            if json_key(a["prefixItems"]) != json_key(b["prefixItems"]):
                return False
        for x, y in ((a, b), (b, a)):
            if "prefixItems" in x and isinstance(x["prefixItems"], list):
                other = y.get("items", True)
                merged = [self.merge(p, other, depth + 1) for p in x["prefixItems"]]
                if any(m is None for m in merged):
                    return False
                out["prefixItems"] = merged
                break
        if "items" in a or "items" in b:
            items = self.merge(a.get("items", True), b.get("items", True), depth + 1)
            if items is None:
                return False
            out["items"] = items
        return True


def _intersect_types(a: dict[str, Any], b: dict[str, Any]) -> Any:
    ta, tb = types_of(a), types_of(b)
    if ta is None or tb is None:
        raise Unsatisfiable("malformed type")
    out = [t for t in ta if t in tb]
    if "integer" in ta and "number" in tb or "number" in ta and "integer" in tb:
        out.append("integer")
    out = list(dict.fromkeys(out))
    if not out:
        raise Unsatisfiable(f"type {sorted(ta)} and {sorted(tb)} do not intersect")
    return out[0] if len(out) == 1 else out
