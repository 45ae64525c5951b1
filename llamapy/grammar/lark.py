"""GBNF rules (gbnf.Grammar) as an llguidance Lark grammar, with as many lexemes as keep llama.cpp's language.

Rules that use only characters and no recursion (strings, numbers, whitespace) could each be one lexeme, which
keeps the mask fast; but a lexeme is matched greedily: where text could end it or continue it, it continues.
So a rule becomes a lexeme only where that cannot change what the grammar accepts: nothing that may follow it
could also continue it (`num ::= [0-9]+ ws` before "\n" with `ws ::= [ \t\n]*` stays a rule: what may extend
a lexeme comes from its automaton), no other lexeme that may start at the same place shares its first
character (`identifier` beside "return"), it is not inside or after a rule whose alternatives split the parse
in two at their first character, and its regex stays small. When unsure, characters stay single lexemes: slower masks,
the same language. The tests hold the result to the one-lexeme-per-character grammar on tricky and random
grammars.
"""
from __future__ import annotations

import json

from .gbnf import ANY, CHAR, CHAR_NOT, REF, TOKEN, TOKEN_NOT, Element, Grammar, GrammarError

MAX_LEXEME = 500  # symbols in one lexeme's regex, its rules written out
MAX_DFA = 2000  # automaton states explored to find what may extend a lexeme
MAX_RULES = 20_000  # the matcher numbers its symbols in 16 bits, lexemes and helper symbols included
MAX_WORK = 5_000_000  # steps of the split analysis before giving up
MAX_PASSES = 64  # rounds of the grammar analyses (nullable, first and follow sets) before giving up


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
        if all((e.kind != REF or e.rule in term) and e.kind not in _TOKENS for alt in body for e in alt):
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


_TOKENS = (TOKEN, TOKEN_NOT)

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
    if e.kind in (ANY, TOKEN, TOKEN_NOT):  # a token may start with anything
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
    occ: list[list] = [[] for _ in range(n)]  # rule -> where it is used: (rule, alternative, position)
    for i, alts in enumerate(g.rules):
        for alt in alts or ():
            for k, e in enumerate(alt):
                if e.kind == REF:
                    occ[e.rule].append((i, alt, k))
    budget = [MAX_WORK]
    memo: dict[int, tuple] = {}

    def ext(i: int) -> tuple:
        if i not in memo:
            memo[i] = _extensions(g, i)
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
            if not single(t) and any(k != t and _meets(first[t], cs) for k, cs, _ in ctx[t]):
                term.discard(t)
                changed = True
        # two different lexemes that may start at one place with a common character split the parse in two
        # (`identifier` and "return" both read "r"); past that place the lexemes of each side may meet in ways
        # this analysis does not follow, so a rule that starts such a split keeps no lexemes inside it
        for r, alts in enumerate(g.rules):
            if r in term or alts is None or r not in ctx:
                continue
            own: set = set()
            for j, alt in enumerate(alts):
                for e in alt:
                    if e.kind != REF:
                        own.add((-1, _charset(e), (r, j)))
                        break
                    if e.rule in term:
                        own.add((e.rule, first[e.rule], (r, j)))
                    if not nullable[e.rule]:
                        break
            # entries differ by the place they are written in too: the same "b" in two alternatives splits
            if any(a != b for a in own for b in ctx[r] | lf[r] | own if _meets(a[1], b[1])):
                inside = _after(g, r, nullable, occ, budget) & term
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


def _extensions(g: Grammar, r: int) -> tuple:
    """The characters that can come right after a complete match of lexeme rule r and still lead to a longer
    match: exactly, from the rule's automaton (an NFA, determinized as far as MAX_DFA states; past that, every
    character, which keeps the rule from being a lexeme where anything follows it)."""
    eps: list[list[int]] = []
    edges: list[list[tuple]] = []

    def new() -> int:
        eps.append([])
        edges.append([])
        return len(eps) - 1

    def seq(elements) -> tuple[int, int]:
        s = cur = new()
        for e in elements:
            if e.kind == REF:
                a, b = rule(e.rule)
                eps[cur].append(a)
                cur = b
            else:
                nxt = new()
                edges[cur].append((_charset(e), nxt))
                cur = nxt
        return s, cur

    def rule(i: int) -> tuple[int, int]:
        s, e = new(), new()
        if i in g.star:
            a, b = seq(g.star[i])
            eps[s] += [a, e]
            eps[b] += [a, e]
        else:
            for alt in g.rules[i]:
                a, b = seq(alt)
                eps[s].append(a)
                eps[b].append(e)
        return s, e

    start, final = rule(r)
    points = sorted({p for es in edges for cs, _ in es for lo, hi in cs for p in (lo, hi + 1)})
    classes = [(lo, hi - 1) for lo, hi in zip(points, points[1:])]

    def closure(states) -> frozenset:
        seen, todo = set(states), list(states)
        while todo:
            for t in eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    out: list = []
    first = closure([start])
    seen_sets, todo = {first}, [first]
    while todo:
        if len(seen_sets) > MAX_DFA:
            return _ALL
        S = todo.pop()
        for k in classes:
            nxt = [t for q in S for cs, t in edges[q] if _meets(cs, (k,))]
            if not nxt:
                continue
            if final in S:
                out.append(k)
            T = closure(nxt)
            if T not in seen_sets:
                seen_sets.add(T)
                todo.append(T)
    return _norm(out)


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
    (lexeme rule, or -1 for a single character; its first characters; the (rule, alternative) it is written in);
    and each nonterminal's first lexemes."""
    n = len(g.rules)
    nts = [i for i in range(n) if i not in term and g.rules[i] is not None]
    lf: list[set] = [set() for _ in range(n)]  # lexemes that can start a nonterminal rule
    lfol: list[set] = [set() for _ in range(n)]  # lexemes that can follow a rule
    lext: list[set] = [set() for _ in range(n)]  # lexemes that can go on after a complete nonterminal rule
    ctx: list[set] = [set() for _ in range(n)]

    def lf_seq(seq, owner) -> tuple[set, bool]:
        out: set = set()
        for e in seq:
            if e.kind != REF:
                out.add((-1, _charset(e), owner))
                return out, False
            if e.rule in term:
                out.add((e.rule, first[e.rule], owner))
            else:
                out |= lf[e.rule]
            if not nullable[e.rule]:
                return out, False
        return out, True

    def lext_seq(seq, owner) -> set:
        out: set = set()
        for e in reversed(seq):
            if e.kind != REF:
                break
            if e.rule not in term:
                out |= lext[e.rule]
            if not nullable[e.rule]:
                break
            out |= lf_seq([e], owner)[0]
        return out

    def grow(target: set, more: set) -> bool:
        k = len(target)
        target |= more
        return len(target) != k

    def step_lf(i):
        return any([grow(lf[i], lf_seq(alt, (i, j))[0]) for j, alt in enumerate(g.rules[i])])

    def step_lext(i):
        return any([grow(lext[i], lext_seq(alt, (i, j))) for j, alt in enumerate(g.rules[i])])

    def step_follow_ctx(i):
        changed = False
        for j, alt in enumerate(g.rules[i]):
            for k, e in enumerate(alt):
                if e.kind != REF:
                    continue
                rest, nul = lf_seq(alt[k + 1 :], (i, j))
                changed |= grow(lfol[e.rule], rest | (lfol[i] if nul else set()))
                here, nul = lf_seq(alt[k:], (i, j))
                more = here | (lfol[i] if nul else set())
                if lf_seq(alt[:k], (i, j))[1]:
                    more = more | ctx[i] | lf[i]
                else:
                    more = more | lext_seq(alt[:k], (i, j))
                changed |= grow(ctx[e.rule], more)
        return changed

    try:
        _fixpoint(step_lf, nts[::-1])
        _fixpoint(step_lext, nts[::-1])
        _fixpoint(step_follow_ctx, nts)
    except _TooComplex:
        return {t: {(-2, _ALL, None)} for t in range(n)}, lf  # unknown: every lexeme may compete
    return {i: ctx[i] for i in range(n)}, lf


def _after(g: Grammar, r: int, nullable, occ, budget: list[int]) -> set[int]:
    """The rules used inside rule r or after it: a split at r's start may run on past r's end."""
    roots: set[int] = set()
    seen = {r}
    todo = [r]
    while todo:
        x = todo.pop()
        roots.add(x)
        for i, alt, k in occ[x]:
            rest = alt[k + 1 :]
            budget[0] -= len(rest) + 1
            roots.update(f.rule for f in rest if f.kind == REF)
            if all(f.kind == REF and nullable[f.rule] for f in rest) and i not in seen:
                seen.add(i)
                todo.append(i)
    out = _closure(g, roots)
    budget[0] -= len(out)
    if budget[0] < 0:
        raise _TooComplex
    return out


def _closure(g: Grammar, roots) -> set[int]:
    """The rules that the given rules use, directly or not (themselves included)."""
    seen = set(roots)
    todo = list(roots)
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


def to_lark(g: Grammar, lexemes: bool = True, token_id=None) -> str:
    """The rules as an llguidance Lark grammar. Rules that can safely be lexemes become lexemes (T<n>); the rest
    stay nonterminals (r<n>). lexemes=False makes every character its own lexeme: llama.cpp's language with no
    analysis at all (the slow reference the tests compare the analysis with). token_id(text) gives the id of a
    token the grammar names by its text (<think>), or None."""
    n_rules = sum(alts is not None for alts in g.rules)
    if n_rules > MAX_RULES:
        raise GrammarError(f"grammar: {n_rules} rules once repetitions are rewritten (the matcher takes {MAX_RULES})")
    try:
        term = _terminal_rules(g) if lexemes else set()
    except RecursionError:
        raise GrammarError("grammar: rules nested too deep (a chain of thousands of rules)") from None

    def sym(e: Element) -> str:
        if e.kind in _TOKENS:
            tid = e.rule
            if e.text:
                tid = token_id(e.text) if token_id else None
                if tid is None:
                    raise GrammarError(f"grammar: {e.text} is not one token of this model")
            return f"<[^{tid}]>" if e.kind == TOKEN_NOT else f"<[{tid}]>"
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
