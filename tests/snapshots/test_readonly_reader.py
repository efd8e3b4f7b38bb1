"""Issue 19, item 6: a reader that cannot take the store's READERS lock (a store on a
read-only mount, or another user's, where READERS does not exist and cannot be created)
goes on without it. What it gives up: a pruner does not wait for it. A snapshot pruned
under it must then be absence (the walk lists again and loads the newer snapshot that
caused the prune), never reported as damage and never half loaded."""

from __future__ import annotations

import os

import pytest
import torch

from snapshots import SnapshotNotFoundError, SnapshotStore, locks, reading


@pytest.fixture
def lockless_readers(monkeypatch):
    """Shared READERS locks cannot be taken (as for a reader without write access); the
    pruner's exclusive lock still works, and so does not wait for those readers."""
    real = locks.FileLock.acquire

    def acquire(self, exclusive, blocking=True):
        if self.path.endswith("READERS") and not exclusive:
            return False
        return real(self, exclusive, blocking)

    monkeypatch.setattr(locks.FileLock, "acquire", acquire)


def test_a_missing_unwritable_readers_file_is_no_lock_not_an_error(tmp_path, monkeypatch):
    path = str(tmp_path / "READERS")

    real = os.open

    def refuse(file, flags, mode=0o777):
        if file == path and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", file)  # a directory this user cannot write
        return real(file, flags, mode)

    monkeypatch.setattr(locks.os, "open", refuse)
    lock = locks.FileLock(path)
    assert lock.acquire(exclusive=False) is False  # before: FileNotFoundError from the read-only retry
    lock.release()


def test_a_snapshot_pruned_under_a_lockless_reader_is_absence_and_the_newer_one_loads(tmp_path, lockless_readers,
                                                                                    monkeypatch):
    writer = SnapshotStore(tmp_path / "store", keep_last=1)
    writer.save({"w": torch.full((64,), 1.0)}, index=1, term=1)
    reader = SnapshotStore(tmp_path / "store")
    real_read = reading.StoreReader.read_chunk
    pruned = []

    def read_chunk(self, name, ref, out):
        if not pruned and name.startswith("1-"):
            # the writer commits a newer snapshot and prunes this one while it is read
            writer.save({"w": torch.full((64,), 2.0)}, index=2, term=1)
            pruned.append(writer.prune())
        return real_read(self, name, ref, out)

    monkeypatch.setattr(reading.StoreReader, "read_chunk", read_chunk)
    info, state, skipped = reader.load_latest()
    assert pruned and info.index == 2 and torch.equal(state["w"], torch.full((64,), 2.0))
    assert skipped == [], "a snapshot pruned under the reader was reported as damage"
    with pytest.raises(SnapshotNotFoundError):
        reader.load("1-1")
    reader.close()
    writer.close()
