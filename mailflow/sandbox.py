"""The template sandbox with a work budget: no template can loop, grow or run without end.

Jinja2's ImmutableSandboxedEnvironment stops templates from reaching Python internals, but not from
working forever: ``{% for i in range(100000) %}{% for j in range(100000) %}`` runs for hours, and
``{{ "x" * 30000000 }}`` builds 30 MB per mail. One render (all parts of one mail) therefore runs
under a `Budget`, and the environment checks it at every point where a template can spend work:

* **steps**: every ``for`` iteration (any iterable, not only ``range``), every item of ``range``
  and every call (macros, methods, functions) counts one step; at most `MAX_STEPS` per render;
* **time**: the wall clock is checked at the same points and at every chunk of output; at most
  `MAX_SECONDS` per render;
* **size**: each part's output is counted while it streams out of ``generate()``, at most
  `MAX_OUTPUT` characters; ``*``, ``+`` and ``%`` on text or lists, and every filter and call, may
  not produce a value over `MAX_OUTPUT` either, checked *before* the big value is built where the
  operands tell its size (repetition, padding widths, ``replace``, format widths);
* the compile-time optimizer is off (it would evaluate ``{{ "x"|center(10**9) }}`` while compiling).

A render that runs out raises `BudgetError`; render.py reports it as ``file:line: render budget
exceeded: ...`` with the template line that was running.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import Template, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

__all__ = ["MAX_OUTPUT", "MAX_SECONDS", "MAX_STEPS", "Budget", "BudgetError", "BudgetedEnvironment"]

MAX_STEPS = 100_000  # loop iterations + calls per render
MAX_SECONDS = 1.0  # wall clock per render (all parts of one mail)
MAX_OUTPUT = 256 * 1024  # characters per part, and per value a template builds

_FMT_PERCENT = re.compile(r"%[-#0 +]*(?:\*|\d{6,}|\d*\.\d{6,})")  # huge %-format width/precision (or *)
_FMT_BRACE = re.compile(r"\{[^{}]*:[^{}]*\d{6,}[^{}]*\}")  # huge str.format width/precision


class BudgetError(Exception):
    """A render ran out of its budget; the message says which one."""


class Budget:
    """The work one render may still do. One per render, used by one thread."""

    __slots__ = ("steps", "deadline")

    def __init__(self, seconds: float = MAX_SECONDS, steps: int = MAX_STEPS):
        self.steps = steps
        self.deadline = time.monotonic() + seconds

    def step(self, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise BudgetError(f"more than {MAX_STEPS:,} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise BudgetError(f"took longer than {MAX_SECONDS:g} s")

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetError(f"took longer than {MAX_SECONDS:g} s")


_active = threading.local()


def current() -> Budget:
    """The budget of the render running in this thread (outside `BudgetedEnvironment.run`, a fresh one
    per check: only the per-value limits apply there)."""
    b = getattr(_active, "budget", None)
    return b if b is not None else Budget()


def _size(v: Any) -> int:
    return len(v) if isinstance(v, str | bytes | list | tuple | dict) else 0


def _too_big(what: str, n: int) -> BudgetError:
    return BudgetError(f"{what} would be over {MAX_OUTPUT // 1024} KB ({n:,} characters or items)")


def _check_result(v: Any, what: str) -> Any:
    n = _size(v)
    if n > MAX_OUTPUT:
        raise _too_big(what, n)
    return v


def _check_args(args: Iterable[Any], what: str) -> None:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_OUTPUT:
            raise BudgetError(f"{what}: argument {a:,} too large (at most {MAX_OUTPUT:,})")


def _check_format(fmt: Any, what: str) -> None:
    if isinstance(fmt, str) and (_FMT_PERCENT.search(fmt) or _FMT_BRACE.search(fmt)):
        raise BudgetError(f"{what}: format width or precision too large")


def _check_replace(s: Any, args: tuple, what: str) -> None:
    if isinstance(s, str) and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = s.count(args[0]) if args[0] else len(s) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        n = len(s) + count * (len(args[1]) - len(args[0]))
        if n > MAX_OUTPUT:
            raise _too_big(what, n)


class _CountedRange:
    """What ``range(...)`` gives a template: lazy, and every item it hands out costs a step."""

    __slots__ = ("_it", "_budget")

    def __init__(self, r: range):
        self._it = iter(r)
        self._budget = current()

    def __iter__(self) -> _CountedRange:
        return self

    def __next__(self) -> int:
        i = next(self._it)
        self._budget.step()
        return i


def budgeted_range(*args: int) -> Iterator[int]:
    return _CountedRange(range(*args))


def _guard_filter(name: str, f: Callable) -> Callable:
    what = f"filter {name}"

    @functools.wraps(f)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        current().step()
        # filters get (context/env,) value, *args: the value is data; only the extra args are limits
        vals = [a for a in args if not _is_jinja_internal(a)]
        _check_args(vals[1:], what)
        _check_args(kwargs.values(), what)
        if name == "format" and vals:
            _check_format(vals[0], what)
        if name == "replace" and vals:
            _check_replace(vals[0], tuple(vals[1:]), what)
        return _check_result(f(*args, **kwargs), what)
    return guarded


def _is_jinja_internal(a: Any) -> bool:
    from jinja2.environment import Environment
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    return isinstance(a, Context | EvalContext | Environment)


class _LoopBudget(NodeTransformer):
    """Wrap the iterable of every ``for`` so that each iteration costs a step."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - jinja's visitor naming
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("budgeted_iter"), [node.iter], [], None, None,
                               lineno=node.lineno)
        return node


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose renders run under a `Budget` (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **kw: Any):
        kw.setdefault("optimized", False)
        super().__init__(**kw)
        self.globals["range"] = budgeted_range
        for name, f in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, f)

    def add_filter(self, name: str, f: Callable) -> None:
        self.filters[name] = _guard_filter(name, f)

    # -- compile: every for loop pays per iteration
    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _LoopBudget().visit(super()._parse(source, name, filename))

    @staticmethod
    def budgeted_iter(iterable: Any) -> Iterator[Any]:
        if isinstance(iterable, _CountedRange):  # already pays per item
            return iterable
        return BudgetedEnvironment._counted(iterable)

    @staticmethod
    def _counted(iterable: Any) -> Iterator[Any]:
        b = current()
        for x in iterable:
            b.step()
            yield x

    # -- run time
    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        current().step()
        if __obj is not budgeted_range and __obj is not BudgetedEnvironment.budgeted_iter:
            what = f"call of {getattr(__obj, '__name__', type(__obj).__name__)}"
            _check_args(args, what)
            _check_args(kwargs.values(), what)
            target = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(target, str):
                if name in ("format", "format_map"):
                    _check_format(target, what)
                elif name == "replace":
                    _check_replace(target, args, what)
            return _check_result(super().call(__context, __obj, *args, **kwargs), what)
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        current().tick()
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) and isinstance(n, int) and not isinstance(n, bool) and _size(seq) * n > MAX_OUTPUT:
                    raise _too_big("'*'", _size(seq) * n)
        elif op == "**":
            if isinstance(right, int | float) and abs(right) > 1000 and isinstance(left, int | float) \
                    and abs(left) > 1:
                raise BudgetError(f"'**': exponent {right} too large (at most 1000)")
        elif op == "+":
            n = _size(left) + _size(right)
            if n > MAX_OUTPUT:
                raise _too_big("'+'", n)
        elif op == "%" and isinstance(left, str):
            _check_format(left, "'%'")
        return _check_result(_BINOPS[op](left, right), f"'{op}'")

    @contextlib.contextmanager
    def budget(self) -> Iterator[Budget]:
        """One fresh Budget for the renders inside the block (all parts of one mail)."""
        budget = Budget()
        prev = getattr(_active, "budget", None)
        _active.budget = budget
        try:
            yield budget
        finally:
            _active.budget = prev

    def render_capped(self, template: Template, context: dict) -> str:
        """``template.render(context)`` with its output counted while it streams (at most MAX_OUTPUT)."""
        budget = current()
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise BudgetError(f"output over {MAX_OUTPUT // 1024} KB")
            budget.tick()
            chunks.append(chunk)
        return "".join(chunks)


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "*": operator.mul, "**": operator.pow, "+": operator.add, "%": operator.mod,
}
