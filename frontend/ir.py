"""The DSL's expressions: what ``s += ...`` accepts, and the user-facing constructors that build them.

``gen``, ``select``, ``system``/``user``/``assistant`` return frozen expression objects; a program state turns
them into instructions for its executor. An expression is a ``str``, a ``Gen``, a ``Select``, a ``RoleBlock``
or a ``Concat`` (``expr + expr``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from radixgen.choices import ChoicesMethod, resolve_choices_method
from radixgen.sampling import SamplingParams

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")

# dtype -> the regex its text must match (parsed with the type afterwards)
DTYPE_REGEX: dict[type, str] = {
    int: r"[-+]?[0-9]+",
    float: r"[-+]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?",
    bool: r"(True|False)",
    str: r"\"[^\"\\\n]*\"",
}


class _ExprOps:
    """``a + b`` builds a ``Concat`` so expressions compose like strings (``"Q: " + rg.gen("a")``)."""

    def __add__(self, other: Any) -> Concat:
        return Concat((*_parts(check_expr(self)), *_parts(check_expr(other))))

    def __radd__(self, other: Any) -> Concat:
        return Concat((*_parts(check_expr(other)), *_parts(check_expr(self))))


@dataclass(frozen=True)
class Gen(_ExprOps):
    """Generate text into variable ``name`` (None = anonymous) with ``params``; ``dtype`` parses the result."""

    name: str | None
    params: SamplingParams
    dtype: type | None = None


@dataclass(frozen=True)
class Select(_ExprOps):
    """Pick one of ``choices`` by the runtime's prompt logprobs, scored by ``choices_method``."""

    name: str | None
    choices: tuple[str, ...]
    temperature: float = 0.0
    choices_method: ChoicesMethod = field(default_factory=lambda: resolve_choices_method(None))


@dataclass(frozen=True)
class RoleBlock(_ExprOps):
    """``rg.user(content)``: the role's template prefix, ``content`` (any expression), the role's suffix."""

    role: Role
    content: Expr | None


@dataclass(frozen=True)
class Concat(_ExprOps):
    """A sequence of expressions run in order."""

    parts: tuple[Expr, ...]


Expr = str | Gen | Select | RoleBlock | Concat


def _parts(expr: Expr) -> tuple[Expr, ...]:
    return expr.parts if isinstance(expr, Concat) else (expr,)


def check_expr(value: Any) -> Expr:
    """``value`` if it is an expression; a list/tuple of them becomes a ``Concat``; anything else is a TypeError."""
    if isinstance(value, str | Gen | Select | RoleBlock | Concat):
        return value
    if isinstance(value, list | tuple):
        return Concat(tuple(check_expr(v) for v in value))
    raise TypeError(
        f"s += {type(value).__name__}: expected a str, rg.gen(...), rg.select(...), a role block, or a list of them"
    )


def gen(
    name: str | None = None,
    *,
    choices: Sequence[str] | None = None,
    dtype: type | None = None,
    choices_method: ChoicesMethod | str | None = None,
    **params: Any,
) -> Gen | Select:
    """Generate into variable ``name``: ``s += rg.gen("answer", max_tokens=64, stop="\\n")``.

    Keyword arguments are the fields of ``radixgen.SamplingParams`` (max_tokens, min_tokens, stop,
    stop_token_ids, temperature, top_p, top_k, min_p, frequency_penalty, presence_penalty, ignore_eos,
    return_logprob, top_logprobs_num, regex, json_schema, ebnf). ``choices=[...]`` makes it a ``select``.
    ``dtype`` in {int, float, bool, str} constrains the text with the matching regex and the variable holds the
    parsed value. A ``json_schema`` given as a Pydantic model class makes the variable the validated instance.

    Raises:
        TypeError: an unknown parameter name. ValueError: an invalid value (the message names the field).
    """
    _check_name(name)
    if choices is not None:
        if params.keys() - {"temperature"} or dtype is not None:
            raise ValueError("choices: gen with choices is a select; only temperature may be given with it")
        return select(name, choices, temperature=params.get("temperature") or 0.0, choices_method=choices_method)
    if choices_method is not None:
        raise ValueError("choices_method: only meaningful with choices")
    sampling = SamplingParams.from_kwargs(params)
    if dtype is not None:
        if dtype not in DTYPE_REGEX:
            raise ValueError(f"dtype: must be one of int, float, bool, str (got {dtype!r})")
        if sampling.regex is not None or sampling.json_schema is not None or sampling.ebnf is not None:
            raise ValueError("dtype: cannot be combined with regex, json_schema or ebnf")
        sampling = sampling.with_updates(regex=DTYPE_REGEX[dtype])
    return Gen(name, sampling, dtype)


def select(
    name: str | None = None,
    choices: Sequence[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesMethod | str | None = None,
) -> Select:
    """Choose one of ``choices`` into variable ``name`` by the model's logprobs of each choice after the prompt.

    ``choices_method``: "token_length_normalized" (default: mean token logprob), "greedy_token_selection" or
    "unconditional_likelihood_normalized" (as in SGLang's ``choices`` module), or a ``ChoicesMethod``.
    ``temperature`` > 0 samples from the softmax of the scores instead of taking the best.

    Raises:
        ValueError: no/empty/duplicate choices, bad temperature, unknown method.
    """
    _check_name(name)
    if choices is None or isinstance(choices, str) or not choices:
        raise ValueError("choices: must be a non-empty list of strings")
    if not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choices: every choice must be a non-empty string")
    if len(set(choices)) != len(choices):
        raise ValueError("choices: must be distinct")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0:
        raise ValueError("temperature: must be a number >= 0")
    return Select(name, tuple(choices), float(temperature), resolve_choices_method(choices_method))


def role_call(block: AbstractContextManager[Any], content: Any) -> Any:
    """What ``s.user(content)`` returns on a program state (also system/assistant): with no ``content`` the role
    ``block`` for ``with s.user(): ...``; else None, the block (holding the content) having run at once."""
    if content is None:
        return block
    with block:
        pass
    return None


def _role(role: Role, content: Any) -> RoleBlock:
    return RoleBlock(role, None if content is None else check_expr(content))


def system(content: Any = None) -> RoleBlock:
    """A system turn: ``s += rg.system("You are terse.")`` (or ``with s.system(): ...``)."""
    return _role("system", content)


def user(content: Any = None) -> RoleBlock:
    """A user turn: ``s += rg.user("Hi")`` (or ``with s.user(): ...``)."""
    return _role("user", content)


def assistant(content: Any = None) -> RoleBlock:
    """An assistant turn: ``s += rg.assistant(rg.gen("reply"))`` (or ``with s.assistant(): ...``)."""
    return _role("assistant", content)


def _check_name(name: Any) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError("name: must be a non-empty string or None")
