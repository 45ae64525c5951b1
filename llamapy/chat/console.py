"""The interactive session's terminal: llama-cli's colors, UTF-8 output of token bytes, and its line reading
(llama.cpp's console::readline_simple), with Ctrl-C at the prompt as `Quit`."""
from __future__ import annotations

import codecs
import sys
from typing import TextIO

COLORS = {
    "prompt": "\x1b[33m",
    "user_input": "\x1b[1m\x1b[32m",
    "error": "\x1b[1m\x1b[31m",
    "reset": "\x1b[0m",
}


class Quit(Exception):
    """Ctrl-C at the prompt (or twice): leave the loop, print the summary."""


class Console:
    """stdout/stdin with llama-cli's colors and line reading (llama.cpp's console::readline_simple)."""

    def __init__(self, out: TextIO, inp: TextIO, err: TextIO, color: bool):
        self.out, self.inp, self.err = out, inp, err
        for s in (out, inp, err):  # Chinese (any UTF-8) in and out, whatever the locale says
            reconf = getattr(s, "reconfigure", None)
            if reconf is not None and getattr(s, "encoding", "utf-8").lower().replace("-", "") != "utf8":
                try:
                    reconf(encoding="utf-8", errors="replace")
                except (ValueError, OSError):
                    pass
        self.color = color and isatty(out)
        self.tty_in = isatty(inp) and inp is sys.stdin
        self.current = "reset"
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if self.tty_in:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass

    def set_display(self, kind: str) -> None:
        if self.color and kind != self.current:
            self.out.write(COLORS[kind])
            self.out.flush()
        self.current = kind

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def write_bytes(self, piece: bytes) -> None:
        """Token bytes: a UTF-8 character split over tokens is printed once it is whole."""
        text = self._decoder.decode(piece)
        if text:
            self.write(text)

    def info(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def _read_raw(self) -> str | None:
        if self.tty_in:
            try:
                return input()
            except EOFError:
                return None
        line = self.inp.readline() if self.inp is not None else None  # None: stdin closed, the end of input
        if not line:
            return None
        return line.removesuffix("\n")

    def readline(self, multiline: bool) -> tuple[str, bool, bool]:
        """One line of input -> (text, more lines follow, end of input)."""
        line = self._read_raw()
        if line is None:
            return "", False, True
        line = line.removesuffix("\r")
        if line.endswith("/"):  # submit now, without a newline
            return line[:-1], False, False
        if line.endswith("\\"):  # this line flips the multiline default
            line = line[:-1]
            multiline = not multiline
        return line + "\n", multiline, False


def isatty(s) -> bool:
    try:
        return s.isatty()
    except (AttributeError, ValueError):
        return False
