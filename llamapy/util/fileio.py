"""Atomic file writes: data goes to a temporary file beside the target, renamed into place on success."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

from ..errors import LlamapyError


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file open for writing; on success it replaces `path`, on any failure it is removed."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".llamapy-", suffix=".part", dir=d)
    except OSError as e:
        raise LlamapyError(f"{path}: can't write here: {e.strerror}") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
