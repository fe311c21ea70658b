"""The interpreter's instruction set: what an expression flattens into, queued on a program state's executor.

Every instruction that produces a variable carries the ``Future`` its readers wait on, created when it is
submitted, so ``s[name]`` always waits for the latest submitted producer of ``name``.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from radixgen.ir import Concat, Expr, Gen, Role, RoleBlock, Select


@dataclass
class Instr:
    """Base: ``site`` is where in the user's program the instruction was submitted ("file:line"), for errors."""

    site: str = field(default="", kw_only=True)


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


@dataclass
class Barrier(Instr):
    """Resolves ``future`` when every instruction before it has run."""

    future: Future[Any]


@dataclass
class End(Instr):
    """The last instruction: the executor finishes (``Executor.done`` resolves)."""


def flatten(expr: Expr) -> list[Instr | Gen | Select]:
    """An expression as a flat list: str -> AddText, role blocks -> RoleBegin/…/RoleEnd, Gen/Select kept as-is
    (the state wraps them with their futures)."""
    out: list[Instr | Gen | Select] = []

    def walk(e: Expr) -> None:
        if isinstance(e, str):
            if e:
                out.append(AddText(e))
        elif isinstance(e, Concat):
            for part in e.parts:
                walk(part)
        elif isinstance(e, RoleBlock):
            out.append(RoleBegin(e.role))
            if e.content is not None:
                walk(e.content)
            out.append(RoleEnd(e.role))
        else:
            out.append(e)

    walk(expr)
    return out


@dataclass
class Inherit(Instr):
    """A branch's first instruction: wait for the parent's ForkPoint snapshot and start from it."""

    future: Future[Any]
