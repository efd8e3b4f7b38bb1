"""Which copy of each chunk last passed every check, so a reload reads it without a walk.

A hot reload (a trainer rolling back into the same live tensors) reads the same chunks
from the same files again and again. Finding a chunk's copies (`ChunkLocator.copies`)
builds every candidate's path and record on each read; remembering the copy that last
read good lets `StoreReader.read_chunk` try it first. Nothing is trusted from the memo
but the place: the copy is read and hash-checked as any other, and when it fails (a pack
a prune deleted or rewrote, a file damaged since) the reader walks every copy as before
and forgets the entry. FORMAT.md ("Finding a chunk") lets a reader use any copy that
passes every check, so which copy is tried first changes no outcome.
"""

from __future__ import annotations

import sys
from threading import Lock

from .locating import Copy

# At most this many chunks are remembered (a 4 MiB chunk each: 256 GiB of state). A
# bigger state forgets everything when the table is full and fills it again: its reloads
# then walk the copies as without the memo, at the memory cost of a few dozen MiB at most.
KEEP = 1 << 16


class LastGoodCopies:
    """chunk id -> the `Copy` that last passed every check in this process. Thread-safe."""

    def __init__(self, keep: int = KEEP):
        self._keep = keep
        self._lock = Lock()
        self._copies: dict[str, Copy] = {}

    def get(self, cid: str) -> Copy | None:
        """The copy of `cid` that last read good; None when none is remembered."""
        with self._lock:
            return self._copies.get(cid)

    def put(self, cid: str, copy: Copy) -> None:
        """Remember that `copy` of `cid` passed every check (clearing the table when it
        holds `keep` chunks already). A packed copy's path is interned: the chunks of one
        pack share one string."""
        if copy.pack is not None:
            copy = Copy(sys.intern(copy.path), copy.directory, copy.pack, copy.offset, copy.stored_len)
        with self._lock:
            if len(self._copies) >= self._keep and cid not in self._copies:
                self._copies.clear()
            self._copies[cid] = copy

    def forget(self, cid: str) -> None:
        """Forget `cid` (its remembered copy failed, or no copy read)."""
        with self._lock:
            self._copies.pop(cid, None)
