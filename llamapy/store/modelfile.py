"""Ollama's Modelfile: FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, MESSAGE and LICENSE, parsed as Ollama parses them.

Instructions are case-insensitive; `#` starts a comment line; a value may be `\"\"\"triple-quoted\"\"\"` (over several
lines, taken as written) or `"quoted"` (with `\\n`, `\\t`, `\\"` and `\\\\` escapes). Bad input raises one
LlamapyError line with the line number and what is allowed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import LlamapyError
from .text import one_line

INSTRUCTIONS = ("from", "parameter", "template", "system", "adapter", "message", "license")
ROLES = ("system", "user", "assistant", "tool")

# Ollama's api.Options, by name: the type each PARAMETER value is read as
PARAMETER_TYPES: dict[str, type] = {
    # runner options
    "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "num_thread": int,
    "low_vram": bool, "f16_kv": bool, "logits_all": bool, "vocab_only": bool, "use_mmap": bool,
    "use_mlock": bool, "numa": bool,
    # prediction options
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float, "min_p": float,
    "tfs_z": float, "typical_p": float, "repeat_last_n": int, "temperature": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "mirostat": int, "mirostat_tau": float,
    "mirostat_eta": float, "penalize_newline": bool, "stop": list,
}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", list: "text"}
_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}  # Go's strconv.ParseBool


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Modelfile:
    """A parsed Modelfile. `from_` is the FROM value as written; `from_path` is it resolved against the
    Modelfile's folder when it reads as a path (None when it reads as a model name)."""
    from_: str | None = None
    from_path: str | None = None
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    parameters: dict[str, object] = field(default_factory=dict)  # stop: list[str]; others one value
    messages: list[Message] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)


def parse_parameter(name: str, value: str) -> object:
    """One PARAMETER value converted to its Ollama type; LlamapyError (without a line number) if it is bad."""
    key = name.lower()
    kind = PARAMETER_TYPES.get(key)
    if kind is None:
        raise LlamapyError(f"unknown parameter '{one_line(name)}' (allowed: {', '.join(sorted(PARAMETER_TYPES))})")
    try:
        if kind is int:
            return int(value, 10)
        if kind is float:
            v = float(value)
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError
            return v
        if kind is bool:
            return _BOOLS[value.lower()]
    except (ValueError, KeyError):
        raise LlamapyError(f"parameter {key}: '{one_line(value)}' is not {_TYPE_WORDS[kind]}") from None
    return value


def _is_windows_abs(p: str) -> bool:
    return bool(re.match(r"^[A-Za-z]:[\\/]", p)) or p.startswith("\\\\")


def _looks_like_path(v: str) -> bool:
    return (v.startswith((".", "/", "~", "\\")) or _is_windows_abs(v) or "\\" in v
            or v.lower().endswith((".gguf", ".bin", ".safetensors")))


def resolve_from(value: str, base_dir: str) -> str | None:
    """The FROM value as a path (relative ones against `base_dir`, `~` expanded, Windows paths kept with
    their backslashes), or None when it names a model instead."""
    if _is_windows_abs(value):
        return value
    expanded = os.path.expanduser(value)
    candidate = expanded if os.path.isabs(expanded) else os.path.join(base_dir, expanded)
    if _looks_like_path(value) or os.path.exists(candidate):
        return os.path.normpath(candidate) if "\\" not in value else candidate
    return None


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unquote(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in _ESCAPES:
            out.append(_ESCAPES[s[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _read_value(text: str, pos: int, lineno: int) -> tuple[str, int, int]:
    """The value starting at `pos` (after the instruction and its spaces): (value, next position, lines used)."""
    if text.startswith('"""', pos):
        end = text.find('"""', pos + 3)
        if end < 0:
            raise LlamapyError(f'line {lineno}: unterminated """ string')
        value = text[pos + 3:end]
        nl = text.find("\n", end + 3)
        rest = text[end + 3: nl if nl >= 0 else len(text)]
        if rest.strip():
            raise LlamapyError(f"line {lineno + value.count(chr(10))}: unexpected text after the closing \"\"\": "
                               f"{one_line(rest.strip())!r}")
        return value, (nl + 1 if nl >= 0 else len(text)), value.count("\n") + 1
    nl = text.find("\n", pos)
    line = text[pos: nl if nl >= 0 else len(text)].rstrip("\r").strip()
    nxt = nl + 1 if nl >= 0 else len(text)
    if line.startswith('"'):
        i = 1
        while i < len(line) and line[i] != '"':
            i += 2 if line[i] == "\\" else 1
        if i >= len(line):
            raise LlamapyError(f'line {lineno}: unterminated " string')
        if line[i + 1:].strip():
            extra = one_line(line[i + 1:].strip())
            raise LlamapyError(f"line {lineno}: unexpected text after the closing \": {extra!r}")
        return _unquote(line[1:i]), nxt, 1
    return line, nxt, 1


def parse(text: str, base_dir: str = ".") -> Modelfile:
    """Parse Modelfile text; relative FROM and ADAPTER paths resolve against `base_dir`."""
    mf = Modelfile()
    pos, lineno = 0, 1
    if text.startswith("\ufeff"):
        pos = 1
    n = len(text)
    while pos < n:
        nl = text.find("\n", pos)
        line_end = nl if nl >= 0 else n
        stripped = text[pos:line_end].strip()
        if not stripped or stripped.startswith("#"):
            pos, lineno = line_end + 1, lineno + 1
            continue
        lead = len(text[pos:line_end]) - len(text[pos:line_end].lstrip())
        start = pos + lead
        m = re.match(r"[^\s]+", text[start:line_end])
        word = m.group(0)
        instr = word.lower()
        if instr not in INSTRUCTIONS:
            raise LlamapyError(f"line {lineno}: unknown instruction '{one_line(word)}' (allowed: "
                               f"{', '.join(i.upper() for i in INSTRUCTIONS)})")
        vpos = start + len(word)
        while vpos < line_end and text[vpos] in " \t":
            vpos += 1
        if instr in ("parameter", "message"):
            # the name/role, then the value
            m2 = re.match(r"[^\s]+", text[vpos:line_end])
            if m2 is None:
                what = "a name and a value" if instr == "parameter" else "a role and its content"
                raise LlamapyError(f"line {lineno}: {instr.upper()} needs {what}")
            key = m2.group(0)
            vpos += len(key)
            while vpos < line_end and text[vpos] in " \t":
                vpos += 1
            value, pos, used = _read_value(text, vpos, lineno)
            if instr == "parameter":
                if value == "":
                    raise LlamapyError(f"line {lineno}: PARAMETER {one_line(key)} needs a value")
                try:
                    v = parse_parameter(key, value)
                except LlamapyError as e:
                    raise LlamapyError(f"line {lineno}: {e}") from None
                if key.lower() == "stop":
                    mf.parameters.setdefault("stop", []).append(v)
                else:
                    mf.parameters[key.lower()] = v
            else:
                role = key.lower()
                if not value and vpos >= line_end:  # `MESSAGE system` and nothing more ("""""" is empty content)
                    raise LlamapyError(f"line {lineno}: MESSAGE {one_line(key)} needs its content")
                if role not in ROLES:
                    raise LlamapyError(f"line {lineno}: MESSAGE role '{one_line(key)}' is not one of "
                                       f"{', '.join(ROLES)}")
                mf.messages.append(Message(role, value))
        else:
            value, pos, used = _read_value(text, vpos, lineno)
            if instr in ("from", "adapter") and not value:
                raise LlamapyError(f"line {lineno}: {instr.upper()} needs a model path or name")
            if instr == "from":
                mf.from_ = value
                mf.from_path = resolve_from(value, base_dir)
            elif instr == "adapter":
                mf.adapters.append(resolve_from(value, base_dir) or value)
            elif instr == "template":
                mf.template = value
            elif instr == "system":
                mf.system = value
            else:
                mf.licenses.append(value)
        lineno += used
    if mf.from_ is None:
        raise LlamapyError("the Modelfile has no FROM line (FROM a GGUF file, a model folder or a model name)")
    return mf


def parse_file(path: str | os.PathLike) -> Modelfile:
    """Read and parse a Modelfile; relative paths in it resolve against its folder."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        # UTF-16 with its byte order mark, as Ollama reads it; else UTF-8
        text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8")
    except FileNotFoundError:
        raise LlamapyError(f"{path}: no such Modelfile") from None
    except UnicodeDecodeError:
        raise LlamapyError(f"{path}: not UTF-8 (or UTF-16 with a byte order mark) text") from None
    except OSError as e:
        raise LlamapyError(f"{path}: can't read: {e.strerror}") from None
    try:
        return parse(text, os.path.dirname(os.path.abspath(path)))
    except LlamapyError as e:
        raise LlamapyError(f"{path}: {e}") from None


def quote(s: str) -> str:
    """A value as Ollama writes it back into a Modelfile: bare when it is one plain line, else quoted."""
    if "\n" in s or s.startswith(" ") or s.endswith(" ") or s.startswith('"') or s == "":
        if '"""' not in s and not s.endswith('"'):
            return f'"""{s}"""'
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def format_parameter_value(v: object) -> str:
    """A parameter value as Go's %#v prints it (what `ollama show --parameters` shows)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)
