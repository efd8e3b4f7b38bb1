"""Merging small archive segments (FORMAT.md, "Merging"): a log compacted after every few
entries keeps a bounded number of files, reads the same history, and a crash or damage
anywhere in a merge loses nothing. Kills during merges are in tests/crash/test_archive.py."""

from __future__ import annotations

import os
import random
import shutil


from eventlog import Archive, EventLog, segment
from eventlog import merging, sealing
from eventlog.archive import list_segments


def _payload(i: int) -> dict:
    return {"i": i, "pad": bytes([i % 251]) * (100 + i * 37 % 200)}


def _segments(path):
    return list_segments(path / "archive")


def _append_and_compact(log, count: int, every: int) -> None:
    """`count` appends, compacting through two entries before the last every `every` appends."""
    for _ in range(count):
        index = log.append("step", _payload(log.last_index + 1))
        if index % every == 0:
            log.compact_through(index - 2)


def _bound(compactions: int) -> int:
    """Segments merge as a base-MERGE_FANOUT counter carries when sizes are alike: at most
    MERGE_FANOUT - 1 files per digit."""
    digits = 1
    while merging.MERGE_FANOUT ** digits <= compactions:
        digits += 1
    return (merging.MERGE_FANOUT - 1) * digits


def _read_all(path):
    with EventLog.open(path, readonly=True) as log:
        report = log.verify()
        entries = list(log.entries())
        picks = random.Random(7).sample(range(1, log.last_index + 1), min(50, log.last_index))
        singles = {i: log.entry(i).payload for i in picks}
    return report, entries, singles


def test_frequent_compactions_keep_a_bounded_number_of_files_and_the_same_history(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path, durability="os") as log:
        _append_and_compact(log, 3000, every=5)
    names = _segments(path)
    # Without merging every compaction leaves its own file: 599 here.
    assert len(names) <= _bound(3000 // 5), [(n.first, n.last) for n in names]
    assert all(b.first == a.last + 1 for a, b in zip(names, names[1:])), "segments overlap or leave a gap"
    assert names[0].first == 1
    report, entries, singles = _read_all(path)
    assert report.ok, str(report)
    assert [e.index for e in entries] == list(range(1, 3001))
    assert all(e.payload == _payload(e.index) for e in entries)
    assert all(payload == _payload(i) for i, payload in singles.items())


def test_a_merge_never_makes_a_body_larger_than_the_target(tmp_path, monkeypatch):
    monkeypatch.setattr(segment, "TARGET_RAW", 6000)  # ~20 entries: 8 compactions of 4 do not fit
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        _append_and_compact(log, 400, every=4)
    names = _segments(path)
    assert len(names) > 1
    for name in names:
        raw, _ = segment.read_raw_size(path / "archive" / name.name, name)
        assert raw <= 6000 or name.first == name.last
    report, entries, _ = _read_all(path)
    assert report.ok and [e.payload for e in entries] == [_payload(i) for i in range(1, 401)]


def test_a_crash_between_a_merge_and_its_unlinks_reads_alike_and_is_cleaned_up(tmp_path, monkeypatch):
    path = tmp_path / "log"
    saved = tmp_path / "saved"
    saved.mkdir()
    real_remove = sealing.Sealer.remove
    kept: list = []

    def remove_but_keep_copies(self, names):
        # What a kill right after the merged file's rename leaves: the merged file and the
        # segments it replaced, side by side.
        for name in names:
            if (self.directory / name.name).exists():
                shutil.copy2(self.directory / name.name, saved / name.name)
                kept.append(name)
        real_remove(self, names)

    monkeypatch.setattr(sealing.Sealer, "remove", remove_but_keep_copies)
    with EventLog.open(path) as log:
        _append_and_compact(log, 40, every=2)  # 8 two-entry compactions: one merge
    monkeypatch.setattr(sealing.Sealer, "remove", real_remove)
    assert kept, "no merge happened"
    for name in kept:
        shutil.copy2(saved / name.name, path / "archive" / name.name)
    overlapping = _segments(path)
    assert any(a.last >= b.first for a, b in zip(overlapping, overlapping[1:]))
    report, entries, singles = _read_all(path)  # a reader beside the leftovers
    assert report.ok, str(report)
    assert [e.payload for e in entries] == [_payload(i) for i in range(1, 41)]
    assert all(payload == _payload(i) for i, payload in singles.items())
    with EventLog.open(path) as log:  # the next writer's compaction removes them
        _append_and_compact(log, 4, every=2)
    names = _segments(path)
    assert all(b.first == a.last + 1 for a, b in zip(names, names[1:])), names
    report, entries, _ = _read_all(path)
    assert report.ok and [e.payload for e in entries] == [_payload(i) for i in range(1, 45)]


def test_leftovers_are_kept_when_the_merged_file_is_damaged(tmp_path, monkeypatch):
    path = tmp_path / "log"
    with EventLog.open(path, archive=Archive()) as log:
        _append_and_compact(log, 16, every=2)  # seven two-entry segments, 1..14
    smalls = _segments(path)
    assert len(smalls) == 7
    copies = {n: (path / "archive" / n.name).read_bytes() for n in smalls}
    with EventLog.open(path) as log:
        _append_and_compact(log, 2, every=2)  # the eighth: merged into 1..16
    merged = _segments(path)
    assert [(n.first, n.last) for n in merged] == [(1, 16)]
    for name, data in copies.items():  # the crash's leftovers ...
        (path / "archive" / name.name).write_bytes(data)
    target = path / "archive" / merged[0].name  # ... and the merged file damaged
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x10
    target.write_bytes(bytes(data))
    with EventLog.open(path) as log:
        log.append("step", _payload(19))
        log.append("step", _payload(20))
        log.compact_through(18)
    left = {(n.first, n.last) for n in _segments(path)}
    assert {(n.first, n.last) for n in smalls} <= left, "clean removed the only good copies"


def test_a_damaged_run_is_not_merged_and_stays_reported(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        _append_and_compact(log, 16, every=2)
    names = _segments(path)
    assert len(names) == 7
    victim = path / "archive" / names[3].name
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x01
    victim.write_bytes(bytes(data))
    with EventLog.open(path) as log:
        _append_and_compact(log, 2, every=2)
    assert len(_segments(path)) == 8, "a run holding a damaged segment was rewritten"
    with EventLog.open(path, readonly=True) as log:
        report = log.verify()
    assert not report.ok and any(d.index == names[3].first for d in report.damage), str(report)


def test_archive_none_and_retention_still_hold(tmp_path):
    path = tmp_path / "none"
    with EventLog.open(path, archive=None) as log:
        _append_and_compact(log, 100, every=2)
    assert _segments(path) == []
    path = tmp_path / "bytes"
    with EventLog.open(path, archive=Archive(keep_bytes=2_000)) as log:
        _append_and_compact(log, 600, every=3)
        first = log.first_index
        assert first > 1
        assert [e.index for e in log.entries()] == list(range(first, 601))
    total = sum(os.path.getsize(path / "archive" / n.name) for n in _segments(path))
    biggest = max(os.path.getsize(path / "archive" / n.name) for n in _segments(path))
    assert total <= 2_000 + biggest


def test_the_merge_rule():
    fan = merging.MERGE_FANOUT
    assert merging.newest_to_merge([5] * (fan - 1)) == 0
    assert merging.newest_to_merge([5] * fan) == fan
    assert merging.newest_to_merge([10**6] + [5] * fan) == fan  # only the newest are looked at
    assert merging.newest_to_merge([100] + [5] * (fan - 1)) == 0  # one dominates: merging would barely grow it
    assert merging.newest_to_merge([35] + [5] * (fan - 1)) == fan
    # Sizes that alternate between two tiers still merge (a tiered rule would stall here).
    assert merging.newest_to_merge([3, 40] * (fan // 2)) == fan
