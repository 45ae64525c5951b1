"""Atomic file writes: data goes to a temporary file beside the target, renamed into place on success.

The temporary file is `.llamapy-<pid>-<random>.part`: a run that is killed outright (SIGKILL, a power cut)
leaves it behind, and the next write into the same directory removes every such file whose process is
gone. SIGINT, SIGTERM and SIGHUP end the CLI through an exception (cli.py), so the writer removes its
own file on the way out.

Permissions follow what `cp` does: a new file gets 0666 less the umask (a private umask keeps a model
private); a file being replaced keeps its mode; a target that is a symlink is written through, the link
stays and the file it points to gets the new data.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from contextlib import contextmanager

from ..errors import LlamapyError

PART_PREFIX = ".llamapy-"
PART_SUFFIX = ".part"
_PART = re.compile(r"\.llamapy-(\d+)-.*\.part\Z")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file open for writing; on success it replaces `path`, on any failure it is removed."""
    path = os.fspath(path)
    if os.path.islink(path):
        path = os.path.realpath(path)  # like cp: write to the file the link points to, keep the link
    d = os.path.dirname(os.path.abspath(path))
    remove_stale_parts(d)
    try:
        perms = stat.S_IMODE(os.stat(path).st_mode)  # replacing a file: keep its mode
    except OSError:
        perms = 0o666 & ~current_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{PART_PREFIX}{os.getpid()}-", suffix=PART_SUFFIX, dir=d)
    except OSError as e:
        raise LlamapyError(f"{path}: can't write here: {e.strerror}") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), perms)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def current_umask() -> int:
    """The process's umask (from /proc where it is shown; else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_parts(directory: str) -> list[str]:
    """Remove the partial files of writers that are gone (their pid no longer runs); returns their names."""
    removed = []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(PART_PREFIX) and n.endswith(PART_SUFFIX)]
    except OSError:
        return removed
    for name in names:
        m = _PART.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or not a pid we can ask about: leave its file alone
    return True
