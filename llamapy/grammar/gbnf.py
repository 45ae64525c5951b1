"""GBNF, llama.cpp's grammar syntax: a parser that accepts what llama.cpp's grammar parser accepts, builds the
same rules (repetitions rewritten into generated rules as llama.cpp does) and runs its checks (undefined rules,
a missing root, left recursion) plus one more (a rule that can never finish). lark.py writes the rules for the
matcher. Errors are one line with the line and column, as llama.cpp's messages name the place.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from ..errors import LlamapyError

MAX_REPETITIONS = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD
MAX_ELEMENTS = 500_000  # all rules' elements together, repetitions expanded (the matcher's own grammar limit)
MAX_NESTING = 200  # parentheses inside parentheses

_NAME = re.compile(r"[a-zA-Z0-9-]+")
_INT = re.compile(r"[0-9]+")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
_SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
_ESCAPES = {"t": 9, "r": 13, "n": 10, "\\": 0x5C, '"': 0x22, "[": 0x5B, "]": 0x5D}


class GrammarError(LlamapyError):
    """A grammar or schema that cannot be used: one line, with the place when there is one."""


# element kinds
CHAR, CHAR_NOT, ANY, REF = "char", "char_not", "any", "ref"
TOKEN, TOKEN_NOT = "token", "token_not"  # <[id]> or <text> (one token of the model), and !<...>: any other token


@dataclass
class Element:
    """One symbol of an alternative: a character set (ranges of code points), any character, a rule, or a token
    (rule holds its id; text its vocabulary text when the grammar names it so, resolved with the model)."""

    kind: str
    ranges: tuple[tuple[int, int], ...] = ()
    rule: int = -1
    text: str = ""


@dataclass
class Grammar:
    """Parsed GBNF: rules by id, each a list of alternatives, each a list of elements."""

    names: list[str] = field(default_factory=list)  # rule id -> name (generated rules: "name_N")
    rules: list[list[list[Element]] | None] = field(default_factory=list)  # None: referenced, never defined
    root: int = -1
    star: dict[int, list[Element]] = field(default_factory=dict)  # generated `S' ::= S S' |` rules -> S


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.g = Grammar()
        self.ids: dict[str, int] = {}
        self.n_elements = 0

    # -- positions and errors ------------------------------------------------------------------------
    def fail(self, pos: int, what: str):
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        raise GrammarError(f"grammar: line {line}, column {col}: {what}")

    def space(self, pos: int, newline_ok: bool) -> int:
        return (_SPACE_NL if newline_ok else _SPACE).match(self.text, pos).end()

    def at(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    # -- symbols -------------------------------------------------------------------------------------
    def symbol(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            i = self.ids[name] = len(self.g.names)
            self.g.names.append(name)
            self.g.rules.append(None)
        return i

    def generated(self, base: str) -> int:
        i = len(self.g.names)
        self.g.names.append(f"{base}_{i}")
        self.g.rules.append(None)
        return i

    def add_rule(self, i: int, alts: list[list[Element]], pos: int):
        self.n_elements += sum(len(a) + 1 for a in alts)
        if self.n_elements > MAX_ELEMENTS:
            self.fail(pos, f"the grammar is too large (over {MAX_ELEMENTS} symbols once repetitions are expanded)")
        self.g.rules[i] = alts

    # -- the grammar ---------------------------------------------------------------------------------
    def parse(self) -> Grammar:
        pos = self.space(0, True)
        while pos < len(self.text):
            pos = self.rule(pos)
        for alts in self.g.rules:
            for alt in alts or ():
                for e in alt:
                    if e.kind == REF and self.g.rules[e.rule] is None:
                        raise GrammarError(f"grammar: undefined rule identifier '{self.g.names[e.rule]}'")
        root = self.ids.get("root")
        if root is None:
            raise GrammarError('grammar: the grammar does not contain a "root" rule')
        self.g.root = root
        return self.g

    def rule(self, pos: int) -> int:
        m = _NAME.match(self.text, pos)
        if not m:
            self.fail(pos, "expecting a rule name")
        name = m.group()
        pos = self.space(m.end(), False)
        if not self.text.startswith("::=", pos):
            self.fail(pos, "expecting ::=")
        pos = self.space(pos + 3, True)
        rid = self.symbol(name)
        pos = self.alternates(pos, name, rid, nested=False, depth=0)
        c = self.at(pos)
        if c == "\r":
            pos += 2 if self.at(pos + 1) == "\n" else 1
        elif c == "\n":
            pos += 1
        elif c:
            self.fail(pos, "expecting newline or end")
        return self.space(pos, True)

    def alternates(self, pos: int, name: str, rid: int, nested: bool, depth: int) -> int:
        alts: list[list[Element]] = []
        start = pos
        alt: list[Element] = []
        pos = self.sequence(pos, name, alt, nested, depth)
        alts.append(alt)
        while self.at(pos) == "|":
            pos = self.space(pos + 1, True)
            alt = []
            pos = self.sequence(pos, name, alt, nested, depth)
            alts.append(alt)
        self.add_rule(rid, alts, start)
        return pos

    def char(self, pos: int) -> tuple[int, int]:
        """One character (an escape or a code point) at pos: (code point, next position)."""
        c = self.at(pos)
        if c == "\\":
            e = self.at(pos + 1)
            n = {"x": 2, "u": 4, "U": 8}.get(e)
            if n:
                digits = self.text[pos + 2 : pos + 2 + n]
                if len(digits) != n or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    self.fail(pos, f"expecting {n} hex digits after \\{e}")
                v = int(digits, 16)
                if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                    self.fail(pos, f"\\{e}{digits} is not a Unicode code point")
                return v, pos + 2 + n
            if e in _ESCAPES:
                return _ESCAPES[e], pos + 2
            if not e:
                self.fail(pos, "unexpected end of input")
            self.fail(pos, f"unknown escape \\{e}")
        if not c:
            self.fail(pos, "unexpected end of input")
        if 0xD800 <= ord(c) <= 0xDFFF:
            self.fail(pos, "invalid UTF-8 in the grammar")
        return ord(c), pos + 1

    def sequence(self, pos: int, name: str, out: list[Element], nested: bool, depth: int) -> int:
        last_start = len(out)
        text = self.text
        while pos < len(text):
            c = text[pos]
            if c == '"':
                pos += 1
                last_start = len(out)
                while self.at(pos) != '"':
                    if not self.at(pos):
                        self.fail(pos, "unexpected end of input (a literal is not closed)")
                    v, pos = self.char(pos)
                    out.append(Element(CHAR, ((v, v),)))
                    if len(out) + self.n_elements > MAX_ELEMENTS:
                        self.fail(pos, f"the grammar is too large (over {MAX_ELEMENTS} symbols)")
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos += 1
                kind = CHAR
                if self.at(pos) == "^":
                    pos += 1
                    kind = CHAR_NOT
                last_start = len(out)
                ranges = []
                while self.at(pos) != "]":
                    if not self.at(pos):
                        self.fail(pos, "unexpected end of input (a character class is not closed)")
                    lo, pos = self.char(pos)
                    hi = lo
                    if self.at(pos) == "-" and self.at(pos + 1) != "]":
                        if not self.at(pos + 1):
                            self.fail(pos + 1, "unexpected end of input")
                        hi, pos = self.char(pos + 1)
                    ranges.append((lo, hi))
                out.append(Element(kind, tuple(ranges)))
                pos = self.space(pos + 1, nested)
            elif _NAME.match(c):
                m = _NAME.match(text, pos)
                last_start = len(out)
                out.append(Element(REF, rule=self.symbol(m.group())))
                pos = self.space(m.end(), nested)
            elif c == "(":
                if depth >= MAX_NESTING:
                    self.fail(pos, f"parentheses nested deeper than {MAX_NESTING}")
                pos = self.space(pos + 1, True)
                sub = self.generated(name)
                pos = self.alternates(pos, name, sub, nested=True, depth=depth + 1)
                last_start = len(out)
                out.append(Element(REF, rule=sub))
                if self.at(pos) != ")":
                    self.fail(pos, "expecting ')'")
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last_start = len(out)
                out.append(Element(ANY))
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                lo, hi = {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[c]
                self.repeat(out, last_start, lo, hi, name, pos)
                pos = self.space(pos + 1, nested)
            elif c == "{":
                brace = pos
                pos = self.space(pos + 1, nested)
                m = _INT.match(text, pos)
                if not m:
                    self.fail(pos, "expecting an int")
                lo = int(m.group())
                pos = self.space(m.end(), nested)
                if self.at(pos) == "}":
                    hi = lo
                    pos = self.space(pos + 1, nested)
                elif self.at(pos) == ",":
                    pos = self.space(pos + 1, nested)
                    hi = -1
                    m = _INT.match(text, pos)
                    if m:
                        hi = int(m.group())
                        pos = self.space(m.end(), nested)
                    if self.at(pos) != "}":
                        self.fail(pos, "expecting '}'")
                    pos = self.space(pos + 1, nested)
                else:
                    self.fail(pos, "expecting ','")
                if max(lo, hi) > MAX_REPETITIONS:
                    self.fail(brace, f"more than {MAX_REPETITIONS} repetitions (llama.cpp's limit)")
                if hi != -1 and hi < lo:
                    self.fail(brace, f"the repetition {{{lo},{hi}}} has its maximum below its minimum")
                self.repeat(out, last_start, lo, hi, name, brace)
            elif c == "<" or (c == "!" and self.at(pos + 1) == "<"):
                last_start = len(out)
                kind = TOKEN_NOT if c == "!" else TOKEN
                start = pos + (c == "!")
                end = text.find(">", start)
                if end < 0:
                    self.fail(start, "expecting '>'")
                inner = text[start + 1 : end]
                if inner.startswith("[") and inner.endswith("]"):
                    if not inner[1:-1].isdigit() or not inner[1:-1].isascii():
                        self.fail(start, "expecting a token id in <[...]>")
                    out.append(Element(kind, rule=int(inner[1:-1])))
                else:
                    out.append(Element(kind, text=text[start : end + 1]))
                pos = self.space(end + 1, nested)
            else:
                break
        return pos

    def repeat(self, out: list[Element], last_start: int, lo: int, hi: int, name: str, pos: int):
        """llama.cpp's rewrite: S{m,n} -> S (m times) S'(n-m), S'(k) ::= S S'(k-1) | ; S{m,} -> S (m times) S',
        S' ::= S S' | ."""
        if last_start == len(out):
            self.fail(pos, "expecting an item before */+/?/{")
        prev = out[last_start:]
        self.n_elements += len(prev) * max(lo, 1)
        if self.n_elements > MAX_ELEMENTS:
            self.fail(pos, f"the grammar is too large (over {MAX_ELEMENTS} symbols once repetitions are expanded)")
        if lo == 0:
            del out[last_start:]
        else:
            for _ in range(1, lo):
                out.extend(prev)
        n_opt = 1 if hi < 0 else hi - lo
        last_rec = -1
        for i in range(n_opt):
            rec = self.generated(name)
            alt = list(prev)
            if i > 0 or hi < 0:
                alt.append(Element(REF, rule=rec if hi < 0 else last_rec))
            self.add_rule(rec, [alt, []], pos)
            if hi < 0:
                self.g.star[rec] = prev
            last_rec = rec
        if n_opt > 0:
            out.append(Element(REF, rule=last_rec))


def parse(text: str) -> Grammar:
    """Parse GBNF text and run llama.cpp's checks plus the can-never-finish check; GrammarError when it fails."""
    if not isinstance(text, str):
        raise GrammarError("grammar: the grammar must be text")
    if "\x00" in text:
        raise GrammarError(f"grammar: line {text.count(chr(10), 0, text.index(chr(0))) + 1}: a NUL character")
    g = _Parser(text).parse()
    _check_left_recursion(g)
    _check_productive(g)
    return g


def _check_left_recursion(g: Grammar):
    """llama.cpp's check: a rule that can reach itself through the leftmost symbols of its alternatives
    (skipping rules that have an empty alternative) is refused."""
    n = len(g.rules)
    empty = [any(len(a) == 0 for a in alts or ()) for alts in g.rules]
    edges: list[set[int]] = [set() for _ in range(n)]
    for i, alts in enumerate(g.rules):
        for alt in alts or ():
            for e in alt:
                if e.kind != REF:
                    break
                edges[i].add(e.rule)
                if not empty[e.rule]:
                    break
    indeg = [0] * n
    for i in range(n):
        for j in edges[i]:
            indeg[j] += 1
    todo = deque(i for i in range(n) if indeg[i] == 0)
    done = 0
    while todo:
        i = todo.popleft()
        done += 1
        for j in edges[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                todo.append(j)
    if done == n:
        return
    # a rule on a cycle: each rule left has a rule left that leads to it; walking back must come round
    left = {i for i in range(n) if indeg[i] > 0}
    back: dict[int, int] = {j: i for i in left for j in edges[i] if j in left}
    i = min(left)
    seen: set[int] = set()
    while i not in seen:
        seen.add(i)
        i = back[i]
    raise GrammarError(f"grammar: left recursion in rule '{_base(g.names[i])}' (llama.cpp refuses left recursion)")


def _check_productive(g: Grammar):
    """Every rule reachable from root must be able to finish: one alternative made only of characters and
    rules that can finish (`x ::= "a" x` never ends)."""
    n = len(g.rules)
    users: list[list[int]] = [[] for _ in range(n)]  # rule -> alternatives (indexes) that mention it
    owner: list[int] = []  # alternative -> its rule
    need: list[int] = []  # alternative -> rules in it not yet known to finish
    productive = [False] * n
    todo: deque[int] = deque()
    for i, alts in enumerate(g.rules):
        for alt in alts or ():
            refs = {e.rule for e in alt if e.kind == REF}
            for r in refs:
                users[r].append(len(owner))
            owner.append(i)
            need.append(len(refs))
            if not refs and not productive[i]:
                productive[i] = True
                todo.append(i)
    while todo:
        r = todo.popleft()
        for a in users[r]:
            need[a] -= 1
            if need[a] == 0 and not productive[owner[a]]:
                productive[owner[a]] = True
                todo.append(owner[a])
    seen = {g.root}
    todo = deque([g.root])
    dead = []
    while todo:
        i = todo.popleft()
        if not productive[i]:
            dead.append(i)
        for alt in g.rules[i] or ():
            for e in alt:
                if e.kind == REF and e.rule not in seen:
                    seen.add(e.rule)
                    todo.append(e.rule)
    if dead:  # name the deepest: the others fail through it
        raise GrammarError(f"grammar: rule '{_base(g.names[dead[-1]])}' can never match (each of its "
                           "alternatives needs itself again without end)")


def _base(name: str) -> str:
    """The user's rule name of a generated rule ("value_12" -> "value")."""
    return re.sub(r"(_[0-9]+)+$", "", name) or name
