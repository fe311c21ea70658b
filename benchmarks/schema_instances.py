"""Valid and invalid JSON instances of a JSON schema, for MaskBench-style checks of a grammar backend.

After MaskBench (the llguidance project's benchmark of token masks against JSONSchemaBench schemas, Geng et al.
2025, arXiv:2501.10868): a schema *passes* when its compiled grammar accepts every valid instance and rejects
every invalid one. Instances here:

* generated: ``hypothesis-jsonschema`` (``from_schema``; derandomized, so every run draws the same documents);
* hand-written: ``examples`` / ``default`` / ``const`` / ``enum`` values the schema itself carries;
* mutations of the generated ones: a property dropped or added, a value replaced by one of another type, a
  string lengthened / emptied, a number shifted, an array item added / removed, at the root and in nested
  positions.

Generated documents are kept only when they look like data a model would write: numbers within ±1e15
(integral floats written as integers, the same JSON value), strings and keys without control characters other
than newline and tab. hypothesis otherwise favours 25-digit integers, ``1e307`` and ``\u0001`` escapes, which
measure number-grammar corner cases rather than schema keywords.

Every candidate is labelled by ``jsonschema`` (the schema's draft, radixgen's format checker), never by how it
was made: a mutation that stays valid (an extra property of an open object) is a valid instance. Instances are
serialized with their object keys in the order the (normalised) schema declares them — every grammar backend
generates properties in declaration order, so a valid document in another order is a documented limitation,
not a bug — and valid ones in three whitespace forms (``{"a": 1}``, ``{"a":1}`` and indented), since any JSON
whitespace is valid.

hypothesis-jsonschema 0.23.1 calls ``many.more()``, which hypothesis 6.1xx replaced by iteration; objects then
fail to generate. :func:`_patch_hypothesis_jsonschema` gives its ``many`` the old interface (a wrapper around
hypothesis' own class).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from typing import Any

_NEW_KEY = "zz_extra"
_OTHER_TYPES: tuple[Any, ...] = (None, True, 0, 1.5, "", "x", [], {})


def _patch_hypothesis_jsonschema() -> None:
    import hypothesis.internal.conjecture.utils as cu
    import hypothesis_jsonschema._from_schema as fs

    if getattr(fs.cu, "_radixgen_patched", False):
        return

    class Many:
        def __init__(self, data: Any, **kw: Any) -> None:
            self._m = cu.many(data, **kw)
            self._m.__enter__()
            self._it = iter(self._m)
            self._done = False

        def more(self) -> bool:
            if self._done:
                return False
            try:
                next(self._it)
                return True
            except StopIteration:
                self._done = True
                self._m.__exit__(None)
                return False

        def reject(self, why: str | None = None) -> None:
            self._m.reject(why)

    class CU:
        _radixgen_patched = True
        many = Many

        def __getattr__(self, name: str) -> Any:
            return getattr(cu, name)

    fs.cu = CU()


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    import re

    from jsonschema.exceptions import ValidationError

    if isinstance(instance, str) and not re.search(pattern, instance, re.ASCII):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _ecma_pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Any:
    import re

    if not isinstance(instance, dict):
        return
    for pattern, sub in patterns.items():
        for k, v in instance.items():
            if re.search(pattern, k, re.ASCII):
                yield from validator.descend(v, sub, path=k, schema_path=pattern)


def validator(schema: Any) -> Any:
    """A ``jsonschema`` validator for ``schema`` (its ``$schema`` draft, 2020-12 by default; formats checked).

    ``pattern`` / ``patternProperties`` use ECMA-262's ASCII ``\\d`` / ``\\w`` (JSON Schema's regex dialect), not
    Python's Unicode ones (``"୯"`` is not a digit to a JSON-schema validator)."""
    from jsonschema import Draft202012Validator, validators

    from radixgen.grammar.json_formats import format_checker

    cls = validators.validator_for(schema, default=Draft202012Validator) if isinstance(schema, dict) else None
    ecma = validators.extend(
        cls or Draft202012Validator, {"pattern": _ecma_pattern, "patternProperties": _ecma_pattern_properties}
    )
    return ecma(schema, format_checker=format_checker())


def generated(schema: Any, n: int) -> list[Any]:
    """Up to ``n`` documents hypothesis-jsonschema draws for ``schema`` (derandomized); [] when it cannot."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis_jsonschema import from_schema

    _patch_hypothesis_jsonschema()
    out: list[Any] = []
    try:
        strategy = from_schema(schema, allow_x00=False)

        @settings(
            max_examples=n, database=None, deadline=None, derandomize=True, phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(strategy)
        def draw(doc: Any) -> None:
            out.append(doc)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            draw()
    except Exception:  # noqa: BLE001 - unsatisfiable / unsupported schemas simply give fewer instances
        pass
    return out


def realistic(doc: Any) -> bool:
    """Numbers within ±1e15, strings and keys without control characters except newline and tab."""
    if isinstance(doc, bool) or doc is None:
        return True
    if isinstance(doc, int | float):
        return abs(doc) <= 1e15
    if isinstance(doc, str):
        return not any((c < " " and c not in "\n\t") or "\x7f" <= c <= "\x9f" for c in doc)
    if isinstance(doc, list):
        return all(realistic(v) for v in doc)
    return all(realistic(k) and realistic(v) for k, v in doc.items())


def _integral(doc: Any) -> Any:
    if isinstance(doc, float) and doc.is_integer() and abs(doc) <= 1e15:
        return int(doc)
    if isinstance(doc, list):
        return [_integral(v) for v in doc]
    if isinstance(doc, dict):
        return {k: _integral(v) for k, v in doc.items()}
    return doc


def carried(schema: Any) -> list[Any]:
    """Values written in the schema's own ``examples`` / ``default`` / ``const`` / ``enum`` (root only)."""
    if not isinstance(schema, dict):
        return []
    out: list[Any] = []
    if isinstance(schema.get("examples"), list):
        out += schema["examples"][:3]
    for k in ("default", "const"):
        if k in schema:
            out.append(schema[k])
    if isinstance(schema.get("enum"), list):
        out += schema["enum"][:3]
    return out


def _positions(doc: Any, path: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, doc
    if depth >= 3:
        return
    if isinstance(doc, dict):
        for k in list(doc)[:6]:
            yield from _positions(doc[k], (*path, k), depth + 1)
    elif isinstance(doc, list):
        for i in range(min(len(doc), 2)):
            yield from _positions(doc[i], (*path, i), depth + 1)


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(doc)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def _variants(value: Any) -> list[Any]:
    """Values near ``value`` that may violate one keyword (type, bounds, length, members)."""
    out: list[Any] = [v for v in _OTHER_TYPES if type(v) is not type(value)][:4]
    if isinstance(value, bool):
        out.append(not value)
    elif isinstance(value, int | float):
        out += [value + 1, value - 1, value * 1000 + 7, value + 0.5, -value - 1]
    elif isinstance(value, str):
        out += [value + "x", value + "x" * 40, "", value[:-1], value.upper() + "#!"]
    elif isinstance(value, list):
        out += [[], value + value[:1], value[1:], [*value, None]]
    elif isinstance(value, dict):
        keys = list(value)
        out += [{k: v for k, v in value.items() if k != drop} for drop in keys[:6]]
        out.append({**value, _NEW_KEY: 1})
        out.append({})
    return out


def mutations(doc: Any, limit: int = 60) -> list[Any]:
    """Documents that differ from ``doc`` in one place (see :func:`_variants`), at most ``limit``."""
    out: list[Any] = []
    for path, node in reversed(list(_positions(doc))):  # nested positions first: they probe inner keywords
        for v in _variants(node):
            out.append(_replace(doc, path, v))
            if len(out) >= limit:
                return out
    return out


def _declared(schema: Any, root: Any, depth: int = 0) -> list[dict[str, Any]]:
    """The subschemas that may describe one value: ``schema`` with its $ref / allOf / anyOf / oneOf parts."""
    if not isinstance(schema, dict) or depth > 8:
        return []
    out = [schema]
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        from radixgen.grammar.json_schema import resolve_ref

        try:
            out += _declared(resolve_ref(root, ref), root, depth + 1)
        except KeyError:
            pass
    for kw in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(kw) or []:
            out += _declared(sub, root, depth + 1)
    return out


def order_keys(doc: Any, schema: Any, root: Any) -> Any:
    """``doc`` with every object's keys in the order ``schema`` declares them (undeclared keys last)."""
    parts = _declared(schema, root)
    if isinstance(doc, dict):
        props: dict[str, Any] = {}
        for p in parts:
            if isinstance(p.get("properties"), dict):
                for k, v in p["properties"].items():
                    props.setdefault(k, v)
        rank = {k: i for i, k in enumerate(props)}
        keys = sorted(doc, key=lambda k: rank.get(k, len(rank)))
        extra = next((p["additionalProperties"] for p in parts if isinstance(p.get("additionalProperties"), dict)), {})
        return {k: order_keys(doc[k], props.get(k, extra), root) for k in keys}
    if isinstance(doc, list):
        prefix = next((p["prefixItems"] for p in parts if isinstance(p.get("prefixItems"), list)), [])
        items = next((p["items"] for p in parts if isinstance(p.get("items"), dict)), {})
        return [order_keys(v, prefix[i] if i < len(prefix) else items, root) for i, v in enumerate(doc)]
    return doc


def _dumps(doc: Any, form: int) -> str | None:
    try:
        if form == 0:
            text = json.dumps(doc, ensure_ascii=False, allow_nan=False)
        elif form == 1:
            text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        else:
            text = json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=2)
        text.encode("utf-8")
        return text
    except (ValueError, UnicodeEncodeError):
        return None


def instances(
    schema_text: str, normalized: Any = None, n_generated: int = 4, n_valid: int = 16, n_invalid: int = 12
) -> tuple[list[str], list[str]]:
    """``(valid, invalid)`` serialized instances of ``schema_text`` (module docstring), deduplicated.

    Args:
        normalized: the schema a backend compiles (for the key order); the schema itself when None.
        n_generated: realistic documents kept of the ``2 * n_generated`` hypothesis-jsonschema draws.
        n_valid / n_invalid: most valid / invalid instances kept.
    """
    schema = json.loads(schema_text)
    check = validator(schema)
    order_by = normalized if isinstance(normalized, dict) else schema
    drawn = [_integral(d) for d in generated(schema, 2 * n_generated) if realistic(d)]
    docs = drawn[:n_generated] + carried(schema)
    valid: dict[str, None] = {}
    invalid: dict[str, None] = {}
    seen: set[str] = set()
    candidates: list[Any] = []
    for d in docs:
        candidates.append(d)
    for d in docs[:n_generated]:
        candidates += [_integral(m) for m in mutations(d)]
    for doc in candidates:
        key = _dumps(doc, 1)
        if key is None or key in seen:
            continue
        seen.add(key)
        try:
            ok = check.is_valid(doc)
        except Exception:  # noqa: BLE001 - a validator crash (e.g. a huge number) is no label
            continue
        ordered = order_keys(doc, order_by, order_by)
        if ok:
            if len(valid) < n_valid:
                for form in (0, 1, 2) if len(valid) < 2 else (0,):
                    text = _dumps(ordered, form)
                    if text is not None:
                        valid[text] = None
        elif len(invalid) < n_invalid:
            text = _dumps(ordered, 0)
            if text is not None:
                invalid[text] = None
    return list(valid), list(invalid)
