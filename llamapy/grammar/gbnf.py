"""GBNF, llama.cpp's grammar syntax: a parser that accepts what llama.cpp's grammar parser accepts, builds the
same rules (repetitions rewritten into generated rules as llama.cpp does), runs its checks (undefined rules, a
missing root, left recursion) plus one more (a rule that can never finish), and writes the rules as a Lark
grammar for the matcher.

In the Lark output, rules that use only characters and no recursion (strings, numbers, whitespace) become
lexemes, which keeps the mask fast; the rest of the grammar is parsed as written. A lexeme is matched
greedily: where a piece of text could end a lexeme or continue it, it continues it. So `root ::= [0-9]+ [0-9]`
rejects "12" (the digits are all taken by `[0-9]+`), which llama.cpp's own matcher accepts; grammars written to
be read left to right (llama.cpp's examples, json-schema-to-grammar's output) are matched exactly.
"""
from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field

from ..errors import LlamapyError

MAX_REPETITIONS = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD
MAX_ELEMENTS = 500_000  # all rules' elements together, repetitions expanded (the matcher's own grammar limit)
MAX_NESTING = 200  # parentheses inside parentheses
MAX_LEXEME = 500  # symbols in one lexeme's regex, its rules written out
MAX_PASSES = 64  # rounds of the grammar analyses (nullable, first and follow sets) before giving up

_NAME = re.compile(r"[a-zA-Z0-9-]+")
_INT = re.compile(r"[0-9]+")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
_SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
_ESCAPES = {"t": 9, "r": 13, "n": 10, "\\": 0x5C, '"': 0x22, "[": 0x5B, "]": 0x5D}


class GrammarError(LlamapyError):
    """A grammar or schema that cannot be used: one line, with the place when there is one."""


# element kinds
CHAR, CHAR_NOT, ANY, REF = "char", "char_not", "any", "ref"


@dataclass
class Element:
    """One symbol of an alternative: a character set (ranges of code points), any character, or a rule."""

    kind: str
    ranges: tuple[tuple[int, int], ...] = ()
    rule: int = -1


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
            elif c == "<" or c == "!":
                self.fail(pos, "token references (<...>) are not supported")
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
    # a rule on a cycle: walk forward inside what is left until a rule comes back
    left = {i for i in range(n) if indeg[i] > 0}
    i = next(iter(left))
    seen: dict[int, int] = {}
    while i not in seen:
        seen[i] = len(seen)
        i = next(j for j in edges[i] if j in left)
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


# -- Lark output -------------------------------------------------------------------------------------------
def _cp(v: int) -> str:
    return f"\\x{{{v:x}}}"


def _lexeme(e: Element) -> str:
    if e.kind == ANY:
        return "/(?s:.)/"
    if e.kind == CHAR and len(e.ranges) == 1 and e.ranges[0][0] == e.ranges[0][1] and 0x20 <= e.ranges[0][0] < 0x7F:
        return json.dumps(chr(e.ranges[0][0]))
    body = "".join(_cp(lo) if lo == hi else f"{_cp(lo)}-{_cp(hi)}" for lo, hi in e.ranges if lo <= hi)
    if e.kind == CHAR_NOT:
        return f"/[^{body}]/" if body else "/(?s:.)/"
    if not body:
        return "/[^\\x{0}-\\x{10ffff}]/"  # matches nothing, as an empty set does in llama.cpp
    return f"/[{body}]/"


def _terminal_rules(g: Grammar) -> set[int]:
    """Rules that can be one lexeme: made of characters and other such rules, without recursion (the
    generated `S*` rules count, as a regex `(S)*`), and never followed by a character that could also
    continue them (a lexeme is matched greedily); root stays a nonterminal."""
    term: set[int] = set()
    rules = [i for i in range(len(g.rules)) if i != g.root and g.rules[i] is not None][::-1]

    def step(i: int) -> bool:
        if i in term:
            return False
        body = [g.star[i]] if i in g.star else g.rules[i]
        if all(e.kind != REF or e.rule in term for alt in body for e in alt):
            term.add(i)
            return True
        return False

    try:
        _fixpoint(step, rules)
        _drop_large_lexemes(g, term)
        if term:
            _drop_greedy_conflicts(g, term)
    except _TooComplex:
        term.clear()  # no answer in time: every character its own lexeme (slower masks, same language)
    return term


def _drop_large_lexemes(g: Grammar, term: set[int]):
    """A lexeme is one regex, with the rules it uses written out: past MAX_LEXEME symbols (`("a"{2000}){2000}`)
    the matcher's lexer would take long to build, so such rules stay nonterminals."""
    size: dict[int, int] = {}
    for r in list(term):
        stack = [(r, False)]
        while stack:  # post-order, without recursion
            i, ready = stack.pop()
            if i in size:
                continue
            body = [g.star[i]] if i in g.star else g.rules[i]
            refs = [e.rule for alt in body for e in alt if e.kind == REF]
            if not ready:
                stack.append((i, True))
                stack.extend((j, False) for j in refs if j not in size)
                continue
            size[i] = sum(len(alt) + 1 for alt in body) + sum(size.get(j, MAX_LEXEME + 1) for j in refs)
            size[i] = min(size[i], MAX_LEXEME + 1)
    term.difference_update([i for i in term if size[i] > MAX_LEXEME])
    while True:
        gone = [i for i in term for alt in ([g.star[i]] if i in g.star else g.rules[i])
                if any(e.kind == REF and e.rule not in term for e in alt)]
        if not gone:
            return
        term.difference_update(gone)


# character sets: tuples of disjoint, sorted (lo, hi) code point ranges
_ALL = ((0, 0x10FFFF),)


def _norm(ranges) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def _charset(e: Element) -> tuple[tuple[int, int], ...]:
    if e.kind == ANY:
        return _ALL
    r = _norm(e.ranges)
    if e.kind == CHAR:
        return r
    out, prev = [], 0
    for lo, hi in r:
        if lo > prev:
            out.append((prev, lo - 1))
        prev = hi + 1
    if prev <= 0x10FFFF:
        out.append((prev, 0x10FFFF))
    return tuple(out)


def _meets(a, b) -> bool:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][1] < b[j][0]:
            i += 1
        elif b[j][1] < a[i][0]:
            j += 1
        else:
            return True
    return False


def _drop_greedy_conflicts(g: Grammar, term: set[int]):
    """Turn back into nonterminals the lexeme rules that some use follows with a character that could also
    extend the lexeme (`num ::= [0-9]+ ws` then "\n", with `ws ::= [ \t\n]*`): a lexer would take it."""
    n = len(g.rules)
    nullable = [False] * n
    first: list[tuple] = [()] * n
    rules = [i for i in range(n) if g.rules[i] is not None]

    def step_first(i: int) -> bool:
        changed = False
        for alt in g.rules[i]:
            f, nul = _seq_first(alt, nullable, first)
            f = _norm(first[i] + f)
            if f != first[i] or (nul and not nullable[i]):
                first[i], nullable[i] = f, nullable[i] or nul
                changed = True
        return changed

    follow: list[tuple] = [()] * n

    def step_follow(i: int) -> bool:
        changed = False
        for alt in g.rules[i]:
            for k, e in enumerate(alt):
                if e.kind != REF:
                    continue
                f, nul = _seq_first(alt[k + 1 :], nullable, first)
                f = _norm(follow[e.rule] + f + (follow[i] if nul else ()))
                if f != follow[e.rule]:
                    follow[e.rule] = f
                    changed = True
        return changed

    _fixpoint(step_first, rules[::-1])
    _fixpoint(step_follow, rules)
    memo: dict[int, tuple] = {}

    def ext(i: int) -> tuple:
        """Characters that can come right after a complete match of rule i and still continue it."""
        if i not in memo:
            memo[i] = ()  # the rules here have no recursion
            alts = [g.star[i]] if i in g.star else g.rules[i] or []
            out: tuple = ()
            for alt in alts:
                out += _seq_ext(alt, nullable, first, ext)
            if i in g.star or nullable[i]:
                out += first[i]
            elif len(alts) > 1:
                for a in alts:  # one alternative complete, another one going on
                    fa, na = _seq_first(a, nullable, first)
                    for b in alts:
                        if b is not a and (na or _meets(fa, _seq_first(b, nullable, first)[0])):
                            out += _seq_chars(b, g)
            memo[i] = _norm(out)
        return memo[i]

    def single(i: int) -> bool:  # every match is one character: such a lexeme never has to choose an end
        if i in g.star or nullable[i]:
            return False
        return all(len(a) == 1 and (a[0].kind != REF or single(a[0].rule)) for a in g.rules[i] or [])

    for _ in range(MAX_PASSES):
        changed = False
        for i, alts in enumerate(g.rules):
            if i in term:
                continue
            for alt in alts or ():
                for k, e in enumerate(alt):
                    if e.kind != REF or e.rule not in term:
                        continue
                    f, nul = _seq_first(alt[k + 1 :], nullable, first)
                    if nul:
                        f = f + follow[i]
                    if _meets(ext(e.rule), _norm(f)):
                        term.discard(e.rule)
                        changed = True
        # a lexeme that can start where another lexeme starts, sharing a first character: a lexer would take
        # the longer (`identifier` over "return"), so it is parsed character by character instead
        ctx, lf = _competitors(g, term, nullable, first)
        for t in term.intersection(ctx):
            if not single(t) and any(k != t and _meets(first[t], cs) for k, cs in ctx[t]):
                term.discard(t)
                changed = True
        # two different lexemes that may start at one place with a common character split the parse in two
        # (`identifier` and "return" both read "r"); past that place the lexemes of each side may meet in ways
        # this analysis does not follow, so a rule that starts such a split keeps no lexemes inside it
        for r, alts in enumerate(g.rules):
            if r in term or alts is None or r not in ctx:
                continue
            own: set = set()
            for alt in alts:
                for e in alt:
                    if e.kind != REF:
                        own.add((-1, _charset(e)))
                        break
                    if e.rule in term:
                        own.add((e.rule, first[e.rule]))
                    if not nullable[e.rule]:
                        break
            others = ctx[r] | lf[r]
            if any(k1 != k2 or c1 != c2 for k1, c1 in own for k2, c2 in others if _meets(c1, c2)):
                inside = _closure(g, r) & term
                if inside:
                    term.difference_update(inside)
                    changed = True
        while True:  # a lexeme made with a rule that is no longer one is no longer one either
            gone = [i for i in term for alt in ([g.star[i]] if i in g.star else g.rules[i])
                    if any(e.kind == REF and e.rule not in term for e in alt)]
            if not gone:
                break
            term.difference_update(gone)
        if not changed:
            return
    raise _TooComplex


def _fixpoint(step, order) -> None:
    """Run step(i) -> changed over the rules in `order` until nothing changes (bounded)."""
    for _ in range(MAX_PASSES):
        changed = False
        for i in order:
            changed |= step(i)
        if not changed:
            return
    raise _TooComplex


class _TooComplex(Exception):
    pass


def _competitors(g: Grammar, term: set[int], nullable, first) -> tuple[dict[int, set], list[set]]:
    """For each rule used by the nonterminal rules: the lexemes that may start at the same place as it, as
    (lexeme rule, or -1 for a single character; its first characters); and each nonterminal's first lexemes."""
    n = len(g.rules)
    nts = [i for i in range(n) if i not in term and g.rules[i] is not None]
    lf: list[set] = [set() for _ in range(n)]  # lexemes that can start a nonterminal rule
    lfol: list[set] = [set() for _ in range(n)]  # lexemes that can follow a rule
    lext: list[set] = [set() for _ in range(n)]  # lexemes that can go on after a complete nonterminal rule
    ctx: list[set] = [set() for _ in range(n)]

    def lf_seq(seq) -> tuple[set, bool]:
        out: set = set()
        for e in seq:
            if e.kind != REF:
                out.add((-1, _charset(e)))
                return out, False
            if e.rule in term:
                out.add((e.rule, first[e.rule]))
            else:
                out |= lf[e.rule]
            if not nullable[e.rule]:
                return out, False
        return out, True

    def lext_seq(seq) -> set:
        out: set = set()
        for e in reversed(seq):
            if e.kind != REF:
                break
            if e.rule not in term:
                out |= lext[e.rule]
            if not nullable[e.rule]:
                break
            out |= lf_seq([e])[0]
        return out

    def grow(target: set, more: set) -> bool:
        k = len(target)
        target |= more
        return len(target) != k

    def step_lf(i):
        return any([grow(lf[i], lf_seq(alt)[0]) for alt in g.rules[i]])

    def step_lext(i):
        return any([grow(lext[i], lext_seq(alt)) for alt in g.rules[i]])

    def step_follow_ctx(i):
        changed = False
        for alt in g.rules[i]:
            for k, e in enumerate(alt):
                if e.kind != REF:
                    continue
                rest, nul = lf_seq(alt[k + 1 :])
                changed |= grow(lfol[e.rule], rest | (lfol[i] if nul else set()))
                here, nul = lf_seq(alt[k:])
                more = here | (lfol[i] if nul else set())
                if lf_seq(alt[:k])[1]:
                    more = more | ctx[i] | lf[i]
                else:
                    more = more | lext_seq(alt[:k])
                changed |= grow(ctx[e.rule], more)
        return changed

    try:
        _fixpoint(step_lf, nts[::-1])
        _fixpoint(step_lext, nts[::-1])
        _fixpoint(step_follow_ctx, nts)
    except _TooComplex:
        return {t: {(-2, _ALL)} for t in range(n)}, lf  # unknown: every lexeme may compete
    return {i: ctx[i] for i in range(n)}, lf


def _closure(g: Grammar, r: int) -> set[int]:
    """The rules that rule r uses, directly or not (r included)."""
    seen = {r}
    todo = [r]
    while todo:
        i = todo.pop()
        for alt in ([g.star[i]] if i in g.star else []) + (g.rules[i] or []):
            for e in alt:
                if e.kind == REF and e.rule not in seen:
                    seen.add(e.rule)
                    todo.append(e.rule)
    return seen


def _seq_first(seq, nullable, first) -> tuple[tuple, bool]:
    out: tuple = ()
    for e in seq:
        if e.kind != REF:
            return out + _charset(e), False
        out += first[e.rule]
        if not nullable[e.rule]:
            return out, False
    return out, True


def _seq_ext(seq, nullable, first, ext) -> tuple:
    """After a complete match of seq: the last non-empty element may go on, or a later (nullable) one start."""
    out: tuple = ()
    for e in reversed(seq):
        if e.kind != REF:
            break
        out += ext(e.rule)
        if not nullable[e.rule]:
            break
        out += first[e.rule]  # matched empty: an element before it ended the match, and this one may start
    return out


def _seq_chars(seq, g: Grammar) -> tuple:
    """Every character that can appear in seq (an over-estimate)."""
    out: tuple = ()
    todo, seen = list(seq), set()
    while todo:
        e = todo.pop()
        if e.kind != REF:
            out += _charset(e)
        elif e.rule not in seen:
            seen.add(e.rule)
            for alt in g.rules[e.rule] or ():
                todo.extend(alt)
    return _norm(out)


def to_lark(g: Grammar) -> str:
    """The rules as an llguidance Lark grammar. Rules without recursion that use only characters become
    lexemes (T<n>), as llguidance's own GBNF converter does; the rest stay nonterminals (r<n>)."""
    try:
        term = _terminal_rules(g)
    except RecursionError:
        raise GrammarError("grammar: rules nested too deep (a chain of thousands of rules)") from None

    def sym(e: Element) -> str:
        if e.kind != REF:
            return _lexeme(e)
        return f"T{e.rule}" if e.rule in term else f"r{e.rule}"

    lines = ["%llguidance {}", f"start: r{g.root}"]
    for i, alts in enumerate(g.rules):
        if alts is None:
            continue
        if i in g.star:  # as `(S)*`, which the parser repeats without the right recursion of `S' ::= S S' |`
            body = "(" + (" ".join(map(sym, g.star[i])) or '""') + ")*"
        else:
            body = " | ".join(" ".join(map(sym, alt)) or '""' for alt in alts)
        lines.append(f"{'T' if i in term else 'r'}{i}: {body}")
    return "\n".join(lines) + "\n"
