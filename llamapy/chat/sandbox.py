"""A Jinja sandbox with a budget: a chat template comes from a downloaded file, so its rendering is bounded.

Jinja's ImmutableSandboxedEnvironment keeps a template away from Python internals, but not from spending
time or memory: `{% for i in range(99999) %}{% for j in range(99999) %}...` runs for hours and
`{{ 'x' * 10**10 }}` asks for 10 GB. `BoundedEnvironment` checks a per-render `Budget` from inside the
template, so a runaway template raises instead of running on (a thread with a deadline can't stop a
Python loop; the loop has to stop itself):

- every loop iteration, call, attribute/item access and `{{ }}` output is a step: more than `max_steps`
  steps, or a step after the deadline, ends the render;
- `*`, `+`, `**`, `%` and `~` are checked before they run: a string, list or number that would pass
  `max_size` is refused (sizes of nested lists count their elements);
- str methods and filters with a width, count or format argument are checked the same way;
- `range` is Jinja's sandbox range (at most 100,000 items); recursion ends at Python's limit.

A refused render raises `TemplateBudgetError`; `ChatTemplate` turns it into one line for the user.
"""
from __future__ import annotations

import functools
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

HOOK = "__llamapy_"  # prefix of the names the loop and concatenation hooks are called by
_WIDE_FORMAT = re.compile(r"\d{7,}|\*")  # a format width or precision of a million or more, or one given as `*`
_MAX_INT_BITS = 1 << 16


@dataclass(frozen=True)
class TemplateLimits:
    """How much one render may spend: seconds, steps (loop iterations, calls, accesses), and the size of
    any one string, list or output (characters or elements)."""

    seconds: float = 1.0
    max_steps: int = 10_000_000
    max_size: int = 32 << 20


class TemplateBudgetError(Exception):
    """A render went over its budget (time, steps or size)."""


class Budget:
    """The budget of one render in progress."""

    def __init__(self, limits: TemplateLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps & 31 == 0:  # the clock every 32 steps: a step is a microsecond or so
            if self.steps > self.limits.max_steps:
                raise TemplateBudgetError(f"it takes more than {self.limits.max_steps:,} steps")
            if time.monotonic() > self.deadline:
                raise TemplateBudgetError(f"it takes longer than {self.limits.seconds:g} s")

    def size(self, n: int, what: str = "a value") -> None:
        if n > self.limits.max_size:
            raise TemplateBudgetError(f"{what} would have {n:,} characters or items "
                                      f"(the limit is {self.limits.max_size:,})")


_local = threading.local()


def _budget() -> Budget:
    b = getattr(_local, "budget", None)
    return b if b is not None else Budget(TemplateLimits())  # a call outside a render: sizes still checked


@contextmanager
def bounded(limits: TemplateLimits):
    """Run the body (a render, or a compile that folds constants) within `limits`."""
    saved = getattr(_local, "budget", None)
    _local.budget = budget = Budget(limits)
    try:
        yield budget
    finally:
        _local.budget = saved


def render_bounded(template, limits: TemplateLimits, **context) -> str:
    """`template.render(**context)` within `limits` (TemplateBudgetError past them)."""
    with bounded(limits) as budget:
        out, total = [], 0
        for chunk in template.generate(**context):
            total += len(chunk)
            budget.size(total, "the output")
            budget.step()
            out.append(chunk)
        return "".join(out)


def weight(x, limit: int) -> int:
    """The size of a value as text would be: characters of a string, elements of a list (nested lists
    counted through); stops counting past `limit`."""
    if isinstance(x, str):
        return len(x)
    if isinstance(x, (list, tuple, dict)):
        total = len(x)
        for v in x.values() if isinstance(x, dict) else x:
            if total > limit:
                break
            total += weight(v, limit - total)
        return total
    return 1


def _check_int(x, b: Budget) -> None:
    if isinstance(x, int) and not isinstance(x, bool) and x.bit_length() > _MAX_INT_BITS:
        raise TemplateBudgetError(f"a number has more than {_MAX_INT_BITS:,} bits")


def _check_args(args, kwargs, b: Budget) -> None:
    """Refuse an int argument beyond the size limit (a width, a count, a repeat)."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > b.limits.max_size:
            raise TemplateBudgetError(f"an argument of {a:,} is beyond the limit of {b.limits.max_size:,}")


def _check_result(r, b: Budget) -> None:
    if isinstance(r, (str, list, tuple, dict)):
        b.size(weight(r, b.limits.max_size), "a value")
    else:
        _check_int(r, b)


def _check_format(fmt, b: Budget) -> None:
    if isinstance(fmt, str) and _WIDE_FORMAT.search(fmt):
        raise TemplateBudgetError("a format string asks for a width or precision of a million or more")


def _check_replace(s, old, new, count, b: Budget) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        n = s.count(old) if old else len(s) + 1
        if count is not None and count >= 0:
            n = min(n, count)
        b.size(len(s) + n * max(len(new) - len(old), 0), "a replace() result")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose renders are bounded by the current Budget (see module doc)."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self, **kw):
        super().__init__(finalize=self._finalize, **kw)
        self.globals[HOOK + "iter"] = _counted
        self.globals[HOOK + "concat"] = _concat
        self.filters = {k: _bounded_filter(k, f) for k, f in self.filters.items()}

    def compile(self, *args, **kwargs):
        with bounded(TemplateLimits()):  # constant folding runs filters at compile time
            return super().compile(*args, **kwargs)

    def _parse(self, source, name, filename):
        tree = super()._parse(source, name, filename)
        for n in tree.find_all(nodes.Name):
            if n.name.startswith(HOOK):
                from jinja2 import TemplateSyntaxError

                raise TemplateSyntaxError(f"the name {n.name} is reserved", n.lineno, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name(HOOK + "iter", "load"), [loop.iter], [], None, None,
                                   lineno=loop.lineno)
        for cat in list(tree.find_all(nodes.Concat)):
            call = nodes.Call(nodes.Name(HOOK + "concat", "load"), cat.nodes, [], None, None, lineno=cat.lineno)
            cat.nodes = [call]
        return tree

    @staticmethod
    def _finalize(value):
        b = _budget()
        b.step()
        b.size(weight(value, b.limits.max_size), "an output value")
        return value

    def call_binop(self, context, operator, left, right):
        b = _budget()
        b.step()
        if operator == "+" and type(left) is str and type(right) is str:  # the common case, kept quick
            if len(left) + len(right) > b.limits.max_size:
                b.size(len(left) + len(right), "a joined value")
            return left + right
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    b.size(weight(seq, b.limits.max_size) * max(n, 0), "a repeated value")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise TemplateBudgetError(f"a number would have more than {_MAX_INT_BITS:,} bits")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                b.size(weight(left, b.limits.max_size) + weight(right, b.limits.max_size), "a joined value")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if right * left.bit_length() > _MAX_INT_BITS:
                    raise TemplateBudgetError(f"a number would have more than {_MAX_INT_BITS:,} bits")
        elif operator == "%":
            _check_format(left, b)
        out = super().call_binop(context, operator, left, right)
        _check_result(out, b)
        return out

    def getattr(self, obj, attribute):
        _budget().step()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _budget().step()
        return super().getitem(obj, argument)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        b = _budget()
        b.step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, list, tuple, dict)):
            _check_args(args, kwargs, b)
            name = getattr(__obj, "__name__", "")
            if name in ("format", "format_map"):
                _check_format(owner, b)
            elif name == "replace" and len(args) >= 2:
                _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else None, b)
            elif name == "join" and args and isinstance(args[0], (list, tuple)):
                b.size(weight(args[0], b.limits.max_size) + len(owner) * len(args[0]), "a join() result")
        out = ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
        _check_result(out, b)
        return out


def _counted(iterable):
    """A loop's iterable, counted: each iteration is a step."""
    b = _budget()
    b.step()
    for x in iterable:
        b.step()
        yield x


def _concat(*parts):
    """The `~` operator: the parts as one string, its size checked before it is built."""
    b = _budget()
    b.step()
    texts = [p if isinstance(p, str) else str(p) if weight(p, b.limits.max_size) <= b.limits.max_size else None
             for p in parts]
    if any(t is None for t in texts):
        b.size(b.limits.max_size + 1, "a joined value")
    b.size(sum(len(t) for t in texts), "a joined value")
    return "".join(texts)


def _bounded_filter(name: str, f):
    """A filter with the same checks as a call (int arguments, replace/indent/format sizes, the result)."""

    @functools.wraps(f)
    def bounded(*args, **kwargs):
        b = _budget()
        b.step()
        plain = [a for a in args if not _is_jinja_state(a)]
        _check_args(plain, kwargs, b)
        if name == "replace" and len(plain) >= 3:
            _check_replace(plain[0], plain[1], plain[2], plain[3] if len(plain) > 3 else kwargs.get("count"), b)
        elif name == "indent" and plain and isinstance(plain[0], str):
            width = plain[1] if len(plain) > 1 else kwargs.get("width", 4)
            n = len(width) if isinstance(width, str) else width if isinstance(width, int) else 4
            b.size(len(plain[0]) + n * (plain[0].count("\n") + 1), "an indent result")
        elif name == "format" and plain:
            _check_format(plain[0], b)
        elif name == "join" and plain and isinstance(plain[0], (list, tuple)):
            sep = plain[1] if len(plain) > 1 and isinstance(plain[1], str) else ""
            b.size(weight(plain[0], b.limits.max_size) + len(sep) * len(plain[0]), "a join result")
        out = f(*args, **kwargs)
        _check_result(out, b)
        return out

    return bounded


def _is_jinja_state(a) -> bool:
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    return isinstance(a, (Context, EvalContext, ImmutableSandboxedEnvironment))
