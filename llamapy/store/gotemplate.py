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

import datetime
import html as _html
import json as _json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal

from ..errors import LlamapyError

MAX_STEPS = 1_000_000
MAX_OUTPUT = 16 * 1024 * 1024  # characters
MAX_DEPTH = 64                 # nested parentheses / blocks
MAX_WIDTH = 1024               # printf width or precision


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
            if c == "(":
                toks.append(Tok("(", None, p, spaced))
                i += 1
            elif c == ")":
                toks.append(Tok(")", None, p, spaced))
                i += 1
            elif c == "|":
                toks.append(Tok("|", None, p, spaced))
                i += 1
            elif c == ",":
                toks.append(Tok(",", None, p, spaced))
                i += 1
            elif src.startswith(":=", i):
                toks.append(Tok(":=", None, p, spaced))
                i += 2
            elif c == "=":
                toks.append(Tok("=", None, p, spaced))
                i += 1
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


# -- values ---------------------------------------------------------------------------------------------
_MISSING = object()


def truth(v) -> bool:
    """Go's template truth: false, 0, nil and empty strings, lists and maps are false."""
    if v is None or v is _MISSING:
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, dict)):
        return bool(v)
    return True


def _go_float(f: float) -> str:
    """A float as Go's %v prints it (shortest digits; %e form when the exponent is < -4 or >= 6)."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    d = Decimal(repr(f))
    sign, digits, exp = d.as_tuple()
    x = len(digits) + exp - 1  # the decimal exponent of the first digit
    s = "-" if sign else ""
    if x < -4 or x >= 6:
        ds = "".join(map(str, digits)).rstrip("0") or "0"
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{s}{mant}e{'+' if x >= 0 else '-'}{abs(x):02d}"
    t = format(abs(d), "f")
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    return s + t


def go_str(v) -> str:
    """A value as {{ . }} prints it (Go's fmt %v)."""
    if v is None or v is _MISSING:
        return "<no value>"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_go_inner(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{_go_inner(k)}:{_go_inner(x)}" for k, x in sorted(v.items(), key=lambda kv:
                                                                                     str(kv[0]))) + "]"
    return str(v)


def _go_inner(v) -> str:
    return "<nil>" if v is None else go_str(v)


def go_json(v) -> str:
    """Go's json.Marshal: compact, HTML characters escaped (<, >, & as \\u003c ...), U+2028/9 escaped."""
    s = _json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def _eq(a, b) -> bool:
    if a is _MISSING or b is _MISSING:
        return False
    ka, kb = _kind(a), _kind(b)
    if ka != kb and "other" not in (ka, kb) and not (a is None or b is None):
        raise TemplateError(f"template: error calling eq: incompatible types for comparison ({ka} and {kb})")
    return a == b


def _cmp(name: str, a, b) -> int:
    ka, kb = _kind(a), _kind(b)
    if ka != kb or ka not in ("number", "string"):
        raise TemplateError(f"template: error calling {name}: incompatible types for comparison")
    return (a > b) - (a < b)


def _length(v) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8"))  # Go counts bytes
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    raise TemplateError(f"template: error calling len: len of {type(v).__name__}")


def _index(v, *keys):
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k)
        elif isinstance(v, (list, tuple, str)):
            if not isinstance(k, int) or isinstance(k, bool):
                raise TemplateError("template: error calling index: cannot index slice/array with a non-integer")
            seq = v.encode("utf-8") if isinstance(v, str) else v
            if not 0 <= k < len(seq):
                raise TemplateError(f"template: error calling index: index out of range: {k}")
            v = seq[k]
        elif v is None:
            raise TemplateError("template: error calling index: index of untyped nil")
        else:
            raise TemplateError(f"template: error calling index: can't index item of type {type(v).__name__}")
    return v


def _slice(v, *idx):
    if not isinstance(v, (list, tuple, str)):
        raise TemplateError("template: error calling slice: can't slice item of this type")
    if len(idx) > 2 or any(not isinstance(i, int) or isinstance(i, bool) for i in idx):
        raise TemplateError("template: error calling slice: indexes must be at most two integers")
    seq = v.encode("utf-8") if isinstance(v, str) else v
    lo = idx[0] if idx else 0
    hi = idx[1] if len(idx) > 1 else len(seq)
    if not 0 <= lo <= hi <= len(seq):
        raise TemplateError(f"template: error calling slice: index out of range: {lo}:{hi}")
    out = seq[lo:hi]
    return out.decode("utf-8", "replace") if isinstance(v, str) else list(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+|\*)?)?([a-zA-Z%])")


def go_printf(fmt: str, *args) -> str:
    """Go's fmt.Sprintf for the common verbs: %s %v %d %q %f %g %e %x %X %c %t %%, with flags, width, precision."""
    out, ai, last = [], 0, 0
    args = list(args)
    for m in _VERB.finditer(fmt):
        out.append(fmt[last:m.start()])
        last = m.end()
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue

        def take_int():
            nonlocal ai
            if ai >= len(args) or not isinstance(args[ai], int):
                return None
            ai += 1
            return args[ai - 1]
        w = take_int() if width == "*" else int(width) if width else None
        p = take_int() if prec == "*" else int(prec) if prec else (0 if m.group(0).find(".") > 0 and prec is None
                                                                   else None)
        if (w or 0) > MAX_WIDTH or (p or 0) > MAX_WIDTH:
            raise TemplateError(f"template: error calling printf: width or precision over {MAX_WIDTH}")
        if ai >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[ai]
        ai += 1
        if verb in "sv":
            s = go_str(a) if verb == "v" or not isinstance(a, str) else a
            if p is not None and verb == "s":
                s = s[:p]
        elif verb == "q":
            s = _json.dumps(a, ensure_ascii=False) if isinstance(a, str) else f"'{chr(a)}'" if isinstance(a, int) \
                else go_str(a)
        elif verb == "t" and isinstance(a, bool):
            s = go_str(a)
        elif verb in "dxXob" and isinstance(a, int) and not isinstance(a, bool):
            s = format(a, {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb])
        elif verb == "c" and isinstance(a, int):
            s = chr(a)
        elif verb in "feEgG" and isinstance(a, (int, float)) and not isinstance(a, bool):
            s = format(float(a), f".{6 if p is None else p}{verb}") if verb in "feE" else (
                _go_float(float(a)) if p is None else format(float(a), f".{p}{verb}"))
        elif verb in "xX" and isinstance(a, str):
            s = a.encode("utf-8").hex()
            s = s.upper() if verb == "X" else s
        else:
            s = f"%!{verb}({type(a).__name__}={go_str(a)})"
        if "+" in flags and verb in "dfeEgG" and not s.startswith("-"):
            s = "+" + s
        if w is not None and len(s) < w:
            if "-" in flags:
                s = s.ljust(w)
            elif "0" in flags and verb in "dfeEgGxX":
                neg = s[0] in "+-"
                s = (s[0] + s[1:].rjust(w - 1, "0")) if neg else s.rjust(w, "0")
            else:
                s = s.rjust(w)
        out.append(s)
    out.append(fmt[last:])
    if ai < len(args):
        out.append("%!(EXTRA " + ", ".join(f"{type(a).__name__}={go_str(a)}" for a in args[ai:]) + ")")
    return "".join(out)


def _go_print(*args) -> str:
    out = []
    for i, a in enumerate(args):  # Go's Sprint: a space between operands when neither is a string
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_str(a))
    return "".join(out)


def _js(s) -> str:
    s = go_str(s)
    rep = {"\\": "\\\\", "'": "\\'", '"': "\\\"", "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D",
           "\n": "\\u000A", "\r": "\\u000D", "\t": "\\u0009"}
    return "".join(rep.get(c, c) for c in s)


FUNCS = {
    "not": lambda a: not truth(a),
    "eq": lambda a, *bs: any(_eq(a, b) for b in bs) if bs else (_ for _ in ()).throw(
        TemplateError("template: error calling eq: missing argument for comparison")),
    "ne": lambda a, b: not _eq(a, b),
    "lt": lambda a, b: _cmp("lt", a, b) < 0,
    "le": lambda a, b: _cmp("le", a, b) <= 0,
    "gt": lambda a, b: _cmp("gt", a, b) > 0,
    "ge": lambda a, b: _cmp("ge", a, b) >= 0,
    "len": _length,
    "index": _index,
    "slice": _slice,
    "printf": lambda f, *a: go_printf(go_str(f), *a),
    "print": _go_print,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "html": lambda *a: _html.escape(_go_print(*a), quote=True).replace("&#x27;", "&#39;"),
    "js": lambda *a: _js(_go_print(*a)),
    "urlquery": lambda *a: urllib.parse.quote_plus(_go_print(*a)),
    "json": go_json,
    "currentDate": lambda: datetime.date.today().isoformat(),
    "and": None,  # evaluated lazily
    "or": None,
}


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
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
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
    """The field names a template uses (Ollama's template.Identifiers: fields in actions and in the
    conditions of if/range/with, inside parentheses too; not `$.X` variables)."""
    out: list[str] = []

    def pipe(p: Pipe):
        for c in p.cmds:
            for a in c.args:
                arg(a)

    def arg(a):
        if isinstance(a, Field):
            out.extend(a.idents)
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
