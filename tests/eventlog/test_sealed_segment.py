"""EventLog.sealed_segment: sealed_range's bytes plus where they sit in the chain, as the copy
verified every entry (FORMAT.md, "Shipping and restoring segments"): it must say exactly
what a full check of the bytes says, and refuse damage as sealed_range does."""

from __future__ import annotations

import pytest

import eventlog
from eventlog import CorruptEntryError, EventLog, segment_checks

from .test_segment_transfer import TARGET, _source

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def source(tmp_path):
    path = _source(tmp_path / "source")  # three terms; archive 1..70, LMDB 71..120
    with EventLog.open(path, readonly=True) as log:
        yield log


def test_sealed_segment_says_what_a_full_check_of_its_bytes_says(source):
    ranges = source.segment_ranges(source.first_index, source.last_index, TARGET)
    assert any(a <= 70 < b for a, b in ranges), "a range across the archive/LMDB border is covered"
    for first, last in ranges:
        data, checked = source.sealed_segment(first, last)
        assert bytes(data) == bytes(source.sealed_range(first, last))
        assert checked == segment_checks.check_segment(data)
        assert (checked.first, checked.last, checked.prev_checksum, checked.last_checksum) == (
            first, last, source.checksum_at(first - 1), source.checksum_at(last))
        assert checked.last_term == source.term_at(last)


def test_sealed_segment_refuses_a_damaged_entry_like_sealed_range(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path, archive=eventlog.Archive()) as log:
        log.append_many([("step", {"i": i, "pad": b"x" * 64}) for i in range(1, 11)])
    # Flip a payload byte of entry 6 in LMDB (its framing stays valid, its checksum does not).
    import lmdb
    env = lmdb.open(str(path), subdir=True, max_dbs=4)
    try:
        entries = env.open_db(b"entries")
        with env.begin(write=True) as txn:
            key = (6).to_bytes(8, "big")
            value = bytearray(txn.get(key, db=entries))
            value[-1] ^= 0x01
            txn.put(key, bytes(value), db=entries)
    finally:
        env.close()
    with EventLog.open(path, readonly=True) as log:
        with pytest.raises(CorruptEntryError) as raised:
            log.sealed_segment(1, 10)
        assert raised.value.index == 6
        data, checked = log.sealed_segment(1, 5)  # the undamaged part still seals
        assert checked == segment_checks.check_segment(data)
