"""The interpreter's instruction set: what an expression flattens into, queued on a program state's executor.

Every instruction that produces a variable carries the ``Future`` its readers wait on, created when it is
submitted, so ``s[name]`` always waits for the latest submitted producer of ``name``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from radixgen.ir import Concat, Expr, Gen, Role, RoleBlock, RoleMarker, Select, SeparateReasoning


@dataclass
class Instr:
    """Base: ``site`` is where in the user's program the instruction was submitted ("file:line"), for errors."""

    site: str = field(default="", kw_only=True)

    def outputs(self) -> list[Future[Any]]:
        """The futures this instruction resolves, failed with the program's error when it is skipped: its ``future``
        field, if any (``Barrier`` and ``Inherit`` say otherwise)."""
        future = getattr(self, "future", None)
        return [future] if isinstance(future, Future) else []


@dataclass
class AddText(Instr):
    text: str


@dataclass
class RunGen(Instr):
    gen: Gen
    future: Future[Any] | None  # None for an anonymous gen


@dataclass
class RunSelect(Instr):
    select: Select
    future: Future[Any] | None


@dataclass
class RoleBegin(Instr):
    role: Role


@dataclass
class RoleEnd(Instr):
    role: Role


@dataclass
class ScopeBegin(Instr):
    name: str


@dataclass
class ScopeEnd(Instr):
    name: str
    future: Future[Any]


@dataclass
class SetVar(Instr):
    """``s[name] = value``: set a variable, in order with the instructions around it."""

    name: str
    value: Any
    future: Future[Any]


@dataclass
class SplitReasoning(Instr):
    """Split the variables ``names`` (just produced) into content and ``<name>_reasoning_content``; ``futures``
    resolve both names of each."""

    names: tuple[str, ...]
    model_type: str
    futures: dict[str, Future[Any]]

    def outputs(self) -> list[Future[Any]]:
        return list(self.futures.values())


@dataclass
class ForkPoint(Instr):
    """Snapshot the state for ``n`` branches (after prefilling the shared prefix); ``future`` gets the snapshot."""

    n: int
    future: Future[Any]


@dataclass
class JoinPoint(Instr):
    """Wait for every branch's ``done`` future, then merge them (``mode``); ``futures`` resolve merged names."""

    branches: list[Any]  # list[Executor]
    mode: str
    futures: dict[str, Future[Any]]

    def outputs(self) -> list[Future[Any]]:
        return list(self.futures.values())


@dataclass
class Barrier(Instr):
    """Resolves ``future`` when every instruction before it has run."""

    future: Future[Any]


@dataclass
class End(Instr):
    """The last instruction: the executor finishes (``Executor.done`` resolves)."""


def flatten(expr: Expr, new_future: Callable[[str], Future[Any]]) -> Iterator[Instr]:
    """An expression as instructions, in order: str -> AddText, role blocks -> RoleBegin/…/RoleEnd (a marker -> one
    of them), Gen / Select -> RunGen / RunSelect with the future ``new_future(name)`` gives when it is reached (None
    for an anonymous one), SeparateReasoning -> its expression's instructions, then SplitReasoning."""
    if isinstance(expr, str):
        if expr:
            yield AddText(expr)
    elif isinstance(expr, Concat):
        for part in expr.parts:
            yield from flatten(part, new_future)
    elif isinstance(expr, RoleBlock):
        yield RoleBegin(expr.role)
        if expr.content is not None:
            yield from flatten(expr.content, new_future)
        yield RoleEnd(expr.role)
    elif isinstance(expr, RoleMarker):
        yield RoleEnd(expr.role) if expr.end else RoleBegin(expr.role)
    elif isinstance(expr, SeparateReasoning):
        yield from flatten(expr.expr, new_future)
        names = [m for name in expr.names for m in (name, reasoning_name(name))]
        yield SplitReasoning(expr.names, expr.model_type, {m: new_future(m) for m in names})
    elif isinstance(expr, Gen):
        yield RunGen(expr, None if expr.name is None else new_future(expr.name))
    else:
        yield RunSelect(expr, None if expr.name is None else new_future(expr.name))


@dataclass
class Inherit(Instr):
    """A branch's first instruction: wait for the parent's ForkPoint snapshot and start from it."""

    future: Future[Any]

    def outputs(self) -> list[Future[Any]]:
        return []  # the parent's future: the parent resolves it


def reasoning_name(name: str) -> str:
    """The variable ``separate_reasoning`` stores ``name``'s reasoning in (SGLang's naming)."""
    return f"{name}_reasoning_content"
