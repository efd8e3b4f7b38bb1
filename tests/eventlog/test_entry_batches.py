"""EventLog.entry_batches: `entries()` in lists (replay's read path). The same entries in the
same order, lists of at most `size`, and damage raised after the list of the entries
before it, naming the damaged index, exactly as `entries()` raises it."""

from __future__ import annotations

import pytest

from eventlog import CorruptEntryError, EventLog
from eventlog import reader as reader_module

from .raw import delete_entry, flip_byte
from .test_read_runs import _log

N = 40


@pytest.mark.parametrize("size", [1, 3, 64])
@pytest.mark.parametrize("read_batch", [None, 7])
def test_the_same_entries_in_lists_of_at_most_size(tmp_path, monkeypatch, size, read_batch):
    if read_batch is not None:
        monkeypatch.setattr(reader_module, "READ_BATCH", read_batch)
    path = _log(tmp_path / "log", N)
    with EventLog.open(path, readonly=True) as log:
        for start, stop in [(None, None), (5, 17), (40, None), (3, 3)]:
            lists = list(log.entry_batches(start, stop, size=size))
            assert all(1 <= len(part) <= size for part in lists)
            assert [e for part in lists for e in part] == list(log.entries(start, stop))


def test_damage_is_raised_after_the_entries_before_it(tmp_path):
    path = _log(tmp_path / "log", N)
    delete_entry(path, 23)  # inside the first read batch: the entries before it come first, then the error
    with EventLog.open(path, readonly=True) as log:
        with pytest.raises(CorruptEntryError) as by_entries:
            list(log.entries())
        got = []
        with pytest.raises(CorruptEntryError) as by_batches:
            for part in log.entry_batches(size=8):
                got.extend(e.index for e in part)
        assert by_batches.value.index == by_entries.value.index == 23
        assert got == list(range(1, 23))


def test_a_bad_checksum_ends_the_lists_at_the_entry_before_it(tmp_path):
    path = _log(tmp_path / "log", N)
    with EventLog.open(path, durability="os") as log:
        log.append("put", {"i": 41})
    flip_byte(path, 30)  # the payload's last byte: the checksum no longer matches
    with EventLog.open(path, readonly=True) as log:
        got = []
        with pytest.raises(CorruptEntryError) as raised:
            for part in log.entry_batches(size=8):
                got.extend(e.index for e in part)
        assert raised.value.index == 30 and got == list(range(1, 30))


def test_size_below_one_is_refused(tmp_path):
    path = _log(tmp_path / "log", 3)
    with EventLog.open(path, readonly=True) as log:
        with pytest.raises(ValueError, match="at least 1"):
            log.entry_batches(size=0)
