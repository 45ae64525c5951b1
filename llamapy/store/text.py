"""Text from a model's files or a hub's answers, made safe to print: control characters shown as escapes."""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character other than newline and tab written as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def one_line(text: str) -> str:
    """`text` for an error message: printable, newlines and tabs escaped too."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")
