"""grammar/ebnf_rewrite.py: unrolled bounded repeats accept exactly the same tokens as xgrammar's own repeat.

Both grammars are compiled against the stories260K tokenizer (512 tokens, fast) and walked along seeded random
token streams; at every step the two bitmasks and the termination state must be identical.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import xgrammar as xgr
from shared_paths import STORIES
from transformers import AutoTokenizer

from radixgen.grammar.ebnf_rewrite import json_string_characters, unroll_bounded_repeats

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"]},
    {
        "type": "object",
        "properties": {
            "tag": {"type": "string", "minLength": 2, "maxLength": 6},
            "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        },
        "required": ["tag", "items"],
    },
    {"type": "object", "properties": {"s": {"type": "string", "minLength": 2}}, "required": ["s"]},  # {2, -1}
    {  # rule names with "-" (xgrammar keeps them from $defs): the rewrite must take the whole name
        "$defs": {"short-name": {"type": "string", "minLength": 1, "maxLength": 5}},
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/short-name"}, "m": {"$ref": "#/$defs/short-name"}},
        "required": ["n", "m"],
    },
]
VOCAB = 512  # stories260K
REGEXES = [r"[a-z]{0,8}!", r"\"[a-zA-Z ]{1,10}\""]


@pytest.fixture(scope="module")
def compiler() -> xgr.GrammarCompiler:
    tok = AutoTokenizer.from_pretrained(str(STORIES))
    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=VOCAB))


def _grammars() -> list[xgr.Grammar]:
    out = [xgr.Grammar.from_json_schema(json.dumps(s), any_whitespace=False) for s in SCHEMAS]
    return out + [xgr.Grammar.from_regex(r) for r in REGEXES]


@pytest.mark.parametrize("index", range(len(SCHEMAS) + len(REGEXES)))
def test_unrolled_grammar_has_identical_masks(compiler: xgr.GrammarCompiler, index: int) -> None:
    grammar = _grammars()[index]
    text = str(grammar)
    unrolled = unroll_bounded_repeats(text)
    assert unrolled is not text, "the case must exercise the rewrite"
    a = xgr.GrammarMatcher(compiler.compile_grammar(grammar))
    b = xgr.GrammarMatcher(compiler.compile_grammar(xgr.Grammar.from_ebnf(unrolled)))
    vocab = VOCAB
    rng = random.Random(index)
    for _walk in range(4):
        a.reset()
        b.reset()
        for _step in range(40):
            ma, mb = xgr.allocate_token_bitmask(1, vocab), xgr.allocate_token_bitmask(1, vocab)
            a.fill_next_token_bitmask(ma)
            b.fill_next_token_bitmask(mb)
            assert torch.equal(ma, mb)
            bits = ma[0]
            allowed = [t for t in range(vocab) if (int(bits[t // 32]) >> (t % 32)) & 1]
            if not allowed:
                break
            tok = rng.choice(allowed)
            assert a.accept_token(tok) and b.accept_token(tok)
            assert a.is_terminated() == b.is_terminated()
            if a.is_terminated():
                break


def test_length_strings_take_json_escapes_and_refuse_control_characters(compiler: xgr.GrammarCompiler) -> None:
    tok = AutoTokenizer.from_pretrained(str(STORIES))
    text = str(xgr.Grammar.from_json_schema(json.dumps({"type": "string", "minLength": 2, "maxLength": 4})))
    fixed = unroll_bounded_repeats(json_string_characters(text))
    assert fixed != text
    compiled = compiler.compile_grammar(xgr.Grammar.from_ebnf(fixed))

    def accepts(doc: str) -> bool:
        m = xgr.GrammarMatcher(compiled)
        return m.accept_string(doc) and m.accept_token(tok.eos_token_id) and m.is_terminated()

    assert accepts('"a\\nb"') and accepts('"\\u00e9x"') and accepts('"a\\"c"')  # escapes count one character
    assert not accepts('"a\tb"') and not accepts('"a"') and not accepts('"abcde"')
