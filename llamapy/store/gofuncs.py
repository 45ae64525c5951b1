"""Go values as text/template prints and compares them, and the template functions (Ollama's set)."""
from __future__ import annotations

import datetime
import html as _html
import json as _json
import math
import re
import urllib.parse
from decimal import Decimal

from .gotemplate_parse import TemplateError

MAX_WIDTH = 1024  # printf width or precision


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
    """A value as {{ . }} prints it (Go's fmt %v). Maps print as JSON, as Ollama's tools and tool-call arguments
    do (their String methods), which are the maps templates print."""
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
    if isinstance(v, dict) or (isinstance(v, (list, tuple)) and any(isinstance(x, dict) for x in v)):
        return go_json(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_go_inner(x) for x in v) + "]"
    return str(v)


def _go_inner(v) -> str:
    return "<nil>" if v is None else go_str(v)


def go_json(v) -> str:
    """Go's json.Marshal: compact, HTML characters escaped (<, >, & as \\u003c ...), U+2028/9 escaped."""
    try:
        s = _json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TemplateError(f"template: error calling json: {e}") from None
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
    "currentDate": lambda *fmt: datetime.date.today().isoformat(),  # Ollama ignores a format argument
    "yesterdayDate": lambda *fmt: (datetime.date.today() - datetime.timedelta(days=1)).isoformat(),
    "and": None,  # evaluated lazily
    "or": None,
}
