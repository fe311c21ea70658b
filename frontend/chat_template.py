"""Chat templates for the DSL: how ``with s.user(): ...`` blocks render to text, one turn at a time.

The DSL builds a prompt incrementally (a role prefix, then content that may include ``gen`` calls, then the role
suffix), while models ship Hugging Face-style Jinja templates that render a *whole* conversation. This module
bridges the two by *probing*: it renders a few conversations with unique sentinel contents, cuts the output at the
sentinels into a preamble and per-role prefixes/suffixes, and then verifies by round trip that concatenating those
pieces reproduces the Jinja rendering exactly for several other conversations. A template whose output depends on
later turns (a turn count, a "last message" special case, ...) cannot be rendered turn by turn and is rejected
with ``ValueError``.

Rendering compiles the Jinja like ``transformers`` (and the server) do, with
``radixgen.chat_templates.compile_chat_template``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radixgen.chat_templates import compile_chat_template, resolve_chat_template

ROLES = ("system", "user", "assistant")

# probe contents: distinct, whitespace-free (templates often .strip() content) and unlikely in any template
_PROBE = {"S": "qSYSq7x1", "X": "qUSRq7x2", "Y": "qASTq7x3", "Z": "qUSRq7x4"}
# verification contents: different from the probes, with inner spaces and newlines
_CHECK = ("Hello there", "General\nKenobi", "You are terse.", "What is 2 + 2?", "Four.", "Thanks!")


@dataclass(frozen=True)
class ChatTemplate:
    """How role blocks render to text, turn by turn (derived from a Jinja template by ``from_jinja``).

    Attributes:
        name: the template's name (a built-in name, ``"inline"``, or the server's name for it).
        preamble: text emitted once before the first turn when that turn is not a system turn (e.g. a BOS or
            ``<|begin_of_text|>``, or a default system block the template inserts when none is given).
        prefixes / suffixes: role -> text before / after the role's content. ``prefixes["system"]`` is the
            prefix of a system turn that is *not* first (see ``system_first_prefix``).
        user_prefix_after_system: the user prefix when a user turn directly follows a system turn (Llama-2 folds
            the system prompt into the first ``[INST]``, so this is ``""`` there); usually ``prefixes["user"]``.
        generation_prompt: what ``add_generation_prompt=True`` appends (Zephyr: ``"<|assistant|>"`` while the
            assistant prefix is ``"<|assistant|>\\n"``); informational, the DSL uses ``prefixes["assistant"]``.
        stop: strings that end an assistant turn (e.g. ChatML's ``"<|im_end|>"``).
        system_first_prefix: everything before the system content when the conversation starts with a system
            turn (preamble included), or None when the template rejects system turns.
        system_after_first: whether a system turn may follow other turns (verified by round trip).
    """

    name: str
    preamble: str
    prefixes: dict[str, str]
    suffixes: dict[str, str]
    user_prefix_after_system: str
    generation_prompt: str
    stop: tuple[str, ...] = ()
    system_first_prefix: str | None = None
    system_after_first: bool = False

    @property
    def supports_system(self) -> bool:
        """Whether the template accepts a system turn (at least as the first turn)."""
        return self.system_first_prefix is not None

    def role_prefix(self, role: str, previous_role: str | None, first_turn: bool) -> str:
        """The text that opens a ``role`` turn (with the preamble when ``first_turn``).

        Args:
            role: "system", "user" or "assistant". previous_role: the role of the turn before (None if first).
            first_turn: this is the conversation's first turn.

        Raises:
            ValueError: unknown role, or a system turn the template does not support (the message names it).
        """
        _check_role(role)
        if role == "system":
            if self.system_first_prefix is None:
                raise ValueError(f"chat template {self.name} does not support a system role")
            if first_turn:
                return self.system_first_prefix
            if not self.system_after_first:
                raise ValueError(f"chat template {self.name} supports a system turn only as the first turn")
            return self.prefixes["system"]
        prefix = self.prefixes[role]
        if role == "user" and previous_role == "system" and not first_turn:
            prefix = self.user_prefix_after_system
        return self.preamble + prefix if first_turn else prefix

    def role_suffix(self, role: str) -> str:
        """The text that closes a ``role`` turn. Raises ValueError for an unknown or unsupported role."""
        _check_role(role)
        if role == "system" and self.system_first_prefix is None:
            raise ValueError(f"chat template {self.name} does not support a system role")
        return self.suffixes[role]

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """Concatenate the pieces for whole ``messages`` (what the DSL produces turn by turn)."""
        out: list[str] = []
        previous: str | None = None
        for i, m in enumerate(messages):
            out += [self.role_prefix(m["role"], previous, i == 0), m["content"], self.role_suffix(m["role"])]
            previous = m["role"]
        if add_generation_prompt:
            out.append(self.generation_prompt)
        return "".join(out)

    @classmethod
    def from_jinja(
        cls,
        name: str,
        source: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        stop: tuple[str, ...] | list[str] = (),
    ) -> ChatTemplate:
        """Derive the turn-by-turn pieces of a Hugging Face-style Jinja chat template by probing it.

        Args:
            name: used in error messages. source: the Jinja text. bos_token / eos_token: the values of the
                template variables of the same names (None renders as ""). stop: the assistant-turn stop strings.

        Raises:
            ValueError: ``"chat template <name> cannot be rendered turn by turn: ..."`` when the Jinja does not
                compile, the probes cannot be cut into pieces, or the round-trip check fails.
        """
        render = _JinjaRenderer(name, source, bos_token or "", eos_token or "")
        pieces = _probe(render)
        tpl = cls(name=name, stop=tuple(stop), **pieces)
        if tpl.system_first_prefix is not None:  # keep mid-conversation system turns only if they round-trip
            mid = [_msg("user", 0), _msg("assistant", 1), _msg("system", 2), _msg("user", 3)]
            trial = cls(name=name, stop=tuple(stop), **pieces, system_after_first=True)
            if _renders(render, mid) and render(mid) == trial.render(mid):
                tpl = trial
        _verify(tpl, render)
        return tpl


def get_chat_template(
    name_or_source: str, bos_token: str | None = None, eos_token: str | None = None
) -> ChatTemplate:
    """The turn-by-turn template for a setting that ``radixgen.chat_templates.resolve_chat_template`` resolves.

    Args:
        name_or_source: a built-in name (``radixgen.chat_templates.BUILTIN_TEMPLATES``: chatml, llama-2, with
            their stop strings), a path to a ``.jinja`` file, or inline Jinja (named ``"inline"``).
        bos_token / eos_token: the values of the Jinja variables of the same names (None renders as "").

    Raises:
        ValueError: not a known name, file or Jinja text; or the template cannot be rendered turn by turn.
    """
    spec = resolve_chat_template(name_or_source)
    if spec is None:
        raise ValueError("chat_template: a template name, file or Jinja text is required")
    return ChatTemplate.from_jinja(spec.name, spec.template, bos_token, eos_token, spec.stop)


# ------------------------------------------------------------------------------------------------ probing
class _JinjaRenderer:
    """Compiles ``source`` once; ``__call__(messages, add_generation_prompt)`` renders it like transformers."""

    def __init__(self, name: str, source: str, bos_token: str, eos_token: str) -> None:
        import jinja2

        self.name = name
        self.error_type = jinja2.exceptions.TemplateError
        try:
            self.template = compile_chat_template(source)
        except jinja2.exceptions.TemplateError as e:
            raise _cannot(name, f"the Jinja does not compile: {e}") from e
        self.variables = {"bos_token": bos_token, "eos_token": eos_token}

    def __call__(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The rendered text. Raises jinja2's TemplateError (e.g. from raise_exception) or any template error."""
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.variables)


def _cannot(name: str, why: str) -> ValueError:
    return ValueError(f"chat template {name} cannot be rendered turn by turn: {why}")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role: must be one of {', '.join(ROLES)} (got {role!r})")


def _msg(role: str, i: int) -> dict[str, str]:
    return {"role": role, "content": _CHECK[i % len(_CHECK)]}


def _renders(render: _JinjaRenderer, messages: list[dict[str, str]]) -> bool:
    try:
        render(messages)
    except Exception:  # noqa: BLE001 - a template rejecting a conversation may raise anything
        return False
    return True


def _split(name: str, text: str, sentinel: str, what: str) -> tuple[str, str]:
    """``text`` cut around the one occurrence of ``sentinel``."""
    if text.count(sentinel) != 1:
        raise _cannot(name, f"the {what} content appears {text.count(sentinel)} times in its rendering")
    i = text.index(sentinel)
    return text[:i], text[i + len(sentinel) :]


def _probe(render: _JinjaRenderer) -> dict[str, Any]:
    """Render the probe conversations and cut them into the ChatTemplate fields (see the module docstring)."""
    name, p = render.name, _PROBE
    u = {"role": "user", "content": p["X"]}
    a = {"role": "assistant", "content": p["Y"]}
    u2 = {"role": "user", "content": p["Z"]}
    try:
        r1, r1g, r2, r3 = render([u]), render([u], True), render([u, a]), render([u, a, u2])
    except Exception as e:  # noqa: BLE001 - any template error means it cannot be probed
        raise _cannot(name, f"rendering a user/assistant conversation failed: {e}") from e
    first_user_prefix, user_suffix = _split(name, r1, p["X"], "user")
    if not r1g.startswith(r1):
        raise _cannot(name, "add_generation_prompt changes the text before the generation prompt")
    generation_prompt = r1g[len(r1) :]
    head2, assistant_suffix = _split(name, r2, p["Y"], "assistant")
    if not head2.startswith(r1):
        raise _cannot(name, "adding an assistant turn changes the rendering of the user turn before it")
    assistant_prefix = head2[len(r1) :]
    if not r3.startswith(r2):
        raise _cannot(name, "adding a user turn changes the rendering of the turns before it")
    user_prefix, rest = _split(name, r3[len(r2) :], p["Z"], "second user")
    if rest != user_suffix:
        raise _cannot(name, "the second user turn is closed differently from the first")
    if not first_user_prefix.endswith(user_prefix):
        raise _cannot(name, "the first user turn opens differently from later ones")
    preamble = first_user_prefix[: len(first_user_prefix) - len(user_prefix)]
    pieces: dict[str, Any] = {
        "preamble": preamble,
        "prefixes": {"user": user_prefix, "assistant": assistant_prefix, "system": ""},
        "suffixes": {"user": user_suffix, "assistant": assistant_suffix, "system": ""},
        "user_prefix_after_system": user_prefix,
        "generation_prompt": generation_prompt,
    }
    try:
        rs = render([{"role": "system", "content": p["S"]}, u])
    except render.error_type:
        return pieces  # raise_exception: the template rejects system turns
    except Exception as e:  # noqa: BLE001
        raise _cannot(name, f"rendering a system turn failed: {e}") from e
    if p["S"] not in rs:
        return pieces  # the template silently drops system turns: treat them as unsupported
    system_first_prefix, after = _split(name, rs, p["S"], "system")
    between, user_rest = _split(name, after, p["X"], "user")
    if user_rest != user_suffix:
        raise _cannot(name, "a user turn after a system turn is closed differently")
    # the text between system content and user content is system suffix + user prefix; when it does not end with
    # the ordinary user prefix the template merges the two turns (Llama-2): all of it is then the system suffix
    after_system = user_prefix if user_prefix and between.endswith(user_prefix) else ""
    pieces["suffixes"]["system"] = between[: len(between) - len(after_system)]
    pieces["user_prefix_after_system"] = after_system
    pieces["system_first_prefix"] = system_first_prefix
    # a later system turn: assume the preamble is what comes before the system prefix (verified before use)
    mid = system_first_prefix[len(preamble) :] if system_first_prefix.startswith(preamble) else system_first_prefix
    pieces["prefixes"]["system"] = mid
    return pieces


def _verify(tpl: ChatTemplate, render: _JinjaRenderer) -> None:
    """Round trip: the turn-by-turn pieces must equal the Jinja rendering for several conversations.

    Raises:
        ValueError: the first conversation whose renderings differ, with both texts.
    """
    roles = [
        ["user"],
        ["user", "assistant"],
        ["user", "assistant", "user"],
        ["user", "assistant", "user", "assistant", "user", "assistant"],
    ]
    if tpl.supports_system:
        roles += [["system", "user"], ["system", "user", "assistant", "user"], ["system", "user", "assistant"]]
    for rs in roles:
        messages = [_msg(r, i) for i, r in enumerate(rs)]
        for gen_prompt in (False, True) if rs[-1] == "user" else (False,):
            try:
                expected = render(messages, gen_prompt)
            except Exception as e:  # noqa: BLE001
                raise _cannot(tpl.name, f"rendering {rs} failed: {e}") from e
            got = tpl.render(messages, gen_prompt)
            if got != expected:
                raise _cannot(
                    tpl.name, f"for roles {rs} (add_generation_prompt={gen_prompt}) the pieces give {got!r} but the "
                    f"template renders {expected!r}"
                )

