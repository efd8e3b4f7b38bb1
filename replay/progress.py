"""A progress bar for long replays: rich on a terminal, nothing otherwise."""

from __future__ import annotations

import sys

LONG_REPLAY = 2000  # entries; shorter replays finish before a bar is worth drawing


class ReplayProgress:
    """Context manager with `advance(n)`; draws only if `enabled` (None: auto, when stderr is a
    TTY and the replay has at least LONG_REPLAY entries)."""

    def __init__(self, total: int, enabled: bool | None = None, description: str = "replaying"):
        if enabled is None:
            enabled = total >= LONG_REPLAY and sys.stderr.isatty()
        self._bar = None
        if enabled and total > 0:
            self._bar = rich_bar(description)
            self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def __enter__(self) -> "ReplayProgress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def rich_bar(description: str):
    """The one progress bar of the package (replay, the CLI's verification): rich, on
    stderr, erased when done. Imported lazily: most runs never draw one."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(description, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
