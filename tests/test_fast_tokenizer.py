"""FastTokenizer (the torch-free tokenizer of the server processes) against transformers' AutoTokenizer."""

from __future__ import annotations

import random

import pytest
from shared_paths import LLAMA2_TOKENIZER, STORIES
from transformers import AutoTokenizer

from radixgen.runtime.fast_tokenizer import FastTokenizer

TEXTS = ["Once upon a time", " lead", "héllo wörld 日本語 😀", "a\nb\n\n  c", "<s> hi </s>", "  ", 'Lily: "Hi!"']


@pytest.mark.parametrize("path", [STORIES, LLAMA2_TOKENIZER], ids=["stories260K", "llama2-32k"])
def test_same_ids_and_text_as_transformers(path: object) -> None:
    hf = AutoTokenizer.from_pretrained(str(path))
    fast = FastTokenizer(str(path))
    assert (fast.bos_token_id, fast.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    for text in TEXTS:
        assert fast.encode(text) == hf.encode(text)
        assert fast.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(600) for _ in range(rng.randrange(1, 12))]
        for skip in (True, False):
            expected = hf.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
            assert fast.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False) == expected


def test_chat_template_renders_like_transformers() -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    messages = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "hello"}]
    hf = AutoTokenizer.from_pretrained(str(STORIES))
    fast = FastTokenizer(str(STORIES))
    for gen in (False, True):
        kwargs = {"chat_template": template, "tokenize": False, "add_generation_prompt": gen}
        assert fast.apply_chat_template(messages, **kwargs) == hf.apply_chat_template(messages, **kwargs)
    text = fast.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    ids = fast.apply_chat_template(messages, chat_template=template, add_generation_prompt=True)
    assert ids == fast.encode(str(text), add_special_tokens=False)
    with pytest.raises(ValueError, match="chat_template"):
        fast.apply_chat_template(messages)  # stories260K has no template of its own
