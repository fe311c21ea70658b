"""The DSL's expressions: what ``s += ...`` accepts, and the user-facing constructors that build them.

The constructors are SGLang's frontend language (``sglang.lang.api``) with its names and signatures: ``gen``,
``gen_int``, ``gen_string``, ``select``, ``system``/``user``/``assistant``, the ``*_begin``/``*_end`` role markers,
``separate_reasoning``, ``image``/``video``. They return frozen expression objects; a program state turns them into
instructions for its executor. An expression is a ``str``, a ``Gen``, a ``Select``, a ``RoleBlock``, a
``RoleMarker``, a ``SeparateReasoning`` or a ``Concat`` (``expr + expr``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NoReturn

from radixgen.choices import ChoicesMethod, resolve_choices_method
from radixgen.reasoning import reasoning_format
from radixgen.sampling import SamplingParams
from radixgen.tools import ToolSpec, openai_tool_choice, tool_specs

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
    """Generate text into variable ``name`` (None = anonymous) with ``params``; ``dtype`` parses the result;
    ``tools`` (with ``params.tools``): the variable holds the typed tool calls (``radixgen.tools.ToolCalls``);
    ``lora``: the LoRA adapter to run under (None = the program's default adapter, see ``gen``)."""

    name: str | None
    params: SamplingParams
    dtype: type | None = None
    tools: tuple[ToolSpec, ...] = ()
    lora: str | None = None


@dataclass(frozen=True)
class Select(_ExprOps):
    """Pick one of ``choices`` by the runtime's prompt logprobs, scored by ``choices_method``."""

    name: str | None
    choices: tuple[str, ...]
    temperature: float = 0.0
    choices_method: ChoicesMethod = field(default_factory=lambda: resolve_choices_method(None))
    lora: str | None = None  # the adapter that scores the choices (None = the program's default adapter)


@dataclass(frozen=True)
class RoleBlock(_ExprOps):
    """``rg.user(content)``: the role's template prefix, ``content`` (any expression), the role's suffix."""

    role: Role
    content: Expr | None


@dataclass(frozen=True)
class RoleMarker(_ExprOps):
    """``rg.user_begin()`` / ``rg.user_end()``: opens or closes a role turn on its own (SGLang's role markers)."""

    role: Role
    end: bool


@dataclass(frozen=True)
class SeparateReasoning(_ExprOps):
    """Run ``expr``, then split each named gen/select in it into content (the variable) and reasoning
    (``name + "_reasoning_content"``) with ``model_type``'s markers; the state's text keeps only the content."""

    expr: Expr
    model_type: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class Concat(_ExprOps):
    """A sequence of expressions run in order."""

    parts: tuple[Expr, ...]


Expr = str | Gen | Select | RoleBlock | RoleMarker | SeparateReasoning | Concat


def _parts(expr: Expr) -> tuple[Expr, ...]:
    return expr.parts if isinstance(expr, Concat) else (expr,)


def check_expr(value: Any) -> Expr:
    """``value`` if it is an expression; a list/tuple of them becomes a ``Concat``; anything else is a TypeError."""
    if isinstance(value, str | Gen | Select | RoleBlock | RoleMarker | SeparateReasoning | Concat):
        return value
    if isinstance(value, list | tuple):
        return Concat(tuple(check_expr(v) for v in value))
    raise TypeError(
        f"s += {type(value).__name__}: expected a str, rg.gen(...), rg.select(...), a role block, or a list of them"
    )


_SAMPLING_NAMES = frozenset(f.name for f in fields(SamplingParams))
_DTYPE_NAMES: dict[str, type] = {"int": int, "float": float, "str": str, "string": str, "bool": bool}


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | Sequence[str] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    stop_regex: str | Sequence[str] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: type | str | None = None,
    choices: Sequence[str] | None = None,
    choices_method: ChoicesMethod | str | None = None,
    regex: str | None = None,
    json_schema: Any = None,
    *,
    ebnf: str | None = None,
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool | None = None,
    lora: str | None = None,
) -> Gen | Select:
    """Generate into variable ``name``: ``s += rg.gen("answer", max_tokens=64, stop="\\n")`` (SGLang's ``sgl.gen``,
    same parameters in the same order, plus ``ebnf``).

    The sampling parameters are the fields of ``radixgen.SamplingParams`` (unset ones inherit the ``run``
    defaults). ``n`` > 1: the variable is the list of the n samples (the state continues with the first).
    ``return_logprob`` & co.: ``s.get_meta_info(name)`` holds ``output_token_logprobs`` (one entry per generated
    token), ``output_top_logprobs``, and from ``logprob_start_len`` on the input ones. ``choices=[...]`` makes it
    a ``select``. ``dtype`` in {int, float, bool, str} (or their names) constrains the text with the matching
    regex and the variable holds the parsed value. ``json_schema`` given as a Pydantic model class makes the
    variable the validated instance. ``tools=[function | Pydantic model | schema dict]`` (with ``tool_choice``
    ``"auto"`` / ``"none"`` / ``"required"`` / a tool or its name, and ``parallel_tool_calls``) makes the gen an
    OpenAI tool-calling chat completion (first thing in an assistant turn): the variable is a ``radixgen.tools
    .ToolCalls`` list of typed calls, ``.content`` the text outside them (see ``radixgen.tools``).
    ``lora="name"`` runs this call under the server's LoRA adapter ``name`` (one of its ``--lora-paths``); None
    (the default) uses the program's default adapter, ``program.run(..., lora=...)``, or else the base model.

    Raises:
        TypeError: an unknown parameter name. ValueError: an invalid value (the message names the field).
    """
    # first statement: locals() holds exactly the parameters; keep the sampling ones that were given
    params = {k: v for k, v in locals().items() if k in _SAMPLING_NAMES and v is not None}
    _check_name(name)
    check_lora(lora)
    specs: tuple[ToolSpec, ...] = ()
    if tools is not None:
        if choices is not None or dtype is not None:
            raise ValueError("tools: cannot be combined with choices or dtype")
        specs = tool_specs(tools)
        params["tools"] = tuple(s.tool for s in specs)
        if tool_choice is not None:
            params["tool_choice"] = openai_tool_choice(tool_choice, specs)
    if choices is not None:
        if params.keys() - {"temperature"} or dtype is not None:
            raise ValueError("choices: gen with choices is a select; only temperature may be given with it")
        return select(name, choices, temperature=temperature or 0.0, choices_method=choices_method, lora=lora)
    if choices_method is not None:
        raise ValueError("choices_method: only meaningful with choices")
    sampling = SamplingParams.from_kwargs(params)
    if isinstance(dtype, str):
        dtype = _DTYPE_NAMES.get(dtype, dtype)
    if dtype is not None:
        if dtype not in DTYPE_REGEX:
            raise ValueError(f"dtype: must be one of int, float, bool, str (got {dtype!r})")
        if sampling.regex is not None or sampling.json_schema is not None or sampling.ebnf is not None:
            raise ValueError("dtype: cannot be combined with regex, json_schema or ebnf")
        sampling = sampling.with_updates(regex=DTYPE_REGEX[dtype])
    return Gen(name, sampling, dtype, specs, lora)


_NOT_TYPED = frozenset(
    {"min_tokens", "dtype", "choices", "choices_method", "regex", "json_schema", "ebnf", "tools", "tool_choice",
     "parallel_tool_calls", "lora"}
)


def _typed_gen(dtype: type, api_name: str) -> Callable[..., Gen]:
    """SGLang's ``gen_int`` / ``gen_string``: ``gen`` with a fixed ``dtype``, taking ``gen``'s parameters (in its
    order) except those in ``_NOT_TYPED``."""
    signature = inspect.signature(gen)
    signature = signature.replace(parameters=[p for p in signature.parameters.values() if p.name not in _NOT_TYPED])

    def typed_gen(*args: Any, **kwargs: Any) -> Gen:
        out = gen(dtype=dtype, **signature.bind(*args, **kwargs).arguments)
        assert isinstance(out, Gen)
        return out

    typed_gen.__signature__ = signature.replace(return_annotation="Gen")  # type: ignore[attr-defined]
    typed_gen.__name__ = typed_gen.__qualname__ = api_name
    typed_gen.__doc__ = f"""``gen(name, ..., dtype={dtype.__name__})`` (SGLang's ``sgl.{api_name}``): the text is
    constrained to a {dtype.__name__} literal ({DTYPE_REGEX[dtype]}); the variable holds the parsed value.

    Takes ``gen``'s parameters, in its order, except min_tokens, dtype, choices, choices_method, regex, json_schema,
    ebnf, tools and lora (SGLang's signature; the program's default adapter still applies, and
    ``gen(..., dtype={dtype.__name__}, lora=...)`` picks one per call).

    Raises:
        TypeError: an unknown or extra parameter. ValueError: an invalid value (the message names the field).
    """
    return typed_gen


gen_int = _typed_gen(int, "gen_int")
gen_string = _typed_gen(str, "gen_string")


def select(
    name: str | None = None,
    choices: Sequence[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesMethod | str | None = None,
    *,
    lora: str | None = None,
) -> Select:
    """Choose one of ``choices`` into variable ``name`` by the model's logprobs of each choice after the prompt.

    ``choices_method``: "token_length_normalized" (default: mean token logprob), "greedy_token_selection" or
    "unconditional_likelihood_normalized" (as in SGLang's ``choices`` module), or a ``ChoicesMethod``.
    ``temperature`` > 0 samples from the softmax of the scores instead of taking the best. ``lora``: the LoRA
    adapter whose logprobs score the choices (None: the program's default adapter, as for ``gen``).

    Raises:
        ValueError: no/empty/duplicate choices, bad temperature, unknown method, a ``lora`` that is not a name.
    """
    _check_name(name)
    check_lora(lora)
    if choices is None or isinstance(choices, str) or not choices:
        raise ValueError("choices: must be a non-empty list of strings")
    if not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choices: every choice must be a non-empty string")
    if len(set(choices)) != len(choices):
        raise ValueError("choices: must be distinct")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0:
        raise ValueError("temperature: must be a number >= 0")
    return Select(name, tuple(choices), float(temperature), resolve_choices_method(choices_method), lora)


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


def _marker(role: Role, end: bool, api_name: str) -> Callable[[], RoleMarker]:
    def marker() -> RoleMarker:
        return RoleMarker(role, end)

    marker.__name__ = marker.__qualname__ = api_name
    marker.__doc__ = f"""{"Close" if end else "Open"} a {role} turn: ``s += rg.{role}_begin()`` ...
    ``s += rg.{role}_end()`` (SGLang's role markers; the same turn as ``rg.{role}(...)``). At run time, opening a
    turn while one is open, or closing one that is not open, fails the program with a ValueError."""
    return marker


system_begin, system_end = _marker("system", False, "system_begin"), _marker("system", True, "system_end")
user_begin, user_end = _marker("user", False, "user_begin"), _marker("user", True, "user_end")
assistant_begin = _marker("assistant", False, "assistant_begin")
assistant_end = _marker("assistant", True, "assistant_end")


def separate_reasoning(expr: Any = None, model_type: str | None = None) -> SeparateReasoning:
    """``s += rg.assistant(rg.separate_reasoning(rg.gen("answer"), model_type="deepseek-r1"))`` (SGLang's
    ``sgl.separate_reasoning``): after ``expr`` runs, each named gen/select in it is split at the model's
    reasoning markers (``<think>`` ... ``</think>``): variable ``name`` holds the content,
    ``name + "_reasoning_content"`` the reasoning, and the state's text (so the turn's message) only the content.

    Raises:
        ValueError: an unknown ``model_type`` (see ``radixgen.reasoning.REASONING_FORMATS``), an ``expr`` without
            a named gen/select (or with an unnamed one), or one holding role turns (wrap the gen, not the turn).
    """
    reasoning_format(model_type)
    inner = check_expr(expr)
    parts = _leaves(inner)
    if any(isinstance(p, RoleBlock | RoleMarker) for p in parts):
        raise ValueError(
            "separate_reasoning: expr holds a role turn; wrap the gen: rg.assistant(rg.separate_reasoning(rg.gen(...)))"
        )
    outputs = [p for p in parts if isinstance(p, Gen | Select)]
    if not outputs or any(p.name is None for p in outputs):
        raise ValueError("separate_reasoning: expr must hold named gens/selects (the reasoning is stored by name)")
    return SeparateReasoning(inner, str(model_type), tuple(dict.fromkeys(p.name for p in outputs if p.name)))


def _leaves(expr: Expr) -> list[Expr]:
    if isinstance(expr, Concat):
        return [leaf for part in expr.parts for leaf in _leaves(part)]
    if isinstance(expr, SeparateReasoning):
        return _leaves(expr.expr)
    if isinstance(expr, RoleBlock):
        return [expr, *(_leaves(expr.content) if expr.content is not None else [])]
    return [expr]


def image(expr: Any) -> NoReturn:
    """SGLang's ``sgl.image``: not available — radixgen serves text-only models.

    Raises:
        NotImplementedError: always (naming ``image``).
    """
    raise NotImplementedError("image: radixgen serves text-only models; images cannot be added to a program")


def video(path: str, num_frames: int) -> NoReturn:
    """SGLang's ``sgl.video``: not available — radixgen serves text-only models.

    Raises:
        NotImplementedError: always (naming ``video``).
    """
    raise NotImplementedError("video: radixgen serves text-only models; videos cannot be added to a program")


def _check_name(name: Any) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError("name: must be a non-empty string or None")


def check_lora(lora: Any) -> None:
    """``lora`` (of ``gen``, ``select``, ``program.run``) must be None or an adapter name: a non-empty string (the
    server checks that it names a loaded adapter). Raises ValueError naming ``lora``."""
    if lora is not None and (not isinstance(lora, str) or not lora.strip()):
        raise ValueError(f"lora: must be a LoRA adapter name (a non-empty string) or None, got {lora!r}")
