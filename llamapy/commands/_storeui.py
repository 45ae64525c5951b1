"""A byte-count progress bar on stderr for the store's verbs (hidden when stderr is not a terminal)."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def byte_progress(console, description: str):
    """Yield a (done, total) callback that moves a rich bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
        yield update


def printable(text: str) -> str:
    """Text from a model's files with control characters (other than newline and tab) shown as escapes,
    so nothing reaches the terminal as a control sequence."""
    return "".join(c if c in "\n\t" or (c >= " " and c != "\x7f" and not 0x80 <= ord(c) < 0xA0)
                   else f"\\x{ord(c):02x}" for c in text)
