"""Generated text as it is streamed: whole UTF-8 characters only, stop strings cut out, never sent early.

A token may end in the middle of a multi-byte character (byte-level BPE), and a stop string may arrive
split over several tokens; text that could still turn into a stop string is held back until it can't.
"""
from __future__ import annotations

import codecs
from collections.abc import Callable


def find_stop(text: str, stops: list[str]) -> tuple[int, str]:
    """The earliest full occurrence of any stop string in `text`: (position, word), or (-1, "")."""
    best, word = -1, ""
    for w in stops:
        p = text.find(w)
        if p >= 0 and (best < 0 or p < best):
            best, word = p, w
    return best, word


def partial_stop_start(text: str, stops: list[str]) -> int:
    """Where the longest tail of `text` that begins some stop string starts (len(text) if none)."""
    start = len(text)
    for w in stops:
        for k in range(min(len(w) - 1, len(text)), 0, -1):
            if text.endswith(w[:k]):
                start = min(start, len(text) - k)
                break
    return start


class TextStream:
    """Turns generated token ids into text that is safe to send, one token at a time.

    `add(token)` returns the text that can go out now ("" while a character or a possible stop
    string is incomplete); `finish()` returns whatever is still held at the end. After a stop string
    is found, `stopped_word` is set and `text` ends just before it.
    """

    def __init__(self, piece: Callable[[int], bytes], stops: list[str]):
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.stopped_word = ""
        self.token_starts: list[int] = []  # where each added token's text begins in `text`

    def add(self, token: int) -> str:
        self.token_starts.append(len(self.text))
        self.text += self._decoder.decode(self._piece(token))
        return self._release(final=False)

    def finish(self) -> str:
        if not self.stopped_word:
            self.text += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped_word:
            return ""
        unsent = self.text[self.sent :]
        pos, word = find_stop(unsent, self.stops)
        if pos >= 0:
            self.stopped_word = word
            self.text = self.text[: self.sent + pos]
            out = unsent[:pos]
        else:
            out = unsent if final else unsent[: partial_stop_start(unsent, self.stops)]
        self.sent += len(out)
        return out

    def n_tokens_kept(self) -> int:
        """How many added tokens begin before the end of the kept text (tokens of a stop string are not)."""
        return sum(1 for s in self.token_starts if s < len(self.text)) if self.stopped_word else len(self.token_starts)
