"""Named chat templates and how a ``chat_template`` setting resolves to Jinja text.

Shared by the DSL client (``radixgen.chat_template`` derives turn-by-turn pieces from the Jinja) and the server
(``--chat-template``, rendered by ``radixgen.runtime.openai_api.chat_templates``). A leaf module: standard library
only, so importing it loads neither the runtime nor Jinja.

Built-ins are Jinja templates in the Hugging Face format; each may add stop strings the model is expected to emit
at the end of its turn (e.g. ChatML's ``<|im_end|>`` when the tokenizer has no such special token). A setting may
also be a path to a ``.jinja`` file or an inline Jinja template string.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta's Llama-2 chat format (as in the Llama-2 tokenizer_config.json): system folded into the first user turn.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + (message['content'] or '') %}"
    "{% else %}{% set content = message['content'] or '' %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class NamedTemplate:
    """A named Jinja chat template and the stop strings that end an assistant turn in it.

    Attributes:
        name: the built-in name, the file's base name, or ``"inline"``.
        template: the Jinja source (Hugging Face chat-template format).
        stop: extra stop strings for assistant turns (may be empty).
    """

    name: str
    template: str
    stop: tuple[str, ...] = ()


BUILTIN_TEMPLATES: dict[str, NamedTemplate] = {
    "chatml": NamedTemplate("chatml", CHATML, ("<|im_end|>",)),
    "llama-2": NamedTemplate("llama-2", LLAMA2),
}


def resolve_chat_template(spec: str | None) -> NamedTemplate | None:
    """The template a ``chat_template`` setting names: a built-in name, a path to a Jinja file, or inline Jinja.

    Args:
        spec: the setting; None means "the tokenizer's own template".

    Returns:
        The NamedTemplate, or None when ``spec`` is None. The Jinja is not compiled here.

    Raises:
        ValueError: ``spec`` is neither a built-in name, an existing file, nor Jinja text (the message lists the
            built-in names).
        OSError: ``spec`` names a file that cannot be read.
    """
    if spec is None:
        return None
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec]
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            return NamedTemplate(os.path.basename(spec), f.read())
    if "{{" in spec or "{%" in spec:
        return NamedTemplate("inline", spec)
    raise ValueError(
        f"chat_template: {spec!r} is not a built-in template ({', '.join(BUILTIN_TEMPLATES)}), "
        "a file, or a Jinja template"
    )
