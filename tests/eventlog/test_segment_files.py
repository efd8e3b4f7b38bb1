"""Segment files as a replica ships and restores them: eventlog.read_segment_file,
segment_identity, check_segment_file and create_from_segment_files (FORMAT.md, "Shipping
and restoring segments"). Same checks as for bytes, one decompression each, in bounded
memory; damage is named and leaves nothing that opens as a log."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from eventlog import (
    EventLog, SegmentDamage, SegmentRejectedError, check_segment_file, create_from_segment_files,
    create_from_segments, read_segment_file, segment, segment_bounds, segment_identity,
)

from .test_segment_transfer import _assert_not_a_log, _pieces, _reseal, _snapshot, _source

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pieces(tmp_path):
    with EventLog.open(_source(tmp_path / "source"), readonly=True) as log:
        return _pieces(log), _snapshot(log)


def _files(tmp_path, pieces, name="in"):
    directory = tmp_path / name
    directory.mkdir()
    paths = []
    for n, data in enumerate(pieces):
        path = directory / f"{n:03d}.seg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_a_file_checks_as_its_bytes_do_and_tells_the_checksum_at_an_index(tmp_path, pieces):
    data, _ = pieces
    for path, piece in zip(_files(tmp_path, data), data):
        first, last, prev, last_checksum = segment_bounds(piece)
        checked, at = check_segment_file(path, last)
        assert (checked.first, checked.last, checked.prev_checksum, checked.last_checksum) == (
            first, last, prev, last_checksum)
        assert at == last_checksum
        assert check_segment_file(path, first - 1)[1] == prev
        assert check_segment_file(path)[1] is None
        assert segment_identity(piece)[:3] == (first, last, prev)


def test_create_from_files_is_the_log_create_from_bytes_makes(tmp_path, pieces):
    data, expected = pieces
    files = _files(tmp_path, data)
    created = create_from_segment_files(tmp_path / "a", files, term=3, checksum_at=100)
    create_from_segments(tmp_path / "b", data, term=3)
    with EventLog.open(tmp_path / "a", readonly=True) as a, EventLog.open(tmp_path / "b", readonly=True) as b:
        assert _snapshot(a) == _snapshot(b) == expected
        assert created.checksum_at == a.checksum_at(100)
    assert len(created.segments) == len(files)
    archived = sorted((tmp_path / "a" / "archive").iterdir())
    assert [p.read_bytes() for p in archived] == data
    assert all(f.stat().st_ino == p.stat().st_ino for f, p in zip(files, archived))  # linked, not copied


@pytest.mark.parametrize("damage", ["flip", "swap", "gap"])
def test_a_damaged_or_unchained_file_is_refused_and_nothing_is_created(tmp_path, pieces, damage):
    data = list(pieces[0])
    if damage == "flip":
        flipped = bytearray(data[2])
        flipped[-5] ^= 0x40
        data[2] = bytes(flipped)
        reason = "checksum mismatch"
    elif damage == "swap":
        data[1], data[2] = data[2], data[1]
        reason = "missing after segment 0"
    else:
        del data[2]
        reason = "are missing after segment 1"
    with pytest.raises(SegmentRejectedError, match=reason) as caught:
        create_from_segment_files(tmp_path / "r", _files(tmp_path, data), term=3)
    assert caught.value.position in (1, 2)
    _assert_not_a_log(tmp_path / "r")


def test_hostile_header_is_refused_before_allocation(tmp_path, pieces):
    hostile = _reseal(pieces[0][0], raw_size=64 * 2**30)
    path = tmp_path / "hostile.seg"
    path.write_bytes(hostile)
    tracemalloc.start()
    try:
        with pytest.raises(SegmentDamage, match="declares a body of 68719476736 bytes"):
            check_segment_file(path)
        with pytest.raises(SegmentDamage, match="declares a body"):
            segment_identity(hostile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_checking_a_file_holds_one_piece_and_one_entry_not_the_body(tmp_path):
    # 24 entries of ~1 MiB each: the body is ~24 MiB; a check holds a few MiB at most.
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        log.append_many([("big", {"pad": os.urandom(2**20)}) for _ in range(24)])
        data = log.sealed_range(1, 24)
    file = tmp_path / "big.seg"
    file.write_bytes(data)
    del data
    tracemalloc.start()
    try:
        checked, _ = check_segment_file(file)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (checked.first, checked.last) == (1, 24)
    assert peak < 8 * 2**20, peak  # a few MiB: pieces and one entry, never the ~24 MiB body


def test_read_segment_file_refuses_what_a_segment_of_its_range_cannot_be(tmp_path, pieces):
    data = pieces[0][0]
    first, last = segment_bounds(data)[:2]
    path = tmp_path / "x.seg"
    path.write_bytes(data)
    assert read_segment_file(path, first, last) == data
    link = tmp_path / "link.seg"
    link.symlink_to(path)
    with pytest.raises(SegmentDamage, match="symbolic link"):
        read_segment_file(link, first, last)
    big = tmp_path / "big.seg"
    with open(big, "wb") as f:
        f.truncate(segment.HEADER_SIZE + segment.stored_bound(segment.MAX_RAW) + 1)  # sparse: no disk used
    with pytest.raises(SegmentDamage, match="more than"):
        read_segment_file(big, 7, 9)
    with pytest.raises(FileNotFoundError):
        read_segment_file(tmp_path / "missing.seg", first, last)


def test_no_files_make_an_empty_log_whose_checksum_at_0_is_0(tmp_path):
    created = create_from_segment_files(tmp_path / "empty", [], term=2, checksum_at=0)
    assert created == ([], 0)
    with EventLog.open(tmp_path / "empty", readonly=True) as log:
        assert (log.first_index, log.last_index, log.checksum_at(0)) == (1, 0, 0)
