"""The compiled C core (`llamapy._native`): `ffi` and `lib`, with a readable error when it is missing."""
from __future__ import annotations

from .errors import LlamapyError

try:
    from ._native import ffi, lib  # noqa: F401
except ImportError as e:  # pragma: no cover - only on a broken install
    raise LlamapyError(
        f"llamapy's C extension is not built ({e}); reinstall with `pip install -e .` (or `make install`)"
    ) from None

KERNEL_LEVELS = {"scalar": 0, "avx2": 1, "neon": 2}


def kernels_active() -> str:
    return ffi.string(lib.lp_kernels_name(lib.lp_kernels_active())).decode()


def kernels_best() -> str:
    return ffi.string(lib.lp_kernels_name(lib.lp_kernels_best())).decode()


def set_kernels(name: str) -> None:
    """Switch every kernel to `name` ('scalar', 'avx2', 'neon'); tests use it to compare against scalar."""
    if name not in KERNEL_LEVELS or lib.lp_kernels_set(KERNEL_LEVELS[name]) != 0:
        raise LlamapyError(f"kernels '{name}' can't run on this CPU (best: {kernels_best()})")
