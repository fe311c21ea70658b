"""radixgen.chat_template: turn-by-turn pieces probed from Jinja chat templates, checked against direct rendering."""

from __future__ import annotations

import jinja2
import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from radixgen.chat_template import ChatTemplate, get_chat_template
from radixgen.chat_templates import BUILTIN_TEMPLATES

# Llama-3-Instruct style: <|begin_of_text|> once, then header blocks closed by <|eot_id|>
LLAMA3 = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Zephyr style: one line per statement (whitespace handled by trim_blocks / lstrip_blocks)
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

# Mistral-Instruct style: BOS once, [INST] blocks, rejects system turns
MISTRAL = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

# Qwen2.5 style: ChatML with a default system block when the conversation has none
QWEN = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# depends on the whole conversation (a turn count up front): not renderable turn by turn
COUNTING = (
    "{{ messages | length }} turns\n"
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
)

BOS, EOS = "<s>", "</s>"


def _hf_render(source: str, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Direct rendering, set up like transformers' apply_chat_template."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=BOS, eos_token=EOS
    )


def _conv(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


CONVERSATIONS = [
    _conv(("user", "Hi!")),
    _conv(("user", "Hi!"), ("assistant", "Hello, how can I help?")),
    _conv(("user", "Tell me a joke."), ("assistant", "No."), ("user", "Please?"), ("assistant", "Fine: knock knock.")),
    _conv(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")),
]
SYSTEM_CONVERSATIONS = [
    _conv(("system", "You are terse."), ("user", "Why is the sky blue?")),
    _conv(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Bye!")),
]


def _incremental(tpl: ChatTemplate, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """What the DSL writes: prefix, content, suffix per turn (the generation prompt is the assistant prefix)."""
    out, previous = "", None
    for i, m in enumerate(messages):
        out += tpl.role_prefix(m["role"], previous, i == 0) + m["content"] + tpl.role_suffix(m["role"])
        previous = m["role"]
    return out + (tpl.generation_prompt if add_generation_prompt else "")


def _source(name: str) -> str:
    return BUILTIN_TEMPLATES[name].template if name in BUILTIN_TEMPLATES else globals()[name]


@pytest.mark.parametrize("name", ["chatml", "llama-2", "LLAMA3", "ZEPHYR", "MISTRAL", "QWEN"])
def test_round_trip_matches_direct_rendering(name: str) -> None:
    source = _source(name)
    tpl = ChatTemplate.from_jinja(name, source, bos_token=BOS, eos_token=EOS)
    convs = CONVERSATIONS + (SYSTEM_CONVERSATIONS if tpl.supports_system else [])
    for conv in convs:
        for gen_prompt in (False, True):
            if gen_prompt and conv[-1]["role"] != "user":
                continue
            assert _incremental(tpl, conv, gen_prompt) == _hf_render(source, conv, gen_prompt), (conv, gen_prompt)


def test_chatml_pieces() -> None:
    tpl = get_chat_template("chatml")
    assert tpl.stop == ("<|im_end|>",)
    assert tpl.preamble == ""
    assert tpl.role_prefix("user", None, True) == "<|im_start|>user\n"
    assert tpl.role_prefix("assistant", "user", False) == "<|im_start|>assistant\n" == tpl.generation_prompt
    assert tpl.role_suffix("assistant") == "<|im_end|>\n"
    assert tpl.role_prefix("system", None, True) == "<|im_start|>system\n"
    assert tpl.system_after_first and tpl.role_prefix("system", "assistant", False) == "<|im_start|>system\n"


def test_llama2_folds_system_into_first_inst() -> None:
    tpl = get_chat_template("llama-2", bos_token=BOS, eos_token=EOS)
    assert tpl.role_prefix("system", None, True) == "<s>[INST] <<SYS>>\n"
    assert tpl.role_suffix("system") == "\n<</SYS>>\n\n"
    assert tpl.role_prefix("user", "system", False) == ""
    assert tpl.role_prefix("user", "assistant", False) == "<s>[INST] "
    assert tpl.role_suffix("assistant") == " </s>"
    assert not tpl.system_after_first
    with pytest.raises(ValueError, match="llama-2"):
        tpl.role_prefix("system", "assistant", False)


def test_llama3_preamble_and_zephyr_pieces() -> None:
    llama3 = ChatTemplate.from_jinja("llama3", LLAMA3, bos_token="<|begin_of_text|>")
    assert llama3.preamble == "<|begin_of_text|>"
    assert llama3.role_prefix("user", None, True) == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    assert llama3.role_prefix("user", "assistant", False) == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert llama3.role_suffix("user") == "<|eot_id|>"
    zephyr = ChatTemplate.from_jinja("zephyr", ZEPHYR, bos_token=BOS, eos_token=EOS)
    # trim_blocks drops the newline after a block tag, not after an expression: both end in "\n"
    assert zephyr.prefixes["assistant"] == "<|assistant|>\n" == zephyr.generation_prompt
    assert zephyr.role_suffix("user") == "</s>\n"


def test_default_system_block_is_the_preamble() -> None:
    qwen = ChatTemplate.from_jinja("qwen", QWEN)
    assert qwen.preamble == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert qwen.role_prefix("system", None, True) == "<|im_start|>system\n"


def test_template_rejecting_system() -> None:
    tpl = ChatTemplate.from_jinja("mistral", MISTRAL, bos_token=BOS, eos_token=EOS)
    assert tpl.preamble == BOS and not tpl.supports_system
    with pytest.raises(ValueError, match="mistral does not support a system role"):
        tpl.role_prefix("system", None, True)
    with pytest.raises(ValueError, match="mistral"):
        tpl.role_suffix("system")


def test_non_incremental_template_is_rejected() -> None:
    with pytest.raises(ValueError, match="chat template counting cannot be rendered turn by turn"):
        ChatTemplate.from_jinja("counting", COUNTING)
    with pytest.raises(ValueError, match="cannot be rendered turn by turn: the Jinja does not compile"):
        ChatTemplate.from_jinja("broken", "{% for m in messages %}")


def test_get_chat_template_inline_and_unknown() -> None:
    tpl = get_chat_template(BUILTIN_TEMPLATES["chatml"].template)
    assert tpl.name == "inline" and tpl.prefixes == get_chat_template("chatml").prefixes
    with pytest.raises(ValueError, match="chat_template"):
        get_chat_template("no-such-template")
    with pytest.raises(ValueError, match="role"):
        tpl.role_prefix("tool", None, True)
