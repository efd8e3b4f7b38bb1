"""A group log read while its flusher commits: a read batch that starts where LMDB ran out
takes the entry before it (its checksum seed) and its own entries from the writer's tail,
and the flusher may commit between the read transaction and the tail read. Every such
interleaving must read the whole log, never a gap that is not there."""

from __future__ import annotations

import contextlib

from eventlog import EventLog
from eventlog import reader as reader_module


def test_a_commit_between_a_batchs_transaction_and_its_tail_read_loses_nothing(tmp_path, monkeypatch):
    # Before: the batch at 5 found neither 4 nor 5 committed, took 5.. from the tail, and
    # then looked for 4 (its seed) in the tail after the flusher had committed it:
    # CorruptEntryError(4, "entry is missing from the log") for a sound log.
    monkeypatch.setattr(reader_module, "READ_BATCH", 4)
    with EventLog.open(tmp_path / "log", durability="group", group_window=3600.0) as log:
        for i in (1, 2):
            log.append("op", i)
        log.flush()  # 1 and 2 committed
        for i in range(3, 11):
            log.append("op", i)  # 3..10 wait in the tail (below the eager batch, a long window)
        storage = log._storage
        real = storage.read_txn
        txns = []

        @contextlib.contextmanager
        def read_txn():
            with real() as txn:
                yield txn
            txns.append(1)
            if len(txns) == 2:  # the batch at 5: its transaction saw 1..2 only
                log._writer.commits.commit_pending(2)  # the flusher commits 3 and 4 now

        monkeypatch.setattr(storage, "read_txn", read_txn)
        assert [e.payload for e in log.entries()] == list(range(1, 11))
        assert len(txns) > 2  # the batch at 5 was read again, after the commit
        monkeypatch.setattr(storage, "read_txn", real)
        assert [e.payload for e in log.entries()] == list(range(1, 11))
