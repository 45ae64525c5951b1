"""llama.cpp's `-e` escape processing (its string_process_escapes), shared by run, chat and tokenize."""
from __future__ import annotations


def process_escapes(b: bytes) -> bytes:
    """The reference's string_process_escapes: \\n \\r \\t \\' \\" \\\\ and \\xHH; others stay as written."""
    out = bytearray()
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        if c != 0x5C or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        i += 1
        e = b[i]
        simple = {0x6E: 0x0A, 0x72: 0x0D, 0x74: 0x09, 0x27: 0x27, 0x22: 0x22, 0x5C: 0x5C}.get(e)
        if simple is not None:
            out.append(simple)
        elif e == 0x78 and i + 2 < n and (v := _strtol_hex2(b[i + 1 : i + 3])) is not None:
            out.append(v & 0xFF)
            i += 2
        else:
            out += bytes([0x5C, e])
        i += 1
    return bytes(out)


def _strtol_hex2(two: bytes) -> int | None:
    """strtol(two, &end, 16) when it reads both characters (leading whitespace and a sign allowed)."""
    s = two.decode("latin-1")
    body = s.lstrip(" \t\n\v\f\r")
    sign = -1 if body[:1] == "-" else 1
    digits = body[1:] if body[:1] in "+-" else body
    if not digits or any(ch not in "0123456789abcdefABCDEF" for ch in digits):
        return None
    return sign * int(digits, 16)


def process_escapes_text(s: str) -> str:
    """process_escapes on text: as on its UTF-8 bytes, so `\\xe4\\xb8\\xad` is 中 (bytes that end up invalid
    UTF-8 are kept as surrogate escapes)."""
    return process_escapes(s.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
