"""The archive tier: segments on disk, retention, archive=None, leftovers of a crash, and
version-1 logs. The read contract across archive + LMDB is in conformance.py (every
mode runs it with and without an archive); kills and damage are in tests/crash/test_archive.py."""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct

import lmdb
import pytest

from eventlog import Archive, CompactedError, EventLog, FORMAT_VERSION, LogError, segment
from eventlog import sealing, writer as writer_module
from eventlog.archive import list_segments


def _payload(i: int) -> dict:
    return {"i": i, "pad": bytes([i % 251]) * 300}


def _fill(log, n: int) -> None:
    start = log.last_index + 1
    log.append_many([("step", _payload(i)) for i in range(start, start + n)])


def _segments(path):
    return list_segments(path / "archive")


@pytest.fixture
def small_segments(monkeypatch):
    """Seal at most ~4 KiB per segment, so one compaction writes several."""
    monkeypatch.setattr(segment, "TARGET_RAW", 4096)


def test_archive_policy_is_validated():
    assert Archive() == Archive(None, None) and Archive().keeps_everything
    assert not Archive(keep_bytes=0).keeps_everything
    for bad in (-1, True, 1.5, "10"):
        with pytest.raises(ValueError, match="Archive.keep_bytes"):
            Archive(keep_bytes=bad)
    for bad in (-1.0, float("nan"), float("inf"), False, "1"):
        with pytest.raises(ValueError, match="Archive.keep_seconds"):
            Archive(keep_seconds=bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Archive().keep_bytes = 3


def test_archive_option_is_checked(tmp_path):
    with pytest.raises(TypeError, match="archive must be an eventlog.Archive or None, got dict"):
        EventLog.open(tmp_path / "log", archive={"keep_bytes": 1})
    assert not (tmp_path / "log").exists()


def test_format_version_is_2():
    assert FORMAT_VERSION == 2


def test_compaction_writes_named_chained_segments(tmp_path, small_segments):
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        _fill(log, 60)
        checksums = {h.index: h.checksum for h in log.headers()}
        log.compact_through(40)
        names = _segments(path)
        assert len(names) >= 3, "a 4 KiB target must split 40 entries of ~350 bytes"
        assert names[0].first == 1 and names[-1].last == 40
        assert all(a.last + 1 == b.first for a, b in zip(names, names[1:])), names
        for name in names:
            assert (path / "archive" / name.name).name == f"{name.first:020d}-{name.last:020d}.seg"
            loaded = segment.read_segment(path / "archive" / name.name, name)
            # the chain continues: each segment's seed is the checksum of the entry before it
            assert loaded.prev_checksum == (checksums[name.first - 1] if name.first > 1 else 0)
            assert loaded.last_time_ns == log.entry(name.last).time_ns
        assert not [n for n in os.listdir(path / "archive") if n.endswith(".tmp")]
        assert log.verify().segments == len(names)


def test_keep_bytes_deletes_whole_oldest_segments(tmp_path, small_segments):
    path = tmp_path / "log"
    with EventLog.open(path, archive=Archive()) as log:
        _fill(log, 100)
        log.compact_through(80)
        names = _segments(path)
        sizes = [(path / "archive" / n.name).stat().st_size for n in names]
    keep = sum(sizes[-2:])  # room for exactly the two newest segments
    with EventLog.open(path, archive=Archive(keep_bytes=keep)) as log:
        _fill(log, 1)
        log.compact_through(81)  # seals entry 81 and applies the policy
        kept = _segments(path)
        assert sum((path / "archive" / n.name).stat().st_size for n in kept) <= keep
        assert kept[-1].last == 81 and len(kept) < len(names) + 1
        first = kept[0].first
        assert first > 1 and first in {n.first for n in names}, "only whole segments are deleted"
        assert log.first_index == first and log.live_first_index == 82
        with pytest.raises(CompactedError):
            log.entry(first - 1)
        assert log.term_at(first - 1) == log.term_at(first)  # the new boundary answers
        assert [e.payload for e in log.entries()] == [_payload(i) for i in range(first, 102)]
        report = log.verify()
        assert report.ok and (report.first_index, report.checked) == (first, 102 - first)
    with EventLog.open(path, readonly=True) as reader:
        assert reader.first_index == first and reader.entry(first).payload == _payload(first)


def test_keep_seconds_deletes_segments_older_than_the_limit(tmp_path, small_segments, monkeypatch):
    class Clock:
        now = 1_000_000 * 10**9

        @classmethod
        def time_ns(cls):
            return cls.now

    monkeypatch.setattr(writer_module, "time", Clock)  # the entries' append times
    monkeypatch.setattr(sealing, "time", Clock)  # retention's "now"
    path = tmp_path / "log"
    with EventLog.open(path, archive=Archive(keep_seconds=3600)) as log:
        _fill(log, 30)
        log.compact_through(30)  # all younger than an hour: kept
        old = _segments(path)
        assert log.first_index == 1 and old[-1].last == 30
        Clock.now += 2 * 3600 * 10**9
        _fill(log, 30)
        log.compact_through(50)
        assert log.first_index == 31, "every segment of the old entries went, no new one"
        assert _segments(path)[0].first == 31
        assert [e.payload["i"] for e in log.entries()] == list(range(31, 61))
        assert log.verify().ok


def test_archive_none_deletes_history_and_the_segments(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        _fill(log, 20)
        log.compact_through(10)
        assert _segments(path) and log.first_index == 1
    with EventLog.open(path, archive=None) as log:
        log.compact_through(15)
        assert (log.first_index, log.live_first_index) == (16, 16)
        assert _segments(path) == []
        with pytest.raises(CompactedError):
            log.entry(5)
        assert log.term_at(15) == 1 and log.verify().ok


def test_keep_bytes_zero_keeps_nothing_but_the_boundary(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path, archive=Archive(keep_bytes=0)) as log:
        _fill(log, 20)
        log.compact_through(12)
        assert (log.first_index, log.live_first_index) == (13, 13) and _segments(path) == []
        assert log.term_at(12) == 1 and log.verify().ok


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("lock.mdb", "*.lock"))


def test_a_segment_whose_entries_are_still_live_is_read_once_then_cleaned(tmp_path):
    """The state a crash between the seal and the LMDB drop leaves (FORMAT.md, Sealing)."""
    before, after = tmp_path / "before", tmp_path / "after"
    with EventLog.open(before) as log:
        _fill(log, 10)
    _copy(before, after)
    with EventLog.open(after) as log:
        log.compact_through(6)
    leftover = _segments(after)
    (before / "archive").mkdir()
    shutil.copy(after / "archive" / leftover[0].name, before / "archive")
    (before / "archive" / ".00000000000000000001-00000000000000000006.seg.tmp").write_bytes(b"half")
    with EventLog.open(before, readonly=True) as reader:
        assert (reader.first_index, reader.live_first_index) == (1, 1)
        assert [e.index for e in reader.entries()] == list(range(1, 11))  # nothing read twice
        report = reader.verify()
        assert report.ok and report.checked == 10 and report.segments == 0
    with EventLog.open(before) as log:  # the writer removes what the crash left
        assert os.listdir(before / "archive") == []
        log.compact_through(6)
        assert [n.name for n in _segments(before)] == [n.name for n in leftover]
        assert (before / "archive" / leftover[0].name).read_bytes() == (after / "archive" / leftover[0].name).read_bytes()


def test_a_segment_below_the_archive_is_ignored_then_cleaned(tmp_path, small_segments):
    """The state a crash between retention's commit and its unlink leaves."""
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        _fill(log, 40)
        log.compact_through(30)
    doomed = _segments(path)[0]
    saved = (path / "archive" / doomed.name).read_bytes()
    with EventLog.open(path, archive=Archive(keep_bytes=1)) as log:
        log.compact_through(31)
        first = log.first_index
    (path / "archive" / doomed.name).write_bytes(saved)  # "not yet unlinked"
    with EventLog.open(path, readonly=True) as reader:
        assert reader.first_index == first > doomed.last
        assert reader.verify().ok
        with pytest.raises(CompactedError):
            reader.entry(doomed.first)
    EventLog.open(path).close()
    assert not (path / "archive" / doomed.name).exists()


def _make_v1(path):
    """A version-1 log (entries 4..8 live, 1..3 deleted), as format version 1 wrote it."""
    with EventLog.open(path, archive=None) as log:
        _fill(log, 8)
        log.compact_through(3)
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        for key in (b"archive_first", b"archive_boundary_term", b"archive_boundary_checksum"):
            assert txn.delete(key)
        txn.put(b"format", struct.pack(">I", 1))
    env.close()


def _format(path) -> int:
    env = lmdb.open(str(path), max_dbs=2, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"meta", create=False)) as txn:
        version = struct.unpack(">I", txn.get(b"format"))[0]
    env.close()
    return version


def test_a_version_1_log_reads_and_a_writer_upgrades_it(tmp_path):
    path = tmp_path / "log"
    _make_v1(path)
    with EventLog.open(path, readonly=True) as reader:
        assert (reader.first_index, reader.live_first_index, reader.last_index) == (4, 4, 8)
        assert [e.payload for e in reader.entries()] == [_payload(i) for i in range(4, 9)]
        assert reader.term_at(3) == 1 and reader.verify().ok
    assert _format(path) == 1, "a reader never writes"
    EventLog.open(path).close()
    assert _format(path) == 2
    with EventLog.open(path) as log:
        assert (log.first_index, log.live_first_index) == (4, 4)
        log.compact_through(6)  # the archive starts where version 1's deletion stopped
        assert (log.first_index, log.live_first_index) == (4, 7)
        assert [e.index for e in log.entries()] == list(range(4, 9))
        with pytest.raises(CompactedError):
            log.entry(3)
        assert log.term_at(3) == 1 and log.verify().ok


def test_a_truncation_while_entries_are_sealed_makes_the_compaction_seal_again(tmp_path, monkeypatch):
    """Sealing holds only the compaction lock: a truncation may rewrite the entries being
    sealed. The drop notices (entry `through` is not the sealed one), removes the stale
    segments and seals again; nothing stale is ever archived."""
    path = tmp_path / "log"
    log = EventLog.open(path)
    _fill(log, 10)
    real_seal = sealing.Sealer.seal
    calls = []

    def seal_then_rewrite(self, first, through, prev_term, prev_checksum):
        sealed = real_seal(self, first, through, prev_term, prev_checksum)
        if not calls:  # the first attempt: entries 6.. are rewritten under it
            log.truncate_after(5)
            log.append_many([("rewritten", {"i": i}) for i in range(6, 11)])
        calls.append(sealed.names)
        return sealed

    monkeypatch.setattr(sealing.Sealer, "seal", seal_then_rewrite)
    try:
        log.compact_through(8)
        assert len(calls) == 2, "the stale seal was not detected"
        assert (log.first_index, log.live_first_index) == (1, 9)
        assert [e.op for e in log.entries()] == ["step"] * 5 + ["rewritten"] * 5
        assert _segments(path) == calls[1]
        assert log.verify().ok
    finally:
        log.close()


@pytest.mark.parametrize("record_name, value", [
    (b"archive_first", b"garbage"), (b"archive_boundary_checksum", b""), (b"archive_first", struct.pack(">Q", 99)),
])
def test_a_damaged_archive_record_is_damage_naming_it(tmp_path, record_name, value):
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        _fill(log, 10)
        log.compact_through(5)
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(record_name, value)
    env.close()
    with EventLog.open(path, readonly=True) as reader:
        report = reader.verify()
        assert not report.ok and report.damage[0].index == 0
        expected = "archive starts at 99" if value == struct.pack(">Q", 99) else record_name.decode()
        assert expected in report.damage[0].reason, report.damage[0].reason
        with pytest.raises(LogError, match=expected):
            list(reader.entries())


def test_segments_lists_the_archive_for_reports(tmp_path, small_segments):
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        assert log.segments() == []
        _fill(log, 30)
        log.compact_through(20)
        listed = log.segments()
        assert [(s.first, s.last) for s in listed] == [(n.first, n.last) for n in _segments(path)]
        assert listed[0].first == 1 and listed[-1].last == 20
        assert all(s.size == s.path.stat().st_size > segment.HEADER_SIZE for s in listed)
        (path / "archive" / segment.SegmentName(21, 25).name).write_bytes(b"leftover")  # still live: not listed
        assert log.segments() == listed
    with EventLog.open(path, readonly=True) as reader:
        assert reader.segments() == listed
