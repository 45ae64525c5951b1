"""The lexer and parser of Go's text/template (the tree the interpreter in gotemplate.py walks)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import LlamapyError

MAX_DEPTH = 64  # nested parentheses / blocks


class TemplateError(LlamapyError):
    """A template that does not parse, or fails (or runs over its budget) while rendering."""


_SPACE = " \t\r\n"
KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}


# -- lexer ----------------------------------------------------------------------------------------------
@dataclass
class Tok:
    kind: str     # text left right ident field var string number char bool nil ( ) | := = , eof
    val: object
    pos: int
    spaced: bool = True  # whitespace (or a delimiter) came right before it


def _where(src: str, pos: int) -> str:
    line = src.count("\n", 0, pos) + 1
    col = pos - (src.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"


def _err(src: str, pos: int, msg: str) -> TemplateError:
    return TemplateError(f"template: {_where(src, pos)}: {msg}")


_NUM = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GO_ESC = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f",
           "v": "\v", "0": "\0"}


def _unescape(src: str, s: str, pos: int) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if nxt in ("x", "u", "U"):
            n = {"x": 2, "u": 4, "U": 8}[nxt]
            h = s[i + 2:i + 2 + n]
            if len(h) != n or not all(ch in "0123456789abcdefABCDEF" for ch in h):
                raise _err(src, pos, "invalid escape in string")
            out.append(chr(int(h, 16)) if nxt != "x" else chr(int(h, 16)))
            i += 2 + n
        elif nxt in _GO_ESC:
            out.append(_GO_ESC[nxt])
            i += 2
        else:
            raise _err(src, pos, f"unknown escape \\{nxt}")
    return "".join(out)


def _lex(src: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(src)
    trim_next = False
    while i < n or not toks or toks[-1].kind != "eof":
        j = src.find("{{", i)
        text_end = j if j >= 0 else n
        text = src[i:text_end]
        left_trim = j >= 0 and j + 3 <= n and src[j + 2] == "-" and j + 3 < n and src[j + 3] in _SPACE
        if trim_next:
            text = text.lstrip(_SPACE)
        if left_trim:
            text = text.rstrip(_SPACE)
        if text:
            toks.append(Tok("text", text, i))
        trim_next = False
        if j < 0:
            toks.append(Tok("eof", None, n))
            break
        start = j
        i = j + 2 + (2 if left_trim else 0)
        # a comment: {{/* ... */}} with optional trim markers, nothing else in the action
        k = i
        while k < n and src[k] in _SPACE and left_trim:
            k += 1
        if src.startswith("/*", k):
            e = src.find("*/", k + 2)
            if e < 0:
                raise _err(src, start, "unclosed comment")
            e += 2
            if src.startswith(" -}}", e) or (e < n and src[e] in _SPACE and src.startswith("-}}", e + 1)):
                trim_next, i = True, e + 4
            elif src.startswith("}}", e):
                i = e + 2
            else:
                raise _err(src, e, "comment ends before closing delimiter")
            continue
        toks.append(Tok("left", None, start))
        spaced = True
        while True:
            if i >= n:
                raise _err(src, start, "unclosed action")
            c = src[i]
            if c in _SPACE:
                if src.startswith("-}}", i + 1):
                    toks.append(Tok("right", None, i))
                    trim_next, i = True, i + 4
                    break
                i += 1
                spaced = True
                continue
            if src.startswith("}}", i):
                toks.append(Tok("right", None, i))
                i += 2
                break
            p = i
            if c in "()|,=":  # one-character punctuation, each its own token kind
                toks.append(Tok(c, None, p, spaced))
                i += 1
            elif src.startswith(":=", i):
                toks.append(Tok(":=", None, p, spaced))
                i += 2
            elif c == '"':
                e = i + 1
                while e < n and src[e] != '"':
                    if src[e] == "\n":
                        raise _err(src, p, "unterminated quoted string")
                    e += 2 if src[e] == "\\" else 1
                if e >= n:
                    raise _err(src, p, "unterminated quoted string")
                toks.append(Tok("string", _unescape(src, src[i + 1:e], p), p, spaced))
                i = e + 1
            elif c == "`":
                e = src.find("`", i + 1)
                if e < 0:
                    raise _err(src, p, "unterminated raw quoted string")
                toks.append(Tok("string", src[i + 1:e], p, spaced))
                i = e + 1
            elif c == "'":
                e = i + 1
                while e < n and src[e] != "'":
                    e += 2 if src[e] == "\\" else 1
                body = _unescape(src, src[i + 1:e], p) if e < n else ""
                if e >= n or len(body) != 1:
                    raise _err(src, p, "malformed character constant")
                toks.append(Tok("char", ord(body), p, spaced))
                i = e + 1
            elif c == "$":
                m = _IDENT.match(src, i + 1)
                name = "$" + (m.group(0) if m else "")
                i = m.end() if m else i + 1
                idents = []
                while i < n and src[i] == "." and (m2 := _IDENT.match(src, i + 1)):
                    idents.append(m2.group(0))
                    i = m2.end()
                toks.append(Tok("var", (name, idents), p, spaced))
            elif c == ".":
                m = _IDENT.match(src, i + 1)
                if m is None:
                    if i + 1 < n and src[i + 1].isdigit():
                        m3 = _NUM.match(src, i)
                        toks.append(Tok("number", src[i:m3.end()], p, spaced))
                        i = m3.end()
                    else:
                        toks.append(Tok("dot", None, p, spaced))
                        i += 1
                else:
                    idents = []
                    while i < n and src[i] == "." and (m2 := _IDENT.match(src, i + 1)):
                        idents.append(m2.group(0))
                        i = m2.end()
                    toks.append(Tok("field", idents, p, spaced))
            elif c.isdigit() or (c in "+-" and i + 1 < n and (src[i + 1].isdigit() or src[i + 1] == ".")):
                m = _NUM.match(src, i)
                toks.append(Tok("number", m.group(0), p, spaced))
                i = m.end()
            elif m := _IDENT.match(src, i):
                w = m.group(0)
                kind = "bool" if w in ("true", "false") else "nil" if w == "nil" else "ident"
                toks.append(Tok(kind, w == "true" if kind == "bool" else w, p, spaced))
                i = m.end()
            else:
                raise _err(src, p, f"unexpected {c!r} in action")
            spaced = False
    return toks


# -- the tree -------------------------------------------------------------------------------------------
@dataclass
class Text:
    text: str


@dataclass
class Field:      # .A.B on dot
    idents: list[str]
    pos: int = 0


@dataclass
class Var:        # $x.A.B
    name: str
    idents: list[str]
    pos: int = 0


@dataclass
class Chain:      # (pipe).A.B
    node: object
    idents: list[str]
    pos: int = 0


@dataclass
class Dot:
    pos: int = 0


@dataclass
class Ident:      # a function name
    name: str
    pos: int = 0


@dataclass
class Const:
    value: object
    pos: int = 0


@dataclass
class Command:
    args: list
    pos: int = 0


@dataclass
class Pipe:
    cmds: list[Command]
    decl: list[str] = field(default_factory=list)
    is_assign: bool = False
    pos: int = 0


@dataclass
class Action:
    pipe: Pipe


@dataclass
class Branch:     # if / range / with
    kind: str
    pipe: Pipe
    body: list
    else_body: list | None = None


@dataclass
class Loop:       # break / continue
    kind: str
    pos: int = 0


def _number(src: str, text: str, pos: int) -> int | float:
    t = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", t):
            return int(t, 16)
        if re.fullmatch(r"[+-]?0[bB][01]+", t):
            return int(t, 2)
        if re.fullmatch(r"[+-]?0[oO][0-7]+", t):
            return int(t, 8)
        if re.fullmatch(r"[+-]?\d+", t):
            return int(t, 10)
        return float(t)
    except ValueError:
        raise _err(src, pos, f"bad number syntax: {text!r}") from None


class _Parser:
    def __init__(self, src: str, funcs: dict):
        self.src, self.funcs = src, funcs
        self.toks = _lex(src)
        self.i = 0
        self.depth = 0
        self.in_range = 0

    def peek(self, k: int = 0) -> Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def err(self, tok: Tok, msg: str) -> TemplateError:
        return _err(self.src, tok.pos, msg)

    def expect(self, kind: str, context: str) -> Tok:
        t = self.next()
        if t.kind != kind:
            found = "end of action" if t.kind == "right" else repr(t.val) if t.val is not None else t.kind
            raise self.err(t, f"unexpected {found} in {context}")
        return t

    def parse_list(self, stops: tuple[str, ...] = ()) -> tuple[list, str | None]:
        nodes: list = []
        while True:
            t = self.peek()
            if t.kind == "text":
                nodes.append(Text(self.next().val))
            elif t.kind == "eof":
                if stops:
                    raise self.err(t, "unexpected EOF: an {{if}}, {{range}} or {{with}} has no {{end}}")
                return nodes, None
            else:
                self.next()  # {{
                k = self.peek()
                if k.kind == "ident" and k.val in KEYWORDS:
                    kw = self.next().val
                    if kw in ("end", "else"):
                        if not stops:
                            raise self.err(k, f"unexpected {{{{{kw}}}}}")
                        if kw == "else" and "else" not in stops:
                            raise self.err(k, "expected end; found {{else}}")
                        return nodes, kw
                    if kw in ("if", "range", "with"):
                        nodes.append(self.parse_branch(kw, k))
                    elif kw in ("break", "continue"):
                        if not self.in_range:
                            raise self.err(k, f"{{{{{kw}}}}} outside {{{{range}}}}")
                        self.expect("right", kw)
                        nodes.append(Loop(kw, k.pos))
                    else:
                        raise self.err(k, f"{{{{{kw}}}}} is not supported")
                else:
                    pipe = self.parse_pipe("command", allow_decl=True)
                    self.expect("right", "command")
                    nodes.append(Action(pipe))

    def parse_branch(self, kw: str, tok: Tok) -> Branch:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.err(tok, f"blocks nested deeper than {MAX_DEPTH}")
        pipe = self.parse_pipe(kw, allow_decl=True, range_decl=kw == "range")
        self.expect("right", kw)
        if kw == "range":
            self.in_range += 1
        body, term = self.parse_list(("end", "else"))
        if kw == "range":
            self.in_range -= 1
        else_body = None
        if term == "else":
            k = self.peek()
            if kw in ("if", "with") and k.kind == "ident" and k.val == kw:
                self.next()
                else_body = [self.parse_branch(kw, k)]  # else if / else with: shares the {{end}}
            else:
                self.expect("right", "else")
                else_body, term = self.parse_list(("end",))
                self.expect("right", "end")
        else:
            self.expect("right", "end")
        self.depth -= 1
        return Branch(kw, pipe, body, else_body)

    def parse_pipe(self, context: str, allow_decl: bool = False, range_decl: bool = False) -> Pipe:
        start = self.peek()
        decl, is_assign = [], False
        if allow_decl and start.kind == "var" and not start.val[1]:
            if self.peek(1).kind in (":=", "="):
                decl = [start.val[0]]
                is_assign = self.peek(1).kind == "="
                self.i += 2
            elif range_decl and self.peek(1).kind == "," and self.peek(2).kind == "var" \
                    and self.peek(3).kind == ":=":
                decl = [start.val[0], self.peek(2).val[0]]
                self.i += 4
        cmds = []
        while True:
            cmds.append(self.parse_command(context))
            if self.peek().kind == "|":
                self.next()
                continue
            break
        return Pipe(cmds, decl, is_assign, start.pos)

    def parse_command(self, context: str) -> Command:
        args = []
        first = self.peek()
        while self.peek().kind not in ("right", ")", "|", "eof"):
            args.append(self.parse_operand())
        if not args:
            raise self.err(self.peek(), f"missing value for {context}")
        if isinstance(args[0], Const) and args[0].value is None:
            raise self.err(first, "nil is not a command")
        return Command(args, first.pos)

    def parse_operand(self):
        t = self.next()
        if t.kind == "field":
            node = Field(t.val, t.pos)
        elif t.kind == "var":
            node = Var(t.val[0], t.val[1], t.pos)
        elif t.kind == "dot":
            node = Dot(t.pos)
        elif t.kind == "string" or t.kind == "bool" or t.kind == "char":
            node = Const(t.val, t.pos)
        elif t.kind == "nil":
            node = Const(None, t.pos)
        elif t.kind == "number":
            node = Const(_number(self.src, t.val, t.pos), t.pos)
        elif t.kind == "ident":
            if t.val in KEYWORDS:
                raise self.err(t, f"unexpected {{{{{t.val}}}}} in operand")
            if t.val not in self.funcs:
                raise self.err(t, f'function "{t.val}" not defined')
            node = Ident(t.val, t.pos)
        elif t.kind == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.err(t, f"parentheses nested deeper than {MAX_DEPTH}")
            node = self.parse_pipe("parenthesized pipeline")
            self.expect(")", "parenthesized pipeline")
            self.depth -= 1
        else:
            found = "end of action" if t.kind == "right" else t.kind
            raise self.err(t, f"unexpected {found} in operand")
        nxt = self.peek()
        if nxt.kind == "field" and not nxt.spaced:
            self.next()
            node = Chain(node, nxt.val, nxt.pos)
        return node
