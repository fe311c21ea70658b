"""Named chat templates and how a ``chat_template`` setting resolves to Jinja text.

Shared by the DSL client (``radixgen.chat_template`` derives turn-by-turn pieces from the Jinja) and the server
(``--chat-template``, rendered by ``radixgen.runtime.openai_api.chat_templates``); ``compile_chat_template`` compiles
the Jinja for both (on the server, in ``FastTokenizer``). A leaf module: standard library only (jinja2 is imported by
the first compile), so importing it loads neither the runtime nor Jinja.

Built-ins are Jinja templates in the Hugging Face format; each may add stop strings the model is expected to emit
at the end of its turn (e.g. ChatML's ``<|im_end|>`` when the tokenizer has no such special token). A setting may
also be a path to a ``.jinja`` file or an inline Jinja template string.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


@functools.cache
def compile_chat_template(source: str) -> Any:
    """Compile (once per ``source``) a Jinja chat template the way ``transformers`` does: sandboxed, with
    ``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``raise_exception``, ``strftime_now`` and a ``tojson``
    filter. Imports jinja2 on first use; returns the ``jinja2.Template``.

    Raises:
        jinja2.exceptions.TemplateError: ``source`` does not compile.
    """
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)
