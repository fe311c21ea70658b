"""Synchronous checks of a constraint before any work is queued, and the normalised spec a backend compiles.

Order: size and nesting bounds (cheap scans that need no parser, so no input can make a parser recurse or run
long) → syntax (JSON + the JSON-Schema meta-schema via ``jsonschema``'s ``check_schema``; Python ``re`` plus the
backend's own regex parser; the backend's EBNF parser) → JSON schema only: normalisation (``schema_normalize``),
every object closed when strict (``schema_strict``), the not-enforced-keyword check (``schema_support``) and the
backend's exact lowering (``schema_lowering``), which reject unless the request opts into best effort
(``SamplingParams.grammar_best_effort``). Every failure is a :class:`GrammarError` whose message starts with the
field name (``json_schema``, ``regex``, ``ebnf``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixgen.grammar.base import GrammarError, GrammarLimits
from radixgen.grammar.json_schema import dangling_ref
from radixgen.grammar.schema_normalize import Unsatisfiable, normalize_schema
from radixgen.grammar.schema_strict import close_objects
from radixgen.grammar.schema_support import Issue, SchemaSupport, find_unenforced

#: the json_object kind's spec is ignored (any JSON object); "" is its canonical spec
JSON_OBJECT_SPEC = ""
_MAX_REPORTED = 3


@dataclass(frozen=True)
class PreparedSpec:
    """A validated constraint: ``spec`` is what the backend compiles (a normalised schema for json_schema);
    ``ignored`` lists the keywords accepted under best effort although they are not enforced."""

    kind: str
    spec: str
    ignored: tuple[Issue, ...] = ()


SyntaxCheck = Callable[[str, str], None]


def prepare_spec(
    kind: str,
    spec: Any,
    support: SchemaSupport,
    syntax_check: SyntaxCheck,
    limits: GrammarLimits,
    best_effort: bool = False,
    strict: bool = False,
) -> PreparedSpec:
    """Validate ``spec`` of ``kind`` for a backend and return what it should compile.

    Args:
        kind: json_schema | json_object | regex | ebnf | structural_tag (xgrammar's structural tag, as SGLang takes
            it: ``{"type": "structural_tag", "structures": [{"begin", "schema", "end"}], "triggers": [...]}`` or
            ``{"type": "structural_tag", "format": {...}}``).
        spec: the constraint text (a JSON-schema document as a string; json_object ignores it).
        support: the backend's keyword-support table.
        syntax_check: the backend's own parser, ``(kind, spec) -> None``, raising GrammarError.
        limits: size and nesting bounds.
        best_effort: accept keywords the backend does not enforce (they are listed in ``ignored``).
        strict: json_schema only: close every object (``schema_strict``; ``--grammar-strict-json-schema``).

    Raises:
        GrammarError: the message names the field and the problem.
    """
    if kind == "json_object":
        return PreparedSpec(kind, JSON_OBJECT_SPEC)
    if kind not in ("json_schema", "regex", "ebnf", "structural_tag"):
        raise GrammarError(f"grammar: unknown constraint kind {kind!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise GrammarError(f"{kind}: must be a non-empty string")
    size = len(spec.encode("utf-8"))
    if size > limits.max_spec_bytes:
        raise GrammarError(
            f"{kind}: {size} bytes exceeds the limit of {limits.max_spec_bytes} (grammar_max_spec_bytes)"
        )
    depth = json_depth(spec) if kind in ("json_schema", "structural_tag") else bracket_depth(spec)
    if depth > limits.max_nesting_depth:
        raise GrammarError(
            f"{kind}: nesting depth {depth} exceeds the limit of {limits.max_nesting_depth} (grammar_max_nesting_depth)"
        )
    if kind == "regex":
        try:
            re.compile(spec)
        except re.error as e:
            raise GrammarError(f"regex: invalid regular expression: {e}") from None
        syntax_check(kind, spec)
        return PreparedSpec(kind, spec)
    if kind == "ebnf":
        syntax_check(kind, spec)
        return PreparedSpec(kind, spec)
    if kind == "structural_tag":
        _check_structural_tag(spec)
        syntax_check(kind, spec)
        return PreparedSpec(kind, spec)
    return _prepare_json_schema(spec, support, syntax_check, best_effort, strict)


def _check_structural_tag(spec: str) -> None:
    """The shape of a structural tag (the backend's own parser checks the rest); schemas against the meta-schema."""
    try:
        tag = json.loads(spec)
    except (ValueError, RecursionError) as e:
        raise GrammarError(f"structural_tag: not valid JSON: {e}") from None
    if not isinstance(tag, dict) or tag.get("type") != "structural_tag":
        raise GrammarError('structural_tag: must be a JSON object with "type": "structural_tag"')
    if "format" in tag:
        return
    structures, triggers = tag.get("structures"), tag.get("triggers")
    if not isinstance(structures, list) or not structures:
        raise GrammarError('structural_tag: needs "format", or a non-empty "structures" list with "triggers"')
    if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
        raise GrammarError("structural_tag.triggers: must be a non-empty list of non-empty strings")
    for i, s in enumerate(structures):
        if not isinstance(s, dict) or not isinstance(s.get("begin"), str) or not isinstance(s.get("end"), str):
            raise GrammarError(f"structural_tag.structures[{i}]: needs string begin and end")
        schema = s.get("schema", s.get("parameters"))
        if not isinstance(schema, dict):
            raise GrammarError(f"structural_tag.structures[{i}].schema: must be a JSON-schema object")
        check_meta_schema(schema)
        if not any(s["begin"].startswith(t) for t in triggers):
            raise GrammarError(f"structural_tag.structures[{i}].begin: starts with none of the triggers")


def _prepare_json_schema(
    spec: str, support: SchemaSupport, syntax_check: SyntaxCheck, best_effort: bool, strict: bool
) -> PreparedSpec:
    try:
        schema = json.loads(spec)
    except (ValueError, RecursionError) as e:
        raise GrammarError(f"json_schema: not valid JSON: {e}") from None
    if schema is False:
        raise GrammarError("json_schema: the schema 'false' admits no document")
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise GrammarError(f"json_schema: must be a JSON object or boolean, got {type(schema).__name__}")
    check_meta_schema(schema)
    try:
        normalized = normalize_schema(schema)
    except Unsatisfiable as e:
        raise GrammarError(f"json_schema: no JSON document satisfies the schema ({e})") from None
    if strict:
        close_objects(normalized)
    _check_refs(normalized)
    issues = find_unenforced(normalized, support)
    # exact rewrites into forms this backend compiles, after the checks (which read JSON Schema's own forms)
    issues += support.lower(normalized)
    if issues and not best_effort:
        shown = "; ".join(f"'{k}' at {p}: {why}" for p, k, why in issues[:_MAX_REPORTED])
        more = f" (and {len(issues) - _MAX_REPORTED} more)" if len(issues) > _MAX_REPORTED else ""
        raise GrammarError(
            f"json_schema: keyword(s) the {support.backend} backend does not enforce: {shown}{more}; "
            "set grammar_best_effort to generate without them"
        )
    text = json.dumps(normalized, ensure_ascii=False)
    syntax_check("json_schema", text)
    return PreparedSpec("json_schema", text, tuple(issues))


def check_meta_schema(schema: dict[str, Any]) -> None:
    """Validate against the meta-schema of the schema's ``$schema`` (draft 2020-12 when absent).

    Raises:
        GrammarError: naming the offending location and the meta-schema's complaint.
    """
    from jsonschema import Draft202012Validator, SchemaError, validators

    try:
        cls = validators.validator_for(schema, default=Draft202012Validator)
    except Exception:  # noqa: BLE001 - an unknown $schema URI
        cls = Draft202012Validator
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise GrammarError(f"json_schema: invalid schema at {where}: {e.message}") from None
    except RecursionError:
        raise GrammarError("json_schema: the schema nests too deeply") from None


def _check_refs(schema: Any) -> None:
    dangling = dangling_ref(schema)
    if dangling is not None:
        path, ref = dangling
        raise GrammarError(f"json_schema: $ref {ref!r} at {path} points to nothing")


def json_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of a JSON text (brackets inside strings ignored), without parsing it."""
    return _nesting_depth(text, "[{", "]}", json_strings=True)


def bracket_depth(text: str) -> int:
    """Deepest ``(``/``[``/``{`` nesting of a regex or EBNF text (escaped characters ignored)."""
    return _nesting_depth(text, "([{", ")]}", json_strings=False)


def _nesting_depth(text: str, opens: str, closes: str, *, json_strings: bool) -> int:
    """Deepest nesting of the ``opens``/``closes`` brackets in ``text``, in one scan without a parser.

    ``json_strings``: JSON text: brackets inside ``"..."`` strings are ignored, a backslash escapes only inside
    a string, and an unmatched closer counts (the depth may go below 0). Otherwise (regex, EBNF): a backslash
    escapes the next character anywhere, and an unmatched closer is ignored (the depth never goes below 0).
    """
    depth = best = 0
    in_str = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and (in_str or not json_strings):
            escaped = True
        elif in_str:
            in_str = ch != '"'
        elif ch == '"' and json_strings:
            in_str = True
        elif ch in opens:
            depth += 1
            best = max(best, depth)
        elif ch in closes:
            depth = depth - 1 if json_strings else max(depth - 1, 0)
    return best


def regex_stats(pattern: str, cap: int = 1 << 30) -> tuple[int, set[str]]:
    """``(expanded_size, features)`` of a Python-syntax regex.

    expanded_size: positions with every bounded repetition unrolled (``a{1,100}`` counts 100), a bound on the
    automaton an index-building backend constructs (outlines builds a DFA over it); capped at ``cap``.
    features: constructs some backends lack: ``"lookaround"``, ``"backreference"``, ``"conditional"``.
    A pattern Python cannot parse gives ``(0, set())`` (``re.compile`` reports it).
    """
    import re._parser as sre_parse  # the stdlib parser; private but stable across 3.11-3.13

    features: set[str] = set()

    def size(items: Any) -> int:
        total = 0
        for op, arg in items:
            name = str(op)
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                lo, hi, body = arg
                count = hi if hi != sre_parse.MAXREPEAT else lo + 1
                total += max(count, 1) * size(body)
            elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
                total += size(arg[-1])
            elif name == "BRANCH":
                total += sum(size(b) for b in arg[1])
            elif name in ("ASSERT", "ASSERT_NOT"):
                features.add("lookaround")
                total += size(arg[1])
            elif name == "GROUPREF":
                features.add("backreference")
                total += 1
            elif name == "GROUPREF_EXISTS":
                features.add("conditional")
                total += size(arg[1]) + (size(arg[2]) if arg[2] else 0)
            else:
                total += 1
            total = min(total, cap)
        return total

    try:
        return size(sre_parse.parse(pattern)), features
    except Exception:  # noqa: BLE001 - syntax errors are reported by re.compile
        return 0, set()
