"""What one process has already established about its store's files, so it is not redone."""

from __future__ import annotations

from threading import Lock
from typing import Iterable


class KnownFiles:
    """Chunk ids this process wrote or hash-checked (a writer trusts them without reading
    them back) and chunk directories it fsynced. Thread-safe: workers, the commit thread
    and readers update it concurrently. Prune forgets the chunks it deletes."""

    def __init__(self) -> None:
        self._lock = Lock()
        self._good: set[str] = set()
        self._synced_dirs: set[str] = set()

    def is_good(self, cid: str) -> bool:
        with self._lock:
            return cid in self._good

    def add_good(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._good.update(ids)

    def forget(self, cid: str) -> None:
        with self._lock:
            self._good.discard(cid)

    def unsynced(self, dirs: Iterable[str]) -> set[str]:
        """Those of `dirs` this process has not fsynced yet."""
        with self._lock:
            return set(dirs) - self._synced_dirs

    def mark_synced(self, dirs: Iterable[str]) -> None:
        with self._lock:
            self._synced_dirs.update(dirs)
