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

from radixgen.grammar.ebnf_rewrite import unroll_bounded_repeats

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
