"""Chat templates: the tokenizer's own, or a built-in one chosen with ``--chat-template NAME``.

Built-ins are Jinja templates in the Hugging Face format, rendered by ``tokenizer.apply_chat_template(...,
chat_template=...)``; each may add stop strings the model is expected to emit at the end of its turn (e.g.
ChatML's ``<|im_end|>`` when the tokenizer has no such special token). ``--chat-template`` also takes a path to a
``.jinja`` file or an inline Jinja template string.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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
class ChatTemplate:
    """A named Jinja chat template and the stop strings that end an assistant turn in it."""

    name: str
    template: str
    stop: tuple[str, ...] = field(default_factory=tuple)


BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("chatml", CHATML, ("<|im_end|>",)),
    "llama-2": ChatTemplate("llama-2", LLAMA2),
}


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (no template, or the template rejected them)."""


def resolve_chat_template(spec: str | None) -> ChatTemplate | None:
    """The template for ``--chat-template``: a built-in name, a path to a Jinja file, or inline Jinja.

    Returns None when ``spec`` is None (the tokenizer's own template is used then).

    Raises:
        ValueError: ``spec`` is neither a built-in name, an existing file, nor Jinja text.
    """
    if spec is None:
        return None
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec]
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            return ChatTemplate(os.path.basename(spec), f.read())
    if "{{" in spec or "{%" in spec:
        return ChatTemplate("inline", spec)
    raise ValueError(
        f"chat_template: {spec!r} is not a built-in template ({', '.join(BUILTIN_TEMPLATES)}), "
        "a file, or a Jinja template"
    )


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    template: ChatTemplate | None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """Render ``messages`` to the prompt text.

    Raises:
        ChatTemplateError: no template is available, or rendering failed (e.g. roles out of order).
    """
    source = template.template if template is not None else getattr(tokenizer, "chat_template", None)
    if not source:
        raise ChatTemplateError(
            "this model's tokenizer has no chat template; start the server with --chat-template NAME "
            f"(built-ins: {', '.join(BUILTIN_TEMPLATES)}) or a Jinja file, or use /v1/completions"
        )
    try:
        out = tokenizer.apply_chat_template(
            messages,
            chat_template=source,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            continue_final_message=continue_final_message,
            tokenize=False,
            **(template_kwargs or {}),
        )
    except Exception as e:  # jinja2 TemplateError, ValueError from continue_final_message, ...
        raise ChatTemplateError(f"the chat template could not render the messages: {e}") from e
    if not isinstance(out, str):
        raise ChatTemplateError("the chat template did not render to a string")
    return out
