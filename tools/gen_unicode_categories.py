"""Write llamapy/tokenizer/unicode_categories.py: the major category runs of the installed Unicode database.

    python tools/gen_unicode_categories.py

Run it after changing the pinned unicodedata2 version; tests/test_tokenizer_bpe.py checks the table
against a scan of the database.
"""
from __future__ import annotations

import os
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llamapy.tokenizer import bpe as bpe  # noqa: E402
from llamapy.util.fileio import atomic_write  # noqa: E402

HEADER = '''"""The major Unicode category (L, N, P, S, M, Z, C) of every code point the pre-tokenizers scan, as runs:
"<category><first code point, hex>" for each window of bpe._SCAN_LIMITS. Written by
tools/gen_unicode_categories.py from the Unicode {version} database; reading it takes a millisecond where
scanning the database takes ~60 ms at every start (time to first token)."""
from __future__ import annotations

VERSION = "{version}"

RUNS = (
'''


def main() -> None:
    ud = bpe._unicodedata()
    rows = sorted((lo, k) for k, rs in bpe.scan_category_ranges(ud).items() for lo, _ in rs)
    parts = []
    for wlo, whi in bpe._SCAN_LIMITS:
        runs = " ".join(f"{k}{lo:x}" for lo, k in rows if wlo <= lo < whi)
        lines = textwrap.wrap(runs, 100)
        parts.append("    (\n" + "\n".join(f'        "{ln} "' for ln in lines) + "\n    ),\n")
    text = HEADER.format(version=ud.unidata_version) + "".join(parts) + ")\n"
    with atomic_write(os.path.join(ROOT, "llamapy", "tokenizer", "unicode_categories.py"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
