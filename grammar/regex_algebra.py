"""Regular-language algebra on JSON-schema patterns, computed exactly and returned as one regex (issue 17):
``minLength`` / ``maxLength`` next to ``pattern`` (:func:`pattern_with_lengths`), ``pattern`` next to a format
pattern (:func:`intersect_patterns`), and the names no ``patternProperties`` pattern matches
(:func:`complement_of_patterns`).

Grammar backends compile ``pattern`` to an automaton and ignore string lengths next to it (xgrammar 0.2.9,
outlines-core). The intersection is regular, so it is computed exactly:

1. the pattern's search semantics made explicit (``schema_lowering.search_pattern``: a whole-string regex);
2. a DFA of it (interegular, Python regex syntax; constructs interegular lacks — lookaround, backreferences —
   give up);
3. when every string of the pattern's language already has an allowed length (its shortest and longest
   accepted strings, from the DFA), the lengths are redundant and the pattern is returned as is;
4. otherwise the product of the DFA with a length counter (``0..maxLength``, or saturating at ``minLength``
   when there is no maximum) is turned back into a regex by state elimination (Brzozowski & McCluskey 1963;
   states with the fewest in x out edges first), given up when it grows past ``MAX_REGEX_CHARS``.

Lengths count code points, as JSON Schema does (and as the DFA's characters are).
"""

from __future__ import annotations

from collections import deque
from typing import Any

#: largest intersected regex produced (a bigger one is not returned: the schema is then refused by name)
MAX_REGEX_CHARS = 4000
_MAX_PRODUCT_STATES = 4000
_SPECIAL = set("\\]^-[")


def _dfa(pattern: str) -> tuple[str, Any] | None:
    """``(whole-string regex, its DFA)`` for a JSON-schema ``pattern`` (search semantics); None when
    interegular cannot parse it."""
    from radixgen.grammar.schema_lowering import search_pattern

    full = search_pattern(pattern)
    core = full[1:-1] if full.startswith("^") and full.endswith("$") and not full.endswith("\\$") else full
    if "^" in core.replace("\\^", "").replace("[^", "") or "$" in core.replace("\\$", ""):
        return None
    try:
        import interegular

        return full, interegular.parse_pattern(core).to_fsm()
    except Exception:  # noqa: BLE001 - interegular raises its own Unsupported / parse errors
        return None


def intersect_patterns(a: str, b: str) -> str | None:
    """A whole-string regex for the strings in which both ``a`` and ``b`` are found (``pattern`` next to a
    ``format`` that has a pattern); None when it cannot be built within the limits."""
    da, db = _dfa(a), _dfa(b)
    if da is None or db is None:
        return None
    try:
        both = da[1] & db[1]
    except Exception:  # noqa: BLE001 - alphabets interegular cannot combine
        return None
    return _product_regex(both, 0, None) if _length_range(both)[0] is not None else None


def complement_of_patterns(patterns: list[str]) -> str | None:
    """A whole-string regex for the strings in which none of ``patterns`` is found; None when it cannot be
    built within the limits."""
    union = None
    for p in patterns:
        parsed = _dfa(p)
        if parsed is None:
            return None
        union = parsed[1] if union is None else union | parsed[1]
    if union is None:
        return None
    try:
        rest = union.everythingbut()
    except Exception:  # noqa: BLE001
        return None
    return _product_regex(rest, 0, None) if _length_range(rest)[0] is not None else None


def pattern_with_lengths(pattern: str, lo: int | None, hi: int | None) -> str | None:
    """A whole-string regex for the strings in which ``pattern`` is found and whose length is in ``[lo, hi]``
    (``None``: unbounded); None when it cannot be built within the limits (module docstring)."""
    parsed = _dfa(pattern)
    if parsed is None:
        return None
    full, fsm = parsed
    lo = lo or 0
    shortest, longest = _length_range(fsm)
    if shortest is None:
        return None  # the pattern matches nothing (validation reports the schema)
    if shortest >= lo and (hi is None or (longest is not None and longest <= hi)):
        return full
    return _product_regex(fsm, lo, hi)


def _edges(fsm: Any) -> dict[int, dict[int, list[Any]]]:
    """``state -> {next_state: [symbols]}``."""
    out: dict[int, dict[int, list[Any]]] = {}
    for q, row in fsm.map.items():
        for sym, nxt in row.items():
            out.setdefault(q, {}).setdefault(nxt, []).append(sym)
    return out


def _live(fsm: Any) -> set[int]:
    """States from which a final state can be reached."""
    back: dict[int, set[int]] = {}
    for q, row in fsm.map.items():
        for nxt in row.values():
            back.setdefault(nxt, set()).add(q)
    live, todo = set(fsm.finals), list(fsm.finals)
    while todo:
        for p in back.get(todo.pop(), ()):
            if p not in live:
                live.add(p)
                todo.append(p)
    return live


def _length_range(fsm: Any) -> tuple[int | None, int | None]:
    """(shortest, longest) accepted length; longest None when unbounded; (None, None) for the empty language."""
    live = _live(fsm)
    if fsm.initial not in live:
        return None, None
    dist = {fsm.initial: 0}
    queue = deque([fsm.initial])
    while queue:
        q = queue.popleft()
        for nxt in fsm.map.get(q, {}).values():
            if nxt in live and nxt not in dist:
                dist[nxt] = dist[q] + 1
                queue.append(nxt)
    shortest = min(dist[q] for q in fsm.finals if q in dist)
    longest: dict[int, int | None] = {}
    on_stack: set[int] = set()

    def walk(q: int) -> int | None:  # longest path to a final state; None = unbounded (a live cycle)
        if q in longest:
            return longest[q]
        if q in on_stack:
            return None
        on_stack.add(q)
        best: int | None = 0 if q in fsm.finals else -1
        for nxt in fsm.map.get(q, {}).values():
            if nxt not in live:
                continue
            sub = walk(nxt)
            if sub is None:
                best = None
                break
            if best is not None:
                best = max(best, sub + 1)
        on_stack.discard(q)
        longest[q] = best
        return best

    try:
        top = walk(fsm.initial)
    except RecursionError:
        return shortest, None
    return shortest, top


def _char_class(fsm: Any, symbols: list[Any]) -> str:
    from interegular.fsm import anything_else

    chars: list[str] = []
    negated = False
    for sym in symbols:
        for ch in fsm.alphabet.by_transition[sym]:
            if ch is anything_else:
                negated = True
            else:
                chars.append(ch)
    if negated:  # anything_else: every character the alphabet does not name, plus the ones listed here
        named = [c for sym, cs in fsm.alphabet.by_transition.items() if sym not in symbols for c in cs]
        named = [c for c in named if c is not anything_else]
        return "[^" + "".join(_escape(c) for c in sorted(named)) + "]" if named else "[\\s\\S]"
    if len(chars) == 1:
        return "\\" + chars[0] if chars[0] in ".^$*+?()[]{}|\\/" else _escape(chars[0])
    return "[" + "".join(_escape(c) for c in sorted(chars)) + "]"


def _escape(ch: str) -> str:
    if ch in _SPECIAL:
        return "\\" + ch
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    return ch


def _product_regex(fsm: Any, lo: int, hi: int | None) -> str | None:
    cap = hi if hi is not None else lo
    live = _live(fsm)
    edges = _edges(fsm)
    start = (fsm.initial, 0)
    states = {start}
    todo = [start]
    arcs: dict[Any, dict[Any, str]] = {}
    while todo:
        q, n = todo.pop()
        if n + 1 > cap and hi is not None:
            continue
        m = min(n + 1, cap)
        for nxt, symbols in edges.get(q, {}).items():
            if nxt not in live:
                continue
            target = (nxt, m)
            arcs.setdefault((q, n), {})[target] = _char_class(fsm, symbols)
            if target not in states:
                states.add(target)
                todo.append(target)
                if len(states) > _MAX_PRODUCT_STATES:
                    return None
    finals = [s for s in states if s[0] in fsm.finals and s[1] >= lo]
    if not finals:
        return None
    return _eliminate(states, arcs, start, finals)


def _union(a: str | None, b: str) -> str:
    return b if a is None or a == b else f"({a}|{b})"


def _eliminate(states: set[Any], arcs: dict[Any, dict[Any, str]], start: Any, finals: list[Any]) -> str | None:
    """State elimination on a generalized NFA with a fresh start and accept state."""
    begin, end = ("begin",), ("end",)
    g: dict[Any, dict[Any, str]] = {s: dict(row) for s, row in arcs.items()}
    g[begin] = {start: ""}
    for f in finals:
        g.setdefault(f, {})
        g[f][end] = _union(g[f].get(end), "")
    inner = set(states)
    while inner:
        incoming = {s: [p for p, row in g.items() if s in row and p != s] for s in inner}
        q = min(inner, key=lambda s: len(incoming[s]) * len([n for n in g.get(s, {}) if n != s]))
        inner.discard(q)
        row = g.pop(q, {})
        loop = row.pop(q, None)
        star = f"({loop})*" if loop else ""
        for p in incoming[q]:
            into = g[p].pop(q)
            for nxt, out in row.items():
                path = into + star + out
                g[p][nxt] = _union(g[p].get(nxt), path) if nxt in g[p] else path
                if len(g[p][nxt]) > MAX_REGEX_CHARS:
                    return None
    result = g[begin].get(end)
    return None if result is None else f"^({result})$"
