"""Find a program's constant prefix by tracing it with placeholder arguments (SGLang's ``extract_prefix_by_tracing``).

``run_batch`` prefills that prefix once before fanning out, so every program in the batch hits the radix cache
for it instead of racing to prefill it. Tracing runs the program function once more with every argument
replaced by an ``Unknown`` placeholder, collecting text until the first thing that depends on an argument or on
the model (a gen/select, a read of a variable, any use of a placeholder). Side effects the program performs
before that point therefore happen once more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from radixgen.chat_template import ChatTemplate
from radixgen.instructions import AddText, RoleBegin, RoleEnd, flatten
from radixgen.ir import Expr, check_expr, role_call


class StopTracing(Exception):
    """Raised where the constant prefix ends."""


def _stop(*args: Any, **kwargs: Any) -> Any:
    raise StopTracing


class Partial:
    """``"constant text" + Unknown``: the constant part is still prefix."""

    def __init__(self, known: str) -> None:
        self.known = known

    def __add__(self, other: Any) -> Partial:
        return self

    def __radd__(self, other: Any) -> Partial:
        raise StopTracing


class Unknown:
    """A placeholder argument: any use ends the prefix (``str + Unknown`` keeps the str as prefix)."""

    def __radd__(self, other: Any) -> Partial:
        if isinstance(other, str):
            return Partial(other)
        raise StopTracing

    def __getattr__(self, name: str) -> Any:
        raise StopTracing

    __add__ = __str__ = __format__ = __repr__ = __iter__ = __len__ = __bool__ = __getitem__ = _stop
    __eq__ = __lt__ = __gt__ = __le__ = __ge__ = __call__ = __contains__ = __int__ = __float__ = _stop  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]


class TracerState:
    """Stands in for ``s``: records constant text (rendering role blocks with ``template``), stops otherwise."""

    def __init__(self, template: ChatTemplate | None) -> None:
        self.template = template
        self.parts: list[str] = []
        self.open_role: str | None = None
        self.prev_role: str | None = None
        self.first_turn = True

    def __iadd__(self, expr: Any) -> TracerState:
        if isinstance(expr, Partial):
            self.parts.append(expr.known)
            raise StopTracing
        try:
            expr = check_expr(expr)
        except TypeError as e:
            raise StopTracing from e
        self._walk(expr)
        return self

    def _walk(self, expr: Expr) -> None:
        for instr in flatten(expr, _stop):  # a gen/select ends the prefix (a named one at its new_future call)
            if isinstance(instr, AddText):
                self.parts.append(instr.text)
            elif isinstance(instr, RoleBegin):
                self._begin(instr.role)
            elif isinstance(instr, RoleEnd):
                self._end(instr.role)
            else:
                raise StopTracing

    def _begin(self, role: str) -> None:
        if self.template is None or self.open_role is not None:
            raise StopTracing
        self.parts.append(self.template.role_prefix(role, self.prev_role, self.first_turn))
        self.open_role = role

    def _end(self, role: str) -> None:
        assert self.template is not None
        self.parts.append(self.template.role_suffix(role))
        self.open_role, self.prev_role, self.first_turn = None, role, False

    @contextmanager
    def _block(self, role: str, content: Any) -> Any:
        self._begin(role)
        if content is not None:
            self += content
        yield
        self._end(role)

    def system(self, content: Any = None) -> Any:
        return role_call(self._block("system", content), content)

    def user(self, content: Any = None) -> Any:
        return role_call(self._block("user", content), content)

    def assistant(self, content: Any = None) -> Any:
        return role_call(self._block("assistant", content), content)

    def __getattr__(self, name: str) -> Any:
        raise StopTracing


def extract_prefix(func: Callable[..., Any], template: ChatTemplate | None) -> str:
    """The text every run of ``func(s, *args)`` starts with, whatever its arguments ("" when none)."""
    sig = inspect.signature(func)
    params = list(sig.parameters.values())[1:]
    args = {p.name: Unknown() for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    tracer = TracerState(template)
    try:
        func(tracer, **args)
    except Exception:  # noqa: BLE001 - StopTracing or anything a placeholder provoked: the prefix ends here
        pass
    return "".join(tracer.parts)
