"""Unroll bounded repetitions of an EBNF grammar into a chain of rules that end with what follows them.

xgrammar 0.2.8 compiles a bounded repetition ``X{lo, hi}`` (what ``minLength`` / ``maxLength`` strings,
``maxItems`` arrays and ``[a-z]{0,24}`` regexes become) to a counter the token-mask cache cannot see through:
once fewer than a token's length repetitions are left, nearly every token of the vocabulary is checked one by
one at runtime. Filling a 32k-token bitmask row then costs 1–6 ms (measured on the Llama-2 tokenizer), against
a few microseconds elsewhere; at batch 16 inside ``"maxLength": 24`` strings that is ~13 ms per decode step.

The rewrite: ``X{lo, hi} T`` (``T`` a string literal or a character class: in JSON schemas the closing quote or
bracket) becomes ``X`` ``lo`` times followed by ``R_{hi-lo}`` where::

    R_0 ::= T
    R_k ::= T | X R_{k-1}

An unbounded ``X{lo, -1} T`` (``minLength`` without ``maxLength``: a counter too) becomes ``X`` ``lo`` times
followed by ``R ::= T | X R``.

The language is the same; every state now sits in a rule of its own, and a token either stays inside the chain
(context-independent, precomputed) or is rejected inside it, except the few that run past ``T``. Fills drop to
~5 µs per row. Repetitions followed by anything else are left as they are, and so are those past a budget of
``max_rules`` generated rules per grammar (compile time: ~0.1 s for the ~100 rules of bench_json_decode's
PERSON_SCHEMA, ~1 s for 256 rules of ``maxLength: 64`` strings, on the 32k Llama-2 vocabulary).
"""

from __future__ import annotations

import re

#: ``NAME{lo, hi} T`` with T a string literal or a character class that carries no quantifier of its own
_REPEAT = re.compile(r'(?<![\w"\]-])([\w-]+)\{(\d+), (-1|\d+)\} ("(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\])(?![*+?{])')
_RULE_NAME = re.compile(r"^([\w-]+) ::=", re.MULTILINE)  # xgrammar names keep a schema's "-"

#: most rules generated per grammar (a chain ``R_0 .. R_k`` is k + 1); bounds the extra compile time
MAX_RULES = 256


def _literal_spans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of every string literal and character class of ``text`` (escapes honoured)."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            j = i + 1
            while j < n and text[j] != close:
                j += 2 if text[j] == "\\" else 1
            spans.append((i, j + 1))
            i = j + 1
        else:
            i += 1
    return spans


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(s < pos < e for s, e in spans)


def unroll_bounded_repeats(ebnf: str, max_rules: int = MAX_RULES) -> str:
    """``ebnf`` (xgrammar's printed EBNF, one rule per line) with each ``X{lo, hi} T`` unrolled, in order of
    appearance, while the chains fit in ``max_rules`` rules (module docstring). Returns ``ebnf`` itself when
    nothing was rewritten."""
    spans = _literal_spans(ebnf)
    taken = set(_RULE_NAME.findall(ebnf))
    chains: dict[tuple[str, int, str], str] = {}
    new_rules: list[str] = []

    def chain(name: str, k: int, term: str) -> str:
        key = (name, k, term)
        if key not in chains:
            base, n = f"{name}_upto", 0
            while any(f"{base}{n}_{i}" in taken for i in range(k + 1)):
                n += 1
            base = f"{base}{n}"
            taken.update(f"{base}_{i}" for i in range(k + 1))
            new_rules.append(f"{base}_0 ::= ({term})")
            new_rules.extend([f"{base}_{i} ::= (({term}) | ({name} {base}_{i - 1}))" for i in range(1, k + 1)])
            chains[key] = f"{base}_{k}"
        return chains[key]

    def unbounded(name: str, term: str) -> str:
        key = (name, -1, term)
        if key not in chains:
            base, n = f"{name}_more", 0
            while f"{base}{n}" in taken:
                n += 1
            rule = f"{base}{n}"
            taken.add(rule)
            new_rules.append(f"{rule} ::= (({term}) | ({name} {rule}))")
            chains[key] = rule
        return chains[key]

    def sub(m: re.Match[str]) -> str:
        name, lo, hi, term = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if _inside(m.start(), spans) or lo > max_rules:
            return m.group(0)
        if hi == -1:  # X{lo,} T: lo copies, then R ::= T | X R
            fits = (name, -1, term) in chains or len(new_rules) + 1 <= max_rules
            return " ".join([name] * lo + [unbounded(name, term)]) if fits else m.group(0)
        fits = (name, hi - lo, term) in chains or len(new_rules) + hi - lo + 1 <= max_rules
        if hi < lo or not fits:
            return m.group(0)
        return " ".join([name] * lo + [chain(name, hi - lo, term)])

    out = _REPEAT.sub(sub, ebnf)
    if not new_rules:
        return ebnf
    return out.rstrip("\n") + "\n" + "\n".join(new_rules) + "\n"


#: the character rule xgrammar 0.2.9 prints for ``minLength`` / ``maxLength`` strings: it admits raw control
#: characters (invalid in JSON) and no escape sequence (``\n``, ``\"``, ``\u00e9`` are valid JSON)
_LENGTH_CHARACTERS = re.compile(r'^([\w-]+) ::= \(\(\[\^\\"\\\\\\r\\n\]\)\)$', re.MULTILINE)
_JSON_CHARACTER = (
    r'(([^\0-\x1f\"\\\r\n]) | ("\\" [\"\\/bfnrt]) | ("\\u" [A-Fa-f0-9] [A-Fa-f0-9] [A-Fa-f0-9] [A-Fa-f0-9]))'
)


def json_string_characters(ebnf: str) -> str:
    """``ebnf`` (xgrammar's printed JSON grammar) with each length-bounded string character rule made JSON's
    own: any character but ``"``, ``\\`` and controls, or one escape sequence — one repetition per code point,
    so the length bounds still count characters. The escapes are spelled inline: a reference to xgrammar's
    ``basic_escape`` rule makes every token inside the string context-dependent (~7 ms per 32k-token mask
    instead of ~10 µs). Returns ``ebnf`` itself when there is no such rule."""
    if not _LENGTH_CHARACTERS.search(ebnf):
        return ebnf
    return _LENGTH_CHARACTERS.sub(lambda m: f"{m.group(1)} ::= {_JSON_CHARACTER}", ebnf)
