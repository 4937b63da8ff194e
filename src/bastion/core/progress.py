"""Progress bars for long work (rich), silent when disabled or when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


@contextmanager
def progress(total: int, description: str, enabled: bool = True) -> Iterator[_Bar]:
    """A progress bar on stderr: `with progress(n, "training") as bar: bar.advance()`."""
    if not enabled or not sys.stderr.isatty():
        yield _Bar(None, None)
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=True)
    with bar:
        yield _Bar(bar, bar.add_task(description, total=total))
