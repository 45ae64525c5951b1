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
        self._parts: list[str] = []  # text released (joined only when asked: no copy per token)
        self._n_sent = 0
        self._held = ""  # decoded, not released: it may still begin a stop string
        self.stopped_word = ""
        self.token_starts: list[int] = []  # where each added token's text begins in `text`

    @property
    def text(self) -> str:
        """Everything added so far, ending just before the stop string once one was found."""
        return "".join(self._parts) + self._held

    def add(self, token: int) -> str:
        self.token_starts.append(self._n_sent + len(self._held))
        self._held += self._decoder.decode(self._piece(token))
        return self._release(final=False)

    def finish(self) -> str:
        if not self.stopped_word:
            self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped_word:
            return ""
        held = self._held
        pos, word = find_stop(held, self.stops)
        if pos >= 0:
            self.stopped_word = word
            out, self._held = held[:pos], ""
        else:
            cut = len(held) if final or not self.stops else partial_stop_start(held, self.stops)
            out, self._held = held[:cut], held[cut:]
        if out:
            self._parts.append(out)
            self._n_sent += len(out)
        return out

    def n_tokens_kept(self) -> int:
        """How many added tokens begin before the end of the kept text (tokens of a stop string are not)."""
        if not self.stopped_word:
            return len(self.token_starts)
        end = self._n_sent + len(self._held)
        return sum(1 for s in self.token_starts if s < end)
