"""Semantics-preserving JSON-schema rewrites that let a grammar backend enforce more of a schema.

Grammar backends convert a schema keyword by keyword with a fixed precedence, and silently drop what does not
fit it (measured for xgrammar 0.2 and outlines-core 0.2, see ``schema_support``): ``allOf`` becomes "any value",
keywords next to ``$ref`` / ``enum`` / ``const`` / ``anyOf`` / ``oneOf`` are ignored, a ``required`` name
missing from ``properties`` is dropped, draft-4 forms fail to compile. Each rewrite below yields a schema that
accepts exactly the same documents (or, where noted, a subset of them — every generated document still
validates against the original):

* draft 4-7 spellings → 2020-12: boolean ``exclusiveMinimum``/``exclusiveMaximum``; ``items`` as an array →
  ``prefixItems`` (``additionalItems`` → ``items``);
* ``allOf`` and ``$ref`` with sibling keywords → one merged subschema (local ``$ref`` targets inlined once);
* keywords next to ``anyOf`` / ``oneOf`` → merged into every branch; unsatisfiable branches dropped;
* ``enum`` / ``const`` next to other keywords → the values that satisfy them (checked with ``jsonschema``);
* ``dependentRequired`` / array ``dependencies`` on closed objects → dependencies of required properties made
  required, optional properties that have dependencies left out (subset);
* ``required`` names missing from ``properties`` → declared with the ``additionalProperties`` schema;
* ``integer`` bounds rounded inwards; ``number`` with an integral ``multipleOf`` → ``integer`` (subset);
* ``oneOf`` over object branches that overlap only through optional properties → each branch forbids
  (``additionalProperties: false`` and the property left out) one property that every overlapping branch
  requires and it does not (subset: the backends enforce ``oneOf`` as ``anyOf``; this makes the branches
  exclusive, so every generated document matches exactly one);
* ``minProperties`` / ``minItems`` that need implicit extra members → the implicit ``additionalProperties`` /
  ``items`` written out (xgrammar's strict mode otherwise forbids them and fails to compile);
* ``format`` ``date`` / ``time`` / ``date-time`` / ``ipv4`` → an equivalent-or-narrower ``pattern`` (subset):
  the backends' own format regexes accept days a month does not have (``2023-02-30``) and octets with leading
  zeros (``1.02.3.4``), which JSON-schema validators reject; the patterns allow calendar-valid days (February
  up to the 28th), years 1000-9999, at most 6 fraction digits, offsets up to ±23:59;
* ``minLength`` / ``maxLength`` next to a ``pattern`` of the form ``^X*$`` / ``^X+$`` (X one character or
  class) → ``^X{min,max}$`` (the backends ignore lengths next to a pattern);
* in ``pattern`` / ``patternProperties`` regexes, ``(...)?`` → ``(...|)``: the same language, but xgrammar
  0.2.8 mis-compiles optional groups that end in a repetition inside JSON strings (``fix_optional_groups``).

If a rewrite would leave a local ``$ref`` dangling, the original schema is returned unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from radixgen.grammar.json_schema import (
    ASSERTIONS,
    LIST_KEYWORDS,
    MAP_KEYWORDS,
    ONE_KEYWORDS,
    dangling_ref,
    is_local_ref,
    types_of,
)
from radixgen.grammar.schema_keywords import dependencies_to_all_of, simple_not, split_untyped, type_one_of
from radixgen.grammar.schema_merge import MAX_DEPTH, OverBudget, SchemaMerger
from radixgen.grammar.schema_rewrites import Unsatisfiable, local_rewrites, upgrade_drafts


def normalize_schema(root: Any) -> Any:
    """A rewritten copy of ``root`` (see the module docstring); ``root`` is not modified.

    Raises:
        Unsatisfiable: no document can satisfy the schema.
    """
    if not isinstance(root, dict):
        return root
    try:
        out = _Normalizer(root).norm(copy.deepcopy(root), 0)
    except (OverBudget, RecursionError):
        return root
    out.pop("$schema", None)  # the rewritten schema uses 2020-12 forms whatever draft it declared
    return root if dangling_ref(out) is not None else out


class _Normalizer(SchemaMerger):
    def __init__(self, root: dict[str, Any]) -> None:
        super().__init__(root)
        self._validator: Any = None

    # ------------------------------------------------------------------ the rewrite, top-down
    def norm(self, s: Any, depth: int) -> Any:
        if not isinstance(s, dict) or depth > MAX_DEPTH:
            return s
        s = upgrade_drafts(s)
        s = dependencies_to_all_of(s)
        s = self._merge_all_of(s, depth)
        s = self._filter_values(s)
        s = self._simple_not(s)
        s = self._distribute(s, depth)
        s = type_one_of(s)
        s = self._exclusive_one_of(s)
        s = local_rewrites(s)
        s = split_untyped(s)
        s = self._fold_patterns(s, depth)
        self._norm_children(s, depth)
        return s

    def _fold_patterns(self, s: dict[str, Any], depth: int) -> dict[str, Any]:
        """A declared property that ``patternProperties`` patterns match must satisfy them too (JSON Schema
        applies both): their schemas are merged into its declaration, so a backend that checks only one
        stays exact. Left as is when a merge cannot be expressed."""
        props, patterns = s.get("properties"), s.get("patternProperties")
        if not isinstance(props, dict) or not isinstance(patterns, dict) or not patterns:
            return s
        out = dict(props)
        for name in props:
            merged = self._sub(s, name, depth)
            if merged is None:
                return s
            out[name] = merged
        return {**s, "properties": out}

    def _simple_not(self, s: dict[str, Any]) -> dict[str, Any]:
        from radixgen.grammar.schema_support import disjoint

        try:
            return simple_not(s, lambda a, b: disjoint(a, b, self.root))
        except ValueError as e:
            raise Unsatisfiable(str(e)) from None

    def _norm_children(self, s: dict[str, Any], depth: int) -> None:
        for kw in MAP_KEYWORDS:
            value = s.get(kw)
            if not isinstance(value, dict):
                continue
            for name in list(value):
                try:
                    value[name] = self.norm(value[name], depth + 1)
                except Unsatisfiable:
                    value[name] = False
            if kw == "properties":
                required = set(s.get("required") or [])
                closed = s.get("additionalProperties", True) is False and not s.get("patternProperties")
                for name in [n for n, v in value.items() if v is False]:
                    if name in required:
                        raise Unsatisfiable(f"required property {name!r} admits no value")
                    if closed:
                        del value[name]  # a closed object forbids it anyway
        names = s.get("propertyNames")
        if isinstance(names, dict) and "type" not in names and "$ref" not in names:
            s["propertyNames"] = {**names, "type": "string"}  # property names are strings
        for kw in (*ONE_KEYWORDS, "items"):
            if kw in s and isinstance(s[kw], dict):
                try:
                    s[kw] = self.norm(s[kw], depth + 1)
                except Unsatisfiable:
                    s[kw] = False
        for kw in LIST_KEYWORDS:
            if isinstance(s.get(kw), list):
                kept = []
                for sub in s[kw]:
                    try:
                        kept.append(self.norm(sub, depth + 1))
                    except Unsatisfiable:
                        if kw in ("prefixItems", "allOf"):
                            raise
                if not kept and kw in ("anyOf", "oneOf"):
                    raise Unsatisfiable(f"no branch of {kw} admits a value")
                s[kw] = kept

    def _merge_all_of(self, s: dict[str, Any], depth: int) -> dict[str, Any]:
        has_ref_siblings = is_local_ref(s.get("$ref")) and any(k in ASSERTIONS for k in s if k != "$ref")
        if not isinstance(s.get("allOf"), list) and not has_ref_siblings:
            return s
        merged = self.expand(s, depth)
        return merged if isinstance(merged, dict) else s

    def _distribute(self, s: dict[str, Any], depth: int) -> dict[str, Any]:
        kws = [k for k in ("anyOf", "oneOf") if isinstance(s.get(k), list)]
        if len(kws) != 1:
            return s
        kw = kws[0]
        siblings = {k: v for k, v in s.items() if k in ASSERTIONS and k != kw}
        if not siblings:
            return s
        branches = []
        for branch in s[kw]:
            merged = self.merge_or_false(siblings, branch, depth + 1)
            if merged is None:
                return s
            if merged is not False:
                branches.append(merged)
        if not branches:
            raise Unsatisfiable(f"no branch of {kw} is compatible with its sibling keywords")
        out = {k: v for k, v in s.items() if k not in siblings}
        out[kw] = branches
        return out

    def _exclusive_one_of(self, s: dict[str, Any]) -> dict[str, Any]:
        from radixgen.grammar.schema_support import disjoint

        branches = s.get("oneOf")
        if not isinstance(branches, list) or not all(isinstance(b, dict) for b in branches):
            return s
        # a document of rewritten branch i must fail every *original* branch j != i
        out = [dict(b) for b in branches]
        for i, a in enumerate(out):
            for j, b in enumerate(branches):
                if i == j or disjoint(a, b, self.root):
                    continue
                if types_of(a) != {"object"} or not isinstance(a.get("properties", {}), dict):
                    return s
                mine = set(a.get("required") or [])
                theirs = [p for p in (b.get("required") or []) if p not in mine]
                if not theirs:
                    return s
                a["properties"] = {**a.get("properties", {}), theirs[0]: False}
        if all(disjoint(a, b, self.root) for i, a in enumerate(out) for j, b in enumerate(branches) if i != j):
            return {**s, "oneOf": out}
        return s

    def _filter_values(self, s: dict[str, Any]) -> dict[str, Any]:
        if "const" not in s and not isinstance(s.get("enum"), list):
            return s
        others = {k: v for k, v in s.items() if k in ASSERTIONS and k not in ("enum", "const")}
        if not others and not ("const" in s and "enum" in s):
            return s
        values = [s["const"]] if "const" in s else list(s["enum"])
        check = {k: v for k, v in s.items() if k in ASSERTIONS and k != ("const" if "const" in s else "enum")}
        kept = [v for v in values if self.is_valid(v, check)]
        if not kept:
            raise Unsatisfiable("no enum/const value satisfies the other keywords")
        out = {k: v for k, v in s.items() if k not in ASSERTIONS}
        if "const" in s:
            out["const"] = kept[0]
        else:
            out["enum"] = kept
        return out

    def is_valid(self, value: Any, schema: dict[str, Any]) -> bool:
        """``value`` against ``schema``, ``$ref``s resolved against the root document (formats checked)."""
        if self._validator is None:
            from jsonschema import Draft202012Validator, validators

            from radixgen.grammar.json_formats import format_checker

            cls = validators.validator_for(self.root, default=Draft202012Validator)
            self._validator = cls(self.root, format_checker=format_checker())
        return bool(self._validator.evolve(schema=schema).is_valid(value))
