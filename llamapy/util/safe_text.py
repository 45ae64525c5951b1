"""Text from a file or a request, made safe to show: no terminal control, no markup, bounded length.

A GGUF key, a tensor name, a file name or a chat template's output is data. Printed raw, ESC sequences
clear the screen or set the window title, C1 controls and bidi overrides reorder or hide what is shown,
and in Rich `[...]` is markup (`[/bold]` even raises MarkupError). `printable` shows every such
character as a Python-style escape (`\\x1b`, `\\u202e`) and cuts long text with an ellipsis; `markup_safe`
also escapes Rich markup; `rich_text` gives a Rich Text that is never parsed as markup.
"""
from __future__ import annotations

ELLIPSIS = "\u2026"

# C0 controls, DEL and C1 controls; bidi embeddings, overrides, isolates and marks; line/paragraph
# separators; lone surrogates (not text: they can't be encoded for the terminal at all)
_UNSAFE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
           *range(0x2066, 0x206A), 0x2028, 0x2029, *range(0xD800, 0xE000)]


def _escape(c: int) -> str:
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


_TABLE = {c: _escape(c) for c in _UNSAFE}
_TABLE_KEEP_LINES = {c: e for c, e in _TABLE.items() if c not in (0x0A, 0x09)}


def printable(s: object, limit: int | None = None, keep_newlines: bool = False) -> str:
    """`s` as text safe for a terminal: control, bidi and surrogate characters escaped, and at most
    `limit` characters (cut with an ellipsis). keep_newlines: newlines and tabs stay as they are."""
    text = s if isinstance(s, str) else str(s)
    if limit is not None and len(text) > limit:  # cut before escaping: the escapes of a huge text are huger
        text = text[: limit + 1]
    out = text.translate(_TABLE_KEEP_LINES if keep_newlines else _TABLE)
    if limit is not None and len(out) > limit:
        out = out[: max(limit - 1, 0)] + ELLIPSIS
    return out


_JSON_TABLE = {c: f"\\u{c:04x}" for c in _UNSAFE if c >= 0x7F}  # JSON escapes C0 itself


def json_escape_unsafe(js: str) -> str:
    """JSON text (from json.dumps(ensure_ascii=False)) with DEL, C1, bidi and surrogate characters written
    as \\u escapes: the same JSON value, safe to print."""
    return js.translate(_JSON_TABLE)


def markup_safe(s: object, limit: int | None = None) -> str:
    """printable(s), with Rich markup escaped: for a string that goes into console.print()."""
    from rich.markup import escape

    return escape(printable(s, limit))


def rich_text(s: object, limit: int | None = None):
    """printable(s) as a Rich Text (never parsed as markup): for a table cell."""
    from rich.text import Text

    return Text(printable(s, limit))
