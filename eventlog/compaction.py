"""Compaction for a writer: seal the oldest live entries into the archive (unless the
policy is archive=None), drop them from LMDB, and apply the archive's retention, in the
order FORMAT.md ("Sealing") gives, so that a crash at any point loses nothing.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .archive import Archive
from .sealing import Sealer
from .meta import Bounds
from .storage import PrefixChanged, Storage

if TYPE_CHECKING:
    from .writer import Writer


class Compactor:
    """Runs `Writer.compact_through`, one compaction (seal, drop, retention) at a time.

    Edge cases first: compacting below live_first_index is a no-op; IndexError past
    last_index; a truncation that rewrites the entries being sealed makes it seal again.
    Creating one removes what a crash inside an earlier compaction left behind. It reads
    the writer's bounds under the tail's lock, writes through `Writer.write` under the
    commit lock, and moves the bounds with `Writer.moved_first`.
    """

    def __init__(self, writer: "Writer", storage: Storage, archive: Archive | None, bounds: Bounds):
        self._writer = writer
        self._storage = storage
        self._sealer = Sealer(storage, archive)
        self._sealer.clean(bounds)  # what a crash inside a compaction left behind
        self._compacting = threading.Lock()

    def compact_through(self, index: int) -> None:
        """Seal entries live_first..index into the archive (unless archive=None), then drop
        them from LMDB and apply retention (EventLog.compact_through states the contract)."""
        writer = self._writer
        writer.check_writable()
        # Only the entries it drops must be committed (they are read from storage);
        # waiting for the whole log would wait on entries a concurrent truncation may be removing.
        with writer.tail.lock:
            needed = min(index, writer.tail.last_index)
        if needed >= writer.live_first_index:
            writer.wait_durable(needed, None)
        # A reader killed inside a read transaction keeps its slot, and the old pages it
        # pinned can never be reused: the file would grow for as long as this writer runs.
        self._storage.reader_check()
        with self._compacting:
            while not self._compact_once(index):
                pass  # entry `index` was rewritten under the seal: seal again

    def _compact_once(self, index: int) -> bool:
        """One attempt; False if a concurrent truncation rewrote the entries being sealed."""
        writer, storage = self._writer, self._storage
        with writer.tail.lock:
            if index < writer.live_first_index:
                return True
            if index > writer.tail.last_index:
                raise IndexError(f"compact_through({index}): last_index is {writer.tail.last_index}")
            first = writer.live_first_index
        with storage.read_txn() as txn:
            bounds = storage.bounds(txn)
        # Sealing reads committed entries and writes files under the compaction lock only:
        # appends and group commits go on meanwhile.
        sealed = self._sealer.prepare(bounds, index)
        # Only the commit lock is held through the transaction: group-mode appends (which
        # take the state lock alone) go on while a background thread compacts.
        with writer.committing:
            # Under the commit lock nothing commits between this read and the drop below.
            decided = self._sealer.decide(bounds, index, sealed, storage.term_and_checksum(index))
            if decided is None:
                return False
            new_archive, doomed = decided
            try:
                writer.write(lambda txn: storage.drop_prefix(
                    txn, first, index, sealed.last_checksum if sealed else None, new_archive))
            except PrefixChanged:
                self._sealer.discard(sealed)
                return False
            writer.moved_first(index + 1, new_archive.first if new_archive is not None else None)
            if not writer.meta_synced:
                storage.sync()  # the new boundary's meta page, before any segment goes
        self._sealer.remove(doomed)  # only now that the new archive boundary is durable
        with writer.tail.lock:
            archive_first = writer.first_index
        self._sealer.merge(archive_first, index + 1)  # keeps the number of files bounded
        return True
