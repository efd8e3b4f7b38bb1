"""Loose chunk files: one file per new chunk (FORMAT.md, "Commit protocol", the form
before packs), for a store opened with ``packs=False``.

`LooseWriter` has the same call sequence as `packfile.PackWriter`, so the write pipeline
does not care which one it feeds: `append` from the worker threads (each chunk written
to its own temp file, its writeback started), `finish()` (every temp file fsynced and
renamed, on the pool), or `discard()`. It costs a file fsync, a rename and a directory
fsync per new chunk, where a pack costs one fsync per save.
"""

from __future__ import annotations

from threading import Lock
from typing import Callable

from .durable import PendingWrite, start_durable_write
from .paths import StoreLayout
from .pool import WorkerPool


class LooseWriter:
    """New chunks of one save, each to its own file under chunks/ab/."""

    def __init__(self, layout: StoreLayout, pool: WorkerPool, failpoint: Callable[[str], None] | None = None):
        self._layout, self._pool, self._failpoint = layout, pool, failpoint
        self._lock = Lock()
        self._pending: list[tuple[str, PendingWrite]] = []
        self.name = None  # no pack: FORMAT.md's step 3 syncs `directories` instead
        self.directories: set[str] = set()  # chunk directories that get a new name

    @property
    def empty(self) -> bool:
        return not self._pending

    def append(self, cid: str, raw_len: int, parts: list) -> int:
        """Write chunk `cid`'s file (`parts`) to a temp file beside its name; its size.
        Thread-safe."""
        directory = self._layout.chunk_dir(cid)
        self._layout.ensure_dir(directory)
        pending = start_durable_write(directory, cid, parts, self._failpoint, "chunk")
        with self._lock:
            self._pending.append((cid, pending))
            self.directories.add(directory)
        return pending.written

    def finish(self) -> list[str]:
        """fsync and rename every chunk (on the pool); their ids. On failure no temp file
        is left behind. The caller fsyncs `directories`."""
        try:
            self._pool.map_all(lambda p: p[1].finish(), self._pending)
        except BaseException:
            self.discard()
            raise
        return [cid for cid, _ in self._pending]

    def discard(self) -> None:
        """Delete every temp file not yet renamed. Idempotent."""
        for _, pending in self._pending:
            pending.discard()
