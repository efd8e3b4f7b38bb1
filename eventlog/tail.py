"""The writer's in-memory tail: entries appended but not yet committed, and how far the
committed log is durable.

Readers consult the tail for the newest entries, then storage (as etcd-io/raft's
``unstable`` sits in front of its ``Storage``). In group mode the flusher drains the
tail batch by batch; in sync and os modes every append commits at once and the tail
only tracks the committed and durable indexes. Everything here is guarded by `lock`,
which the writer shares for the rest of its bookkeeping.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .errors import TruncatedError


class Waiter:
    """A thread waiting for entry `index` to become durable; told when truncation drops it."""

    __slots__ = ("index", "truncated_to")

    def __init__(self, index: int):
        self.index = index
        self.truncated_to: int | None = None


class Tail:
    """Framed entries committed_index+1 .. last_index that are not in storage yet.

    Invariants: last_index == committed_index + len(pending entries) and durable_index <=
    committed_index. Callers hold `lock` around any sequence of calls that must see one
    state; each method takes it too, so a single call is always consistent.

    Entries are held as (LMDB key, framed value) pairs, oldest first: the key is the
    entry's index as `record.key` packs it, so a commit hands a batch to LMDB as it is
    (no per-entry Python call on the flusher) and the index of the k-th pending entry
    is committed_index + 1 + k.
    """

    def __init__(self, committed_index: int):
        self.lock = threading.RLock()
        self._durable_changed = threading.Condition(self.lock)
        self._entries: list[tuple[bytes, bytes]] = []
        self._committed = self._durable = committed_index
        # Newest appended index, committed or not (always committed_index + len(_entries)).
        # A plain attribute, not a property: the appenders read it once per entry, and a
        # property is a Python call each time. Only this class assigns it.
        self.last_index = committed_index
        self._waiters: set[Waiter] = set()
        self._blocked = 0  # threads inside wait_until

    # ------------------------------------------------------------------ state

    @property
    def committed_index(self) -> int:
        """Newest index in storage (durable or not)."""
        return self._committed

    @property
    def durable_index(self) -> int:
        """Newest index that survives a power loss."""
        return self._durable

    @property
    def pending(self) -> int:
        """How many entries wait to be committed (0 outside group mode)."""
        return len(self._entries)

    @property
    def blocked(self) -> int:
        """How many threads wait for durability right now (the flusher stops lingering for them)."""
        return self._blocked

    def value(self, index: int) -> bytes | None:
        """The framed value of uncommitted entry `index`; None if `index` is committed or beyond last_index."""
        with self.lock:
            if index <= self._committed or index > self.last_index:
                return None
            return self._entries[index - self._committed - 1][1]

    def values(self, lo: int, hi: int) -> list[bytes]:
        """The uncommitted values lo, lo+1, ... below `hi`, stopping at the first that is not uncommitted."""
        with self.lock:
            if lo <= self._committed:
                return []
            start = lo - self._committed - 1
            return [value for _, value in self._entries[start : start + max(0, hi - lo)]]

    # ------------------------------------------------------------------ changes

    def append(self, framed: list[tuple[bytes, bytes]]) -> None:
        """Buffer framed (key, value) entries; their indexes continue last_index."""
        with self.lock:
            self._entries.extend(framed)
            self.last_index += len(framed)

    def append_one(self, key: bytes, value: bytes) -> int:
        """`append` for one entry, by a caller that holds `lock` (the group-mode hot path);
        returns how many entries wait now (`pending`), which the caller's next step needs."""
        entries = self._entries
        entries.append((key, value))
        self.last_index += 1
        return len(entries)

    def take(self, max_batch: int) -> list[tuple[bytes, bytes]]:
        """A copy of the oldest (at most `max_batch`) uncommitted (key, value) entries, entry
        committed_index + 1 first; they stay until mark_committed."""
        with self.lock:
            return self._entries[:max_batch]

    def mark_committed(self, last: int, durable: bool) -> None:
        """Storage now holds every entry through `last` (durably if `durable`); drop them from the buffer."""
        with self.lock:
            del self._entries[: max(0, last - self._committed)]
            self._committed = last
            self.last_index = last + len(self._entries)  # entries committed unbuffered extend it
            if durable:
                self._durable = last
                self._wake_waiters()

    def mark_one_committed(self, index: int, durable: bool) -> None:
        """`mark_committed(index, durable)` for the one entry after committed_index, by a
        caller that holds `lock` and buffers nothing (sync mode's per-commit path)."""
        self._committed = self.last_index = index
        if durable:
            self._durable = index
            if self._blocked:  # as _wake_waiters, without its call
                self._durable_changed.notify_all()

    def mark_durable(self, index: int) -> None:
        """Every committed entry through `index` survives a power loss now."""
        with self.lock:
            durable = max(self._durable, min(index, self._committed))
            if durable != self._durable:
                self._durable = durable
                self._wake_waiters()

    def _wake_waiters(self) -> None:
        # Only `wait_until` waits on this condition, and it counts itself in `_blocked`
        # under the lock before it first checks: with nobody counted there is nobody to
        # wake, and a sync append (one commit per call) skips Condition.notify_all's
        # Python-level bookkeeping.
        if self._blocked:
            self._durable_changed.notify_all()

    def drop_after(self, index: int) -> None:
        """Truncation: forget entries after `index`, committed or not; waiters for them get TruncatedError.

        The caller deletes the committed ones from storage in the same critical section.
        """
        with self.lock:
            del self._entries[max(0, index - self._committed):]
            self._committed = min(self._committed, index)
            self.last_index = self._committed + len(self._entries)
            self._durable = min(self._durable, index)
            for waiter in self._waiters:
                if waiter.index > index:
                    waiter.truncated_to = index
            self._durable_changed.notify_all()

    def wake_all(self) -> None:
        """Wake every waiter to re-check the writer's health (closed, poisoned, fenced)."""
        with self.lock:
            self._durable_changed.notify_all()

    # ------------------------------------------------------------------ waiting

    def wait_until(self, durable_enough: Callable[[], bool], *, waiter: Waiter | None,
                   timeout: float | None, check: Callable[[], None], nudge: Callable[[], None]) -> None:
        """Block until durable_enough() holds (checked under `lock`).

        `check()` raises when the wait can never end well (poisoned, closed); `nudge()` is
        called once, under the lock, after this thread counts as blocked (it tells the
        flusher to commit now). TruncatedError when `waiter`'s entry is dropped;
        TimeoutError after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            self._blocked += 1
            if waiter is not None:
                self._waiters.add(waiter)
            nudge()
            try:
                while not durable_enough():
                    if waiter is not None and waiter.truncated_to is not None:
                        raise TruncatedError(waiter.index, waiter.truncated_to)
                    check()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"entries not durable after {timeout} s")
                    self._durable_changed.wait(remaining)
            finally:
                self._blocked -= 1
                self._waiters.discard(waiter)
