"""A byte-count progress bar on stderr for the store's verbs (hidden when stderr is not a terminal)."""
from __future__ import annotations

import contextlib

from ..store.text import printable  # noqa: F401 - the verbs print model text through it


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

