"""Loading a model builds ~10^5 small lists, tuples and dicts (vocabulary, merges); none of them form
cycles, yet each few hundred allocations start a pass of the cyclic collector over all of them, which
doubles the load time. `paused_gc()` holds the collector off while such a structure is built."""
from __future__ import annotations

import contextlib
import functools
import gc


@contextlib.contextmanager
def paused_gc():
    """No cyclic garbage collection inside the block (nests; restores the previous state)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def without_gc(fn):
    """Decorator: run fn inside paused_gc()."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with paused_gc():
            return fn(*args, **kwargs)

    return wrapper
