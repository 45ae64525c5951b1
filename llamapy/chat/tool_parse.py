"""The model's text as content and tool calls, in each format of tool_calls.py, whole or as it streams.

One tolerant scanner reads the text so far (a JSON value may be cut anywhere); each format says where its
calls are. While streaming, the content and each call's arguments only grow, so the deltas are the
differences from what was sent; a call's arguments are the model's own JSON text (fragments concatenate to
exactly the final `arguments`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .tool_calls import ParsedMessage, ToolCall, new_call_id

WS = " \t\r\n"


class _Malformed(Exception):
    pass


def _ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in WS:
        i += 1
    return i


def _string_end(s: str, i: int) -> int | None:
    j = i + 1
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def _value_end(s: str, i: int, final: bool) -> int | None:
    """Where the JSON value starting at s[i] ends; None when the text stops inside it."""
    c = s[i]
    if c == '"':
        return _string_end(s, i)
    if c in "{[":
        depth, j = 0, i
        while j < len(s):
            c = s[j]
            if c == '"':
                e = _string_end(s, j)
                if e is None:
                    return None
                j = e
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    j = i
    while j < len(s) and s[j] not in ",}] \t\r\n":
        j += 1
    if j == i:
        raise _Malformed
    return j if j < len(s) or final else None


def _partial_string(s: str, start: int, end: int | None) -> str:
    """The text of a JSON string, cut before an escape the text has not finished."""
    body = s[start + 1:end - 1] if end is not None else s[start + 1:]
    if end is None:
        k = body.rfind("\\")
        if k >= 0:
            tail = body[k:]
            n_bs = len(body[:k + 1]) - len(body[:k + 1].rstrip("\\"))
            if n_bs % 2 == 1 and (len(tail) < 2 or (tail[1] == "u" and len(tail) < 6)):
                body = body[:k]
    try:
        return str(json.loads('"' + body + '"'))
    except json.JSONDecodeError:
        raise _Malformed from None


def _object(s: str, i: int, final: bool) -> tuple[dict[str, tuple[int, int | None]], int | None]:
    """The fields of the object at s[i] ('{') as name -> (start, end or None), and the object's end."""
    fields: dict[str, tuple[int, int | None]] = {}
    j = _ws(s, i + 1)
    if j < len(s) and s[j] == "}":
        return fields, j + 1
    while j < len(s):
        if s[j] != '"':
            raise _Malformed
        ke = _string_end(s, j)
        if ke is None:
            return fields, None
        key = json.loads(s[j:ke])
        j = _ws(s, ke)
        if j >= len(s):
            return fields, None
        if s[j] != ":":
            raise _Malformed
        j = _ws(s, j + 1)
        if j >= len(s):
            return fields, None
        ve = _value_end(s, j, final)
        fields[key] = (j, ve)
        if ve is None:
            return fields, None
        j = _ws(s, ve)
        if j >= len(s):
            return fields, None
        if s[j] == ",":
            j = _ws(s, j + 1)
            continue
        if s[j] == "}":
            return fields, j + 1
        raise _Malformed
    return fields, None


@dataclass
class _Call:
    name: str | None
    args: str  # the arguments' JSON text so far
    done: bool
    id: str = ""


def _call(s: str, i: int, final: bool, args_keys: tuple[str, ...] = ("arguments",)) -> tuple[_Call, int | None]:
    fields, end = _object(s, i, final)
    name = None
    if "name" in fields and fields["name"][1] is not None:
        start, stop = fields["name"]
        name = json.loads(s[start:stop])
        if not isinstance(name, str):
            raise _Malformed
    args, args_done = "", False
    key = next((k for k in args_keys if k in fields), None)
    if key is not None:
        start, stop = fields[key]
        if s[start] == '"':  # arguments given as a JSON string (as OpenAI sends them)
            args = _partial_string(s, start, stop)
        else:
            args = s[start:stop] if stop is not None else s[start:]
        args_done = stop is not None
    cid = ""
    if "id" in fields and fields["id"][1] is not None:
        v = json.loads(s[fields["id"][0]:fields["id"][1]])
        cid = v if isinstance(v, str) else ""
    if end is not None and (name is None or key is None):
        raise _Malformed
    return _Call(name, args, args_done and end is not None, cid), end


def _held(text: str, marker: str) -> str:
    """text without a tail that could be the start of marker, nor trailing whitespace (the content before a
    call drops it): what streaming may send for now."""
    text = text.rstrip(WS)
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return text[:-k].rstrip(WS)
    return text


def _hermes(s: str, final: bool) -> tuple[str, list[_Call]]:
    k = s.find("<tool_call>")
    if k < 0:
        return (s if final else _held(s, "<tool_call>")), []
    content, calls, j = s[:k].rstrip(WS), [], k
    while True:
        j = _ws(s, j + len("<tool_call>"))
        if j >= len(s):
            return content, calls
        if s[j] != "{":
            raise _Malformed
        c, end = _call(s, j, final)
        calls.append(c)
        if end is None:
            return content, calls
        j = _ws(s, end)
        rest = s[j:]
        if not rest.startswith("</tool_call>"):
            if "</tool_call>".startswith(rest) and not final:
                return content, calls
            raise _Malformed
        j = _ws(s, j + len("</tool_call>"))
        rest = s[j:]
        if not rest:
            return content, calls
        if not rest.startswith("<tool_call>"):
            if "<tool_call>".startswith(rest) and not final:
                return content, calls
            raise _Malformed


def _json_calls(s: str, j: int, final: bool, keys: tuple[str, ...]) -> list[_Call]:
    """Call objects from s[j], separated by whitespace, ',' or ';' (Llama 3.x)."""
    calls = []
    while j < len(s):
        if s[j] != "{":
            raise _Malformed
        c, end = _call(s, j, final, keys)
        calls.append(c)
        if end is None:
            break
        j = _ws(s, end)
        while j < len(s) and s[j] in ",;":
            j = _ws(s, j + 1)
    return calls


def _llama3(s: str, final: bool) -> tuple[str, list[_Call]]:
    j = _ws(s, 0)
    rest = s[j:]
    tag = "<|python_tag|>"
    if rest.startswith(tag):
        j = _ws(s, j + len(tag))
        if j < len(s) and s[j] != "{":  # a built-in tool: name.call(arg=value)
            body = s[j:].rstrip(WS)
            if not final:
                return "", []
            name, _, call = body.partition(".call(")
            if not call.endswith(")") or "=" not in call:
                raise _Malformed
            arg, _, value = call[:-1].partition("=")
            return "", [_Call(name.strip(), json.dumps({arg.strip(): json.loads(value)}, ensure_ascii=False), True)]
        return "", _json_calls(s, j, final, ("parameters", "arguments"))
    if not final and (not rest or tag.startswith(rest)):
        return "", []
    if not rest.startswith("{"):
        return s, []
    try:
        calls = _json_calls(s, j, final, ("parameters", "arguments"))
    except _Malformed:
        return s, []
    if calls and calls[0].name is None and not final:
        return "", calls
    return "", calls


def _mistral(s: str, final: bool) -> tuple[str, list[_Call]]:
    marker = "[TOOL_CALLS]"
    k = s.find(marker)
    if k < 0:
        return (s if final else _held(s, marker)), []
    content, calls = s[:k].rstrip(WS), []
    j = _ws(s, k + len(marker))
    if j >= len(s):
        return content, calls
    if s[j] != "[":
        raise _Malformed
    j = _ws(s, j + 1)
    while j < len(s) and s[j] != "]":
        c, end = _call(s, j, final)
        calls.append(c)
        if end is None:
            break
        j = _ws(s, end)
        if j < len(s) and s[j] == ",":
            j = _ws(s, j + 1)
    return content, calls


def _generic(s: str, final: bool) -> tuple[str, list[_Call]]:
    j = _ws(s, 0)
    if j >= len(s):
        return "", []
    if s[j] != "{":
        return (s if final else ""), []
    fields, end = _object(s, j, final)
    if "tool_call" in fields:
        start, _ = fields["tool_call"]
        return "", [_call(s, start, final)[0]]
    if "tool_calls" in fields:
        start, _ = fields["tool_calls"]
        if s[start] != "[":
            raise _Malformed
        return "", _mistral("[TOOL_CALLS]" + s[start:], final)[1]
    if "response" in fields:
        start, stop = fields["response"]
        if s[start] == '"':
            return _partial_string(s, start, stop), []
        return (s[start:stop] if stop is not None else ""), []
    if end is not None:
        raise _Malformed
    return "", []


PARSERS = {"hermes": _hermes, "llama3": _llama3, "llama3_builtin": _llama3, "mistral": _mistral,
           "generic": _generic}


def _parse(text: str, fmt: str, final: bool) -> tuple[str, list[_Call]]:
    if fmt == "none":
        return text, []
    try:
        return PARSERS[fmt](text, final)
    except (_Malformed, json.JSONDecodeError, IndexError):
        if final:
            return text, []  # not a call after all (as llama.cpp): the text is the answer
        raise


def parse(text: str, fmt: str) -> ParsedMessage:
    """The whole answer as content and tool calls (each with a new id unless the model wrote one). Text that
    does not parse as the format's calls is the content, with no calls."""
    content, calls = _parse(text, fmt, True)
    if any(c.name is None or not c.done for c in calls):
        return ParsedMessage(text, [])
    return ParsedMessage(content, [ToolCall(c.name or "", c.args, c.id or new_call_id()) for c in calls])


class StreamParser:
    """Feed the answer's text as it comes; get OpenAI deltas: {"content": ...} and {"tool_calls": [...]}
    (a call's first delta has its index, id, type and name; later ones argument fragments)."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self.text = ""
        self._content = ""
        self._ids: list[str] = []
        self._args: list[str] = []
        self._broken = False

    def _deltas(self, content: str, calls: list[_Call]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if content.startswith(self._content) and len(content) > len(self._content):
            out.append({"content": content[len(self._content):]})
            self._content = content
        for k, c in enumerate(calls):
            if c.name is None:
                break
            if k >= len(self._ids):
                self._ids.append(c.id or new_call_id())
                self._args.append("")
                out.append({"tool_calls": [{"index": k, "id": self._ids[k], "type": "function",
                                            "function": {"name": c.name, "arguments": ""}}]})
            if c.args.startswith(self._args[k]) and len(c.args) > len(self._args[k]):
                out.append({"tool_calls": [{"index": k, "function": {"arguments": c.args[len(self._args[k]):]}}]})
                self._args[k] = c.args
        return out

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self.text += piece
        if self._broken:
            return []
        try:
            content, calls = _parse(self.text, self.fmt, False)
        except (_Malformed, json.JSONDecodeError, IndexError):
            self._broken = True  # not the format: the rest comes as content at the end
            return []
        return self._deltas(content, calls)

    def finish(self) -> tuple[list[dict[str, Any]], ParsedMessage]:
        """The last deltas and the whole message (its call ids are the streamed ones)."""
        msg = parse(self.text, self.fmt)
        for k, c in enumerate(msg.tool_calls):
            if k < len(self._ids):
                c.id = self._ids[k]
        calls = [_Call(c.name, c.arguments, True, c.id) for c in msg.tool_calls]
        if not msg.tool_calls and self._ids:  # calls were streamed but the whole does not parse: its text
            rest = msg.content[len(self._content):] if msg.content.startswith(self._content) else msg.content
            return ([{"content": rest}] if rest else []), msg
        return self._deltas(msg.content, calls), msg
