"""Rendering chat messages to prompt text with the tokenizer's template or a ``--chat-template`` one.

The built-in templates and how a ``--chat-template`` setting (a built-in name, a ``.jinja`` file or inline Jinja)
resolves live in the torch-free leaf module ``radixgen.chat_templates``, shared with the DSL client; they are
re-exported here. Templates are rendered by ``tokenizer.apply_chat_template(..., chat_template=...)``.
"""

from __future__ import annotations

from typing import Any

from radixgen.chat_templates import BUILTIN_TEMPLATES, NamedTemplate, resolve_chat_template

__all__ = ["BUILTIN_TEMPLATES", "ChatTemplateError", "NamedTemplate", "render_chat", "resolve_chat_template"]


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (no template, or the template rejected them)."""


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    template: NamedTemplate | None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """Render ``messages`` to the prompt text.

    Args:
        tokenizer: a Hugging Face tokenizer (``apply_chat_template``, ``chat_template``).
        messages: OpenAI-style ``{"role", "content", ...}`` dicts.
        template: the ``--chat-template`` one, or None for the tokenizer's own.
        add_generation_prompt / continue_final_message / template_kwargs: passed to ``apply_chat_template``.

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
