"""Whether a writer may still write: closed, fenced, poisoned, or a damaged last entry.

Each is a one-way state (only truncation clears tail damage). `usable` folds them into
the one flag the append fast path checks; the public errors are raised here.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ClosedError, CorruptEntryError, FencedError, LogError, LogPoisonedError
from .locking import describe_write_failure


class WriterHealth:
    """The failure states of one writer. Mutated under the writer's lock (Tail.lock)."""

    def __init__(self, path: Path, tail_damage: CorruptEntryError | None):
        self._path = path
        self.closed = False
        self.fenced: FencedError | None = None
        self.poison: BaseException | None = None
        self._poison_note = ""  # the poison's description for messages (says when the disk is full)
        self.tail_damage = tail_damage
        self.usable = False
        self._refresh()

    @property
    def failed(self) -> bool:
        """Fenced or poisoned: nothing more may reach the disk."""
        return self.poison is not None or self.fenced is not None

    def _refresh(self) -> None:
        self.usable = not (self.closed or self.failed or self.tail_damage is not None)

    def close(self) -> None:
        self.closed = True
        self._refresh()

    def fence(self, error: FencedError) -> None:
        self.fenced = error
        self._refresh()

    def set_poison(self, exc: BaseException) -> None:
        """Remember the first failed write or sync; later ones add nothing."""
        if self.poison is None:
            self.poison = exc
            self._poison_note = describe_write_failure(self._path, exc)
        self._refresh()

    def clear_tail_damage(self) -> None:
        self.tail_damage = None
        self._refresh()

    def raise_if_failed(self) -> None:
        """FencedError or LogPoisonedError if the writer can no longer write."""
        if self.fenced is not None:
            # Fenced is not poisoned: reopening would fence the live writer in turn.
            raise FencedError(self.fenced.own_term, self.fenced.current_term)
        if self.poison is not None:
            raise LogPoisonedError(
                f"{self._path} is poisoned by an earlier failed write ({self._poison_note}); "
                "reopen it to recover the durable prefix"
            ) from self.poison

    def raise_if_waiting_is_futile(self) -> None:
        """For threads waiting on durability: the writer failed or was closed."""
        self.raise_if_failed()
        if self.closed:
            raise ClosedError(f"{self._path} was closed before the entries waited for became durable")

    def check_writable(self, allow_tail_damage: bool = False) -> None:
        """The errors an append (or, with allow_tail_damage, a truncation) gets now, if any."""
        if self.closed:
            raise ClosedError(f"EventLog {self._path} is closed")
        self.raise_if_failed()
        if self.tail_damage is not None and not allow_tail_damage:
            raise LogError(
                f"{self._path}: the last entry is damaged ({self.tail_damage}); appending would chain "
                f"onto it. Inspect with verify() and drop it with truncate_after({self.tail_damage.index - 1})"
            )

    def write_failed(self) -> LogPoisonedError:
        """The error for the write that just poisoned the log (after set_poison)."""
        return LogPoisonedError(f"write to {self._path} failed; the log is poisoned: {self._poison_note}")

    def lost_entries(self, count: int) -> LogError | None:
        """At close: the error for `count` appended entries that a failure kept from the disk."""
        if count and self.fenced is not None:
            return FencedError(self.fenced.own_term, self.fenced.current_term)
        if count and self.poison is not None:
            return LogPoisonedError(
                f"{self._path}: {count} appended entries were never made durable: {self._poison_note}")
        return None
