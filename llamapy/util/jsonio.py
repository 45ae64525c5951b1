"""JSON from files, with nesting bounded: `[[[[...]]]]` 100,000 deep is a ValueError, not a RecursionError."""
from __future__ import annotations

import json
import os
from typing import Any

from ..errors import LlamapyError


def load_json_bounded(text: str | bytes, what: str | os.PathLike | None = None) -> Any:
    """json.loads(text); JSON nested deeper than Python's recursion limit is a ValueError like any other
    malformed JSON (so a caller's `except ValueError` names the file). With `what`, any malformed JSON is
    a LlamapyError naming it."""
    try:
        try:
            return json.loads(text)
        except RecursionError:
            raise ValueError("nested too deeply") from None
    except ValueError as e:
        if what is None:
            raise
        raise LlamapyError(f"{os.fspath(what)}: not valid JSON ({e})") from None
