"""Thread counts from the command line, kept sane."""
from __future__ import annotations

import os
import sys

PER_CORE = 4  # more threads than this per core only adds switching (llama.cpp users ask for -t 1000 by mistake)


def sane_threads(n: int | None) -> int | None:
    """`n` (-t), capped at PER_CORE x the CPU count with a one-line warning; None or <= 0 pass through
    (they mean "the default")."""
    cpus = os.cpu_count() or 1
    limit = PER_CORE * cpus
    if n is not None and n > limit:
        print(f"warning: -t {n} is more than {PER_CORE} threads per CPU core ({cpus} cores); using {limit}",
              file=sys.stderr)
        return limit
    return n
