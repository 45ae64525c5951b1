"""Go's text/template, as Ollama renders Modelfile TEMPLATEs: a parser and a bounded interpreter.

Supported: text and actions with `{{-`/`-}}` trimming, `{{/* comments */}}`, if / else / else if / end, range
(with `$i, $e :=`, else, break, continue), with / else with, variables (`$x :=`, `$x =`, `$`), fields and
chains (`.A.B`, `$x.A`, `(pipe).A`), pipelines, literals, and the functions and, or, not, eq, ne, lt, le, gt,
ge, len, index, slice, printf, print, println, html, js, urlquery, json (Ollama's) and currentDate.
No function can reach Python, every loop step and printed character counts against a budget, and a
template that does not parse gives one line with its line and column.

Data is plain Python values: dicts (Go maps and structs, fields by key), lists, str, int, float, bool, None.
"""
from __future__ import annotations

import re

from .gofuncs import _MISSING, FUNCS, go_json, go_printf, go_str, truth
from .gotemplate_parse import (
    Action,
    Branch,
    Chain,
    Command,
    Const,
    Dot,
    Field,
    Ident,
    Loop,
    Pipe,
    TemplateError,
    Text,
    Var,
    _err,
    _Parser,
    _where,
)

__all__ = ["Template", "TemplateError", "cut_after_response", "go_json", "go_printf", "go_str", "identifiers",
           "truth"]

MAX_STEPS = 1_000_000
MAX_OUTPUT = 16 * 1024 * 1024  # characters


# -- the interpreter ------------------------------------------------------------------------------------
class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _State:
    def __init__(self, src: str, max_steps: int, max_output: int):
        self.src = src
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.max_steps, self.max_output = max_steps, max_output
        self.vars: list[tuple[str, object]] = []

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > self.max_steps:
            raise TemplateError(f"template: stopped after {self.max_steps} steps (a loop without end?)")

    def write(self, s: str) -> None:
        self.size += len(s)
        if self.size > self.max_output:
            raise TemplateError(f"template: output over {self.max_output} characters")
        self.out.append(s)

    def var(self, name: str, pos: int):
        for n, v in reversed(self.vars):
            if n == name:
                return v
        raise _err(self.src, pos, f'undefined variable "{name}"')

    def set_var(self, name: str, value, pos: int) -> None:
        for k in range(len(self.vars) - 1, -1, -1):
            if self.vars[k][0] == name:
                self.vars[k] = (name, value)
                return
        raise _err(self.src, pos, f'undefined variable "{name}"')


def _lookup(d: dict, name: str):
    """A field of a map or struct. Structs (Ollama's messages, tools, tool calls) are dicts with their JSON
    names, so `.ToolCalls` also finds "tool_calls" and `.Role` "role", and `json` prints what Ollama prints."""
    if name in d:
        return d[name]
    lower = name[:1].lower() + name[1:]
    if lower in d:
        return d[lower]
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()  # ToolCallID: tool_call_id
    return d.get(snake)


def _field(st: _State, v, idents: list[str], pos: int):
    for name in idents:
        if isinstance(v, dict):
            v = _lookup(v, name)
        elif v is None or v is _MISSING:
            raise _err(st.src, pos, f"nil pointer evaluating .{name}")
        else:
            raise _err(st.src, pos, f"can't evaluate field {name} in a {type(v).__name__}")
    return v


class Template:
    """A parsed Go template. `render(data)` runs it with `data` as dot."""

    def __init__(self, text: str):
        self.text = text
        self.root, _ = _Parser(text, FUNCS).parse_list()

    def render(self, data, *, max_steps: int = MAX_STEPS, max_output: int = MAX_OUTPUT, root: list | None = None
               ) -> str:
        st = _State(self.text, max_steps, max_output)
        st.vars.append(("$", data))
        try:
            self._list(st, self.root if root is None else root, data)
        except RecursionError:
            raise TemplateError("template: nested too deeply") from None
        return "".join(st.out)

    # walking
    def _list(self, st: _State, nodes: list, dot) -> None:
        for node in nodes:
            st.step()
            if isinstance(node, Text):
                st.write(node.text)
            elif isinstance(node, Action):
                v = self._pipe(st, node.pipe, dot)
                if not node.pipe.decl:
                    st.write(go_str(v))
            elif isinstance(node, Branch):
                mark = len(st.vars)
                try:
                    if node.kind == "range":
                        self._range(st, node, dot)
                    else:
                        v = self._pipe(st, node.pipe, dot)
                        if truth(v):
                            self._list(st, node.body, v if node.kind == "with" else dot)
                        elif node.else_body is not None:
                            self._list(st, node.else_body, dot)
                finally:
                    del st.vars[mark:]
            elif isinstance(node, Loop):
                raise _Break() if node.kind == "break" else _Continue()

    def _range(self, st: _State, node: Branch, dot) -> None:
        pipe = node.pipe
        v = self._pipe(st, Pipe(pipe.cmds, [], False, pipe.pos), dot)
        if v is None or v is _MISSING:
            items = []
        elif isinstance(v, (list, tuple)):
            items = list(enumerate(v))
        elif isinstance(v, dict):
            items = [(k, v[k]) for k in sorted(v, key=str)]
        elif isinstance(v, int) and not isinstance(v, bool):
            if len(pipe.decl) > 1:
                raise _err(st.src, pipe.pos, "can't use two variables ranging over an integer")
            items = ((i, i) for i in range(max(v, 0)))
        else:
            raise _err(st.src, pipe.pos, f"range can't iterate over {go_str(v)}")
        any_item = False
        for k, item in items:
            any_item = True
            st.step()
            mark = len(st.vars)
            if len(pipe.decl) == 1:
                st.vars.append((pipe.decl[0], item))
            elif len(pipe.decl) == 2:
                st.vars.append((pipe.decl[0], k))
                st.vars.append((pipe.decl[1], item))
            try:
                self._list(st, node.body, item)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del st.vars[mark:]
        if not any_item and node.else_body is not None:
            self._list(st, node.else_body, dot)

    def _pipe(self, st: _State, pipe: Pipe, dot):
        v = _MISSING
        for cmd in pipe.cmds:
            v = self._command(st, cmd, dot, v)
        if pipe.decl:
            if pipe.is_assign:
                st.set_var(pipe.decl[0], v, pipe.pos)
            else:
                st.vars.append((pipe.decl[0], v))
        return v

    def _command(self, st: _State, cmd: Command, dot, final):
        st.step()
        first = cmd.args[0]
        if isinstance(first, Ident):
            name = first.name
            if name in ("and", "or"):
                operands = cmd.args[1:]
                if not operands and final is _MISSING:
                    raise _err(st.src, first.pos, f"wrong number of args for {name}: want at least 1 got 0")
                v = None
                for a in operands:
                    v = self._arg(st, a, dot)
                    if truth(v) != (name == "and"):
                        return v
                return final if final is not _MISSING else v
            args = [self._arg(st, a, dot) for a in cmd.args[1:]]
            if final is not _MISSING:
                args.append(final)
            try:
                return FUNCS[name](*args)
            except TemplateError as e:
                raise TemplateError(f"template: {_where(st.src, first.pos)}: {str(e).removeprefix('template: ')}"
                                    ) from None
            except TypeError:
                raise _err(st.src, first.pos, f"wrong number of args for {name}: got {len(args)}") from None
        if len(cmd.args) > 1 or final is not _MISSING:
            raise _err(st.src, cmd.pos, f"can't give argument to non-function {go_str(self._arg(st, first, dot))!r}"
                       if not isinstance(first, (Field, Var, Chain)) else "can't give arguments to a field")
        return self._arg(st, first, dot)

    def _arg(self, st: _State, a, dot):
        if isinstance(a, Const):
            return a.value
        if isinstance(a, Dot):
            return dot
        if isinstance(a, Field):
            return _field(st, dot, a.idents, a.pos)
        if isinstance(a, Var):
            return _field(st, st.var(a.name, a.pos), a.idents, a.pos)
        if isinstance(a, Pipe):
            mark = len(st.vars)
            try:
                return self._pipe(st, a, dot)
            finally:
                del st.vars[mark:]
        if isinstance(a, Chain):
            return _field(st, self._arg(st, a.node, dot), a.idents, a.pos)
        if isinstance(a, Ident):
            if a.name in ("and", "or"):
                raise _err(st.src, a.pos, f"{a.name} needs arguments")
            return self._command(st, Command([a], a.pos), dot, _MISSING)
        raise _err(st.src, 0, "can't evaluate this operand")


# -- tree queries Ollama makes --------------------------------------------------------------------------
def identifiers(nodes: list) -> list[str]:
    """The names a template uses (Ollama's template.Identifiers: fields and variables with their fields, as
    `$`, `Messages` for `$.Messages`, in actions and in the conditions of if/range/with, inside parentheses
    too; not the variables a pipeline declares)."""
    out: list[str] = []

    def pipe(p: Pipe):
        for c in p.cmds:
            for a in c.args:
                arg(a)

    def arg(a):
        if isinstance(a, Field):
            out.extend(a.idents)
        elif isinstance(a, Var):
            out.extend([a.name, *a.idents])
        elif isinstance(a, Pipe):
            pipe(a)

    def walk(ns):
        for n in ns:
            if isinstance(n, Action):
                pipe(n.pipe)
            elif isinstance(n, Branch):
                pipe(n.pipe)
                walk(n.body)
                if n.else_body is not None:
                    walk(n.else_body)
    walk(nodes)
    return out


def cut_after_response(nodes: list) -> list:
    """A copy of the tree with everything after the first `.Response` field left out (the field itself
    kept), as Ollama's legacy prompt building does for the last turn. Conditions are not searched."""
    cut = False

    def walk_args(args):
        nonlocal cut
        kept = []
        for a in args:
            if cut:
                continue
            if isinstance(a, Field) and "Response" in a.idents:
                cut = True
                kept.append(a)
            elif isinstance(a, Pipe):
                p = walk_pipe(a)
                if p is not None:
                    kept.append(p)
            else:
                kept.append(a)
        return kept

    def walk_pipe(p: Pipe):
        cmds = []
        for c in p.cmds:
            args = walk_args(c.args)
            if not args:
                return None
            cmds.append(Command(args, c.pos))
        return Pipe(cmds, p.decl, p.is_assign, p.pos) if cmds else None

    def walk(ns):
        out = []
        for n in ns:
            if cut:
                break
            if isinstance(n, Action):
                p = walk_pipe(n.pipe)
                if p is not None:
                    out.append(Action(p))
            elif isinstance(n, Branch):
                body = walk(n.body)
                else_body = None if n.else_body is None or cut else walk(n.else_body)
                out.append(Branch(n.kind, n.pipe, body, else_body))
            else:
                out.append(n)
        return out
    return walk(nodes)
