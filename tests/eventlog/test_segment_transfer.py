"""Shipping and restoring sealed segments: EventLog.sealed_range / segment_ranges,
eventlog.segment_bounds and eventlog.create_from_segments (FORMAT.md, "Shipping and
restoring segments"). Damage is refused with a named error and leaves nothing that opens
as a log; hostile headers are refused before any allocation."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
import xxhash

import eventlog
from eventlog import (
    CompactedError, EventLog, FormatError, SegmentDamage, SegmentRejectedError, create_from_segments,
    segment, segment_bounds, transfer,
)

pytestmark = pytest.mark.timeout(60)

TARGET = 6000  # bytes per shipped piece: ~20 entries of the payload below, so a log ships as many pieces


def _payload(i: int) -> dict:
    return {"i": i, "pad": bytes([i % 251]) * 250}


def _source(path, *, compact_at=70, entries=120, archive=eventlog.Archive()):
    """A log written by three writers (terms 1..3), compacted into the archive through
    `compact_at`, the rest live in LMDB. Returned closed."""
    per = entries // 3
    for k in range(3):
        with EventLog.open(path, archive=archive) as log:
            start = log.last_index + 1
            stop = entries + 1 if k == 2 else start + per
            log.append_many([("step", _payload(i)) for i in range(start, stop)])
            if k == 2:
                log.compact_through(compact_at)
    return path


def _pieces(log, first=None, last=None):
    first = log.first_index if first is None else first
    last = log.last_index if last is None else last
    return [log.sealed_range(a, b) for a, b in log.segment_ranges(first, last, TARGET)]


def _snapshot(log):
    """Everything a restore must reproduce: entries (terms, times, checksums, payloads), the boundary."""
    first = log.first_index
    return (first, log.last_index, log.term_at(first - 1), log.checksum_at(first - 1), list(log.entries()))


def _assert_not_a_log(path):
    """Nothing at `path` opens as a log, readonly or as a writer."""
    with pytest.raises(FormatError):
        EventLog.open(path, readonly=True)
    if path.exists():
        assert not (path / "data.mdb").exists()
        assert not any(p.suffix == ".seg" for p in path.rglob("*"))


@pytest.fixture
def source(tmp_path):
    path = _source(tmp_path / "source")
    with EventLog.open(path, readonly=True) as log:
        assert (log.first_index, log.live_first_index, log.last_index, log.term) == (1, 71, 120, 3)
        yield log


def test_round_trip_archive_and_lmdb(source, tmp_path):
    pieces = _pieces(source)
    assert len(pieces) >= 5
    bounds = [segment_bounds(p) for p in pieces]
    assert bounds[0][:2] == (1, bounds[0][1]) and bounds[-1][1] == 120
    for (f0, l0, _, c0), (f1, _, p1, _) in zip(bounds, bounds[1:]):
        assert f1 == l0 + 1 and p1 == c0  # each piece continues the one before
    # A piece spanning the archive/LMDB border (70 | 71) exists: both tiers are read.
    assert any(f <= 70 < l for f, l, _, _ in bounds)
    assert all(source.checksum_at(l) == c for _, l, _, c in bounds)

    target = tmp_path / "restored"
    create_from_segments(target, pieces, term=source.term)
    assert sorted(p.name for p in target.iterdir()) == ["archive", "data.mdb"]
    assert len(list((target / "archive").iterdir())) == len(pieces)
    with EventLog.open(target, readonly=True) as restored:
        assert restored.term == 3
        assert restored.live_first_index == 121
        assert _snapshot(restored) == _snapshot(source)
        report = restored.verify()
        assert report.ok and report.checked == 120 and report.segments == len(pieces)
        assert report.terms == source.verify().terms == ((1, 1), (2, 41), (3, 81))
        # The restored log ships the same bytes again.
        assert _pieces(restored) == pieces

    with EventLog.open(target) as writer:
        assert writer.term == 4
        assert writer.append("after", {"x": 1}) == 121
        assert writer.entry(121).term == 4
        assert writer.checksum_at(120) == source.checksum_at(120)
        writer.compact_through(121)  # the restored archive takes further compactions
        assert writer.verify().ok
    with EventLog.open(target) as writer:
        assert writer.term == 5
        assert writer.append("again") == 122
        report = writer.verify()
        assert report.ok and report.checked == 122
        assert report.terms == ((1, 1), (2, 41), (3, 81), (4, 121), (5, 122))


def test_restore_starting_above_one(source, tmp_path):
    pieces = _pieces(source, first=33)
    create_from_segments(tmp_path / "r", pieces, term=7)
    with EventLog.open(tmp_path / "r", readonly=True) as restored:
        assert (restored.first_index, restored.last_index, restored.term) == (33, 120, 7)
        assert restored.term_at(32) == source.term_at(32) == 1
        assert restored.checksum_at(32) == source.checksum_at(32)
        with pytest.raises(CompactedError):
            restored.entry(32)
        with pytest.raises(CompactedError):
            restored.term_at(31)
        assert list(restored.entries()) == list(source.entries(33))
        assert restored.verify().ok and restored.verify().boundary_term == 1
    with EventLog.open(tmp_path / "r") as writer:
        assert writer.term == 8 and writer.append("next") == 121
        assert writer.verify().ok


def test_no_segments_makes_an_empty_log_with_the_term(tmp_path):
    create_from_segments(tmp_path / "empty", [], term=4)
    with EventLog.open(tmp_path / "empty", readonly=True) as log:
        assert (log.first_index, log.last_index, log.term) == (1, 0, 4)
    with EventLog.open(tmp_path / "empty") as log:
        assert log.term == 5 and log.append("a") == 1 and log.verify().ok


def test_sealed_range_on_a_writer_and_its_edges(tmp_path, monkeypatch):
    with EventLog.open(tmp_path / "w", durability="group") as log:
        log.append_many([("step", _payload(i)) for i in range(1, 31)])
        log.flush()
        data = log.sealed_range(5, 30)
        assert segment_bounds(data) == (5, 30, log.checksum_at(4), log.checksum_at(30))
        one = log.sealed_range(7, 7)
        assert segment_bounds(one)[:2] == (7, 7)
        with pytest.raises(ValueError, match="first is after last"):
            log.sealed_range(9, 8)
        with pytest.raises(IndexError):
            log.sealed_range(0, 3)
        with pytest.raises(IndexError, match="durable_index 30"):
            log.sealed_range(1, 31)
        with pytest.raises(TypeError):
            log.sealed_range(1.0, 3)
        monkeypatch.setattr(segment, "MAX_RAW", 1000)  # several entries over the limit: split first
        with pytest.raises(ValueError, match="exceed 1000 bytes at entry 8"):
            log.sealed_range(5, 30)
        assert segment_bounds(log.sealed_range(5, 5))[:2] == (5, 5)  # one entry alone always fits
        ranges = log.segment_ranges(5, 30, 10**9)  # capped at the limit
        assert len(ranges) > 1 and [segment_bounds(log.sealed_range(a, b))[:2] for a, b in ranges] == ranges
        monkeypatch.undo()
    with EventLog.open(tmp_path / "d", archive=None) as log:
        log.append_many([("step", _payload(i)) for i in range(1, 11)])
        log.compact_through(4)
        with pytest.raises(CompactedError):
            log.sealed_range(3, 6)
        assert segment_bounds(log.sealed_range(5, 10))[2] == log.checksum_at(4)


def test_segment_ranges_split_by_size(source):
    ranges = source.segment_ranges(1, 120, TARGET)
    assert ranges[0][0] == 1 and ranges[-1][1] == 120
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))
    assert all(len(source.sealed_range(a, b)) < TARGET for a, b in ranges)  # compressed <= raw <= TARGET
    assert source.segment_ranges(1, 120, 1) == [(i, i) for i in range(1, 121)]
    assert source.segment_ranges(5, 4) == []
    assert source.segment_ranges(1, 120) == [(1, 120)]  # the 16 MiB default
    assert eventlog.SEGMENT_TARGET_BYTES == 16 * 2**20


# ---------------------------------------------------------------------- refusals


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x10
    return bytes(out)


@pytest.fixture
def foreign(tmp_path):
    """Pieces of another log with the same indexes and ranges and a different history."""
    path = tmp_path / "foreign"
    with EventLog.open(path) as log:
        # The same ops and payload sizes (so the pieces have the same ranges), other times and terms.
        log.append_many([("step", _payload(i)) for i in range(1, 121)])
        yield _pieces(log)


def _damaged(kind, pieces, foreign):
    """(segments, position refused, its range) for one kind of damage."""
    rng = [segment_bounds(p)[:2] for p in pieces]
    if kind == "flipped_body":
        return [pieces[0], _flip(pieces[1], len(pieces[1]) - 5), *pieces[2:]], 1, rng[1]
    if kind == "flipped_header":
        return [pieces[0], pieces[1], _flip(pieces[2], 38), *pieces[3:]], 2, rng[2]
    if kind == "truncated":
        return [*pieces[:-1], pieces[-1][:-100]], len(pieces) - 1, rng[-1]
    if kind == "reordered":
        return [pieces[1], pieces[0], *pieces[2:]], 1, rng[0]
    if kind == "overlapping":
        return [pieces[0], pieces[0], *pieces[1:]], 1, rng[0]
    if kind == "gapped":
        return [pieces[0], *pieces[2:]], 1, rng[2]
    if kind == "foreign_chain":
        other = {segment_bounds(p)[:2]: p for p in foreign}
        swap = next(i for i in range(1, len(pieces)) if rng[i] in other)
        return [*pieces[:swap], other[rng[swap]], *pieces[swap + 1:]], swap, rng[swap]
    raise AssertionError(kind)


REASONS = {"flipped_body": "checksum mismatch", "flipped_header": "checksum mismatch",
           "truncated": "header declares", "reordered": "overlaps segment 0", "overlapping": "overlaps segment 0",
           "gapped": "are missing after segment 0", "foreign_chain": "a chain break"}


@pytest.mark.parametrize("kind", ["flipped_body", "flipped_header", "truncated", "reordered", "overlapping",
                                  "gapped", "foreign_chain"])
@pytest.mark.parametrize("existing_empty_dir", [False, True])
def test_damage_is_refused_and_nothing_opens(source, foreign, tmp_path, kind, existing_empty_dir):
    pieces = _pieces(source)
    segments, position, (first, last) = _damaged(kind, pieces, foreign)
    target = tmp_path / "deep" / "restored"
    if existing_empty_dir:
        target.mkdir(parents=True)
    with pytest.raises(SegmentRejectedError) as caught:
        create_from_segments(target, segments, term=3)
    err = caught.value
    assert isinstance(err, SegmentDamage) and isinstance(err, eventlog.LogError)
    assert (err.position, err.first, err.last) == (position, first, last)
    assert f"segment {position} (entries {first}..{last}) refused" in str(err)
    assert REASONS[kind] in err.reason
    if existing_empty_dir:
        assert list(target.iterdir()) == []
    else:
        assert not (tmp_path / "deep").exists()
    _assert_not_a_log(target)
    # The undamaged pieces still restore into the same place.
    create_from_segments(target, pieces, term=3)
    with EventLog.open(target, readonly=True) as restored:
        assert restored.verify().ok and restored.last_index == 120


def test_segment_bounds_names_the_damage(source):
    data = source.sealed_range(1, 20)
    with pytest.raises(SegmentDamage, match=r"segment of entries 1\.\.20: checksum mismatch"):
        segment_bounds(_flip(data, 100))
    with pytest.raises(SegmentDamage, match="shorter than the 80-byte segment header"):
        segment_bounds(data[:50])
    with pytest.raises(SegmentDamage, match="magic"):
        segment_bounds(b"x" * 200)


def _reseal(data: bytes, **fields) -> bytes:
    """Segment bytes with header fields replaced and the checksum recomputed: a lying but
    self-consistent header, as a hostile object would carry."""
    names = ["magic", "version", "flags", "codec", "first", "last", "prev_term", "prev_checksum",
             "last_time", "raw_size", "stored_size", "checksum"]
    values = dict(zip(names, segment.HEADER.unpack_from(data)))
    values.update(fields)
    head = segment.HEADER.pack(*(values[n] for n in names))[:segment.CHECKED]
    body = data[segment.HEADER_SIZE:]
    hasher = xxhash.xxh3_64(head)
    hasher.update(body)
    return head + struct.pack(">Q", hasher.intdigest()) + body


@pytest.mark.parametrize("fields,reason", [
    ({"raw_size": 64 * 2**30}, "declares a body of 68719476736 bytes"),
    ({"raw_size": 64 * 2**30, "last": 1}, "declares a body of 68719476736 bytes"),  # one entry: still refused
    ({"stored_size": 64 * 2**30}, "header declares"),
    ({"first": 0}, "impossible range"),
    ({"first": 30, "last": 2}, "impossible range"),
])
def test_hostile_header_is_refused_before_allocation(source, tmp_path, fields, reason):
    data = _reseal(source.sealed_range(1, 20), **fields)
    tracemalloc.start()
    try:
        with pytest.raises(SegmentDamage, match=reason):
            segment_bounds(data)
        with pytest.raises(SegmentRejectedError, match=reason):
            create_from_segments(tmp_path / "r", [data], term=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # the 64 GiB it declares is never allocated (the segment itself is ~6 KiB)
    _assert_not_a_log(tmp_path / "r")


def test_body_larger_than_declared_is_refused(source):
    data = source.sealed_range(1, 20)
    raw = segment.HEADER.unpack_from(data)[9]
    with pytest.raises(SegmentDamage, match=f"more than the {raw - 10} bytes"):
        segment_bounds(_reseal(data, raw_size=raw - 10))


# ---------------------------------------------------------------------- the target directory


def test_existing_log_or_other_content_is_file_exists(source, tmp_path):
    pieces = _pieces(source)
    with pytest.raises(FileExistsError, match="already holds an event log"):
        create_from_segments(source.path, pieces, term=3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="non-empty directory"):
        create_from_segments(tmp_path / "busy", pieces, term=3)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not a directory"):
        create_from_segments(tmp_path / "file", pieces, term=3)


def test_term_and_arguments_are_checked(source, tmp_path):
    pieces = _pieces(source)
    with pytest.raises(ValueError, match="term 2 is lower than the term 3 of entry 120"):
        create_from_segments(tmp_path / "r", pieces, term=2)
    with pytest.raises(TypeError):
        create_from_segments(tmp_path / "r", pieces, term=True)
    with pytest.raises(ValueError):
        create_from_segments(tmp_path / "r", pieces, term=-1)
    with pytest.raises(TypeError, match="not one bytes object"):
        create_from_segments(tmp_path / "r", pieces[0], term=3)
    with pytest.raises(TypeError, match="segment 1 is str"):
        create_from_segments(tmp_path / "r", [pieces[0], "x"], term=3)
    assert not (tmp_path / "r").exists()


def test_failure_while_writing_leaves_nothing(source, tmp_path, monkeypatch):
    pieces = _pieces(source)

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transfer, "_write_meta", fail)
    with pytest.raises(OSError, match="No space"):
        create_from_segments(tmp_path / "r", pieces, term=3)
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    create_from_segments(tmp_path / "r", pieces, term=3)
    with EventLog.open(tmp_path / "r", readonly=True) as restored:
        assert restored.verify().ok


def test_leftovers_of_an_interrupted_create_are_not_a_log_and_are_replaced(source, tmp_path):
    """A crash before data.mdb is renamed in leaves .creating/ and archive/: never a log; a new create replaces them."""
    pieces = _pieces(source)
    target = tmp_path / "r"
    create_from_segments(target, pieces, term=3)
    staging = target / transfer.STAGING_DIR
    staging.mkdir()
    (target / "data.mdb").rename(staging / "data.mdb")
    with pytest.raises(FormatError):
        EventLog.open(target, readonly=True)
    with pytest.raises(FormatError, match="non-empty directory that is not an event log"):
        EventLog.open(target)  # a writer never initialises an empty log over the segments
    create_from_segments(target, pieces[:2], term=3)
    with EventLog.open(target, readonly=True) as restored:
        assert restored.last_index == segment_bounds(pieces[1])[1] and restored.verify().ok
        assert len(restored.segments()) == 2
