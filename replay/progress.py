"""A progress bar for long replays: rich on a terminal, nothing otherwise."""

from __future__ import annotations

import sys

LONG_REPLAY = 2000  # entries; shorter replays finish before a bar is worth drawing


class ReplayProgress:
    """Context manager with `advance(n)`; draws only if `enabled` (None: auto, when stderr is a
    TTY and the replay has at least LONG_REPLAY entries)."""

    def __init__(self, total: int, enabled: bool | None = None):
        if enabled is None:
            enabled = total >= LONG_REPLAY and sys.stderr.isatty()
        self._bar = None
        if enabled and total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress("replaying", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 transient=True)
            self._task = self._bar.add_task("replay", total=total)

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
