"""Text from a model's files or a hub's answers, made safe to print (through util.safe_text, which every
command uses): control, bidi and surrogate characters shown as escapes."""
from __future__ import annotations

from ..util import safe_text


def printable(text: str) -> str:
    """`text` with every unsafe character other than newline and tab escaped (a template or system prompt
    keeps its lines)."""
    return safe_text.printable(text, keep_newlines=True)


def one_line(text: str) -> str:
    """`text` for an error message: newlines and tabs escaped too."""
    return safe_text.printable(text).replace("\\x0a", "\\n").replace("\\x09", "\\t")
