"""Shipping and restoring sealed segments (FORMAT.md, "Shipping and restoring segments").

`sealed_range` turns entries of a log, archived or live, into the bytes of one sealed
segment, copied as stored (`seal_range` also says where they sit in the chain, as the
copy verified it); `read_segment_file` gives an archive file's bytes as they are;
`create_from_segments` (bytes) and `create_from_segment_files` (files, in bounded memory)
build a new log directory whose history is a run of them. A segment's bytes are the same
whether they are a file in ``<log>/archive/`` or an object somewhere else, so one set of
checks (segment_checks.py) covers both.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import lmdb

from . import meta, record, segment
from .archive import ARCHIVE_DIR
from .errors import CompactedError, SegmentDamage, SegmentRejectedError
from .locking import fsync_directory, refuse_network_filesystem
from .segment_checks import (CheckedSegment, check_segment, check_segment_file, check_segment_header,
                             declared_range, max_segment_size, open_segment_file)
from .segment import SegmentName

STAGING_DIR = ".creating"  # create_from_segments builds data.mdb here, then renames it into the log
_STAGING_MAP_SIZE = 2**20  # the new environment holds only meta records; a writer's open grows the map


def read_segment_file(path, first: int, last: int) -> bytes:
    """The bytes of the sealed segment file at `path` (an archive file as `EventLog.segments`
    lists it) holding entries first..last, as they are on disk and NOT checked: the caller
    checks them once, with `segment_bounds`, wherever they go.

    Edge cases first: FileNotFoundError when the file is gone (a merge or the retention
    policy removed it since the listing); SegmentDamage for a symlink, anything but a
    regular file, or a file larger than a segment of that range may be (refused by its
    size, unread), or one that shrinks while read. Shipping a file as it is costs one read:
    no decompression, no re-encoding (the replica's segment objects are the same format).
    """
    fd, size = open_segment_file(path, max_segment_size(first, last))
    try:
        # One read of the size fstat gave: the kernel fills it in one call (no pieces joined
        # into a second copy); a file cut meanwhile reads short, and a longer one is checked
        # against its header by the caller.
        data = os.read(fd, size)
        while len(data) < size:
            more = os.read(fd, size - len(data))
            if not more:
                raise SegmentDamage(f"segment file {path}: it ended at byte {len(data)} of the {size} it held")
            data += more
    finally:
        os.close(fd)
    return data


def read_segment_seed(path, first: int, last: int) -> tuple[int, int]:
    """(prev_term, prev_checksum) from the header of the segment file at `path` (entries
    first..last): the term and chained checksum of entry first - 1, read from 80 bytes.

    Edge cases first: FileNotFoundError when it is gone; SegmentDamage for a symlink or a
    non-regular file, a header that is not a segment's for that range or whose sizes are
    not the file's. Only the header is checked (not the file checksum, not the entries):
    an answer for planning, which the full check of the file (`segment_bounds`) confirms
    before anything is built on it.
    """
    fd, size = open_segment_file(path, max_segment_size(first, last))
    try:
        head = os.pread(fd, segment.HEADER_SIZE, 0)
    finally:
        os.close(fd)
    check_segment_header(head, size, first, last)
    fields = segment.HEADER.unpack(head)
    return fields[6], fields[7]


def sealed_range(reader, view, first: int, last: int) -> bytes:
    """The bytes of one sealed segment holding entries first..last of a log (see EventLog.sealed_range)."""
    return seal_range(reader, view, first, last)[0]


def seal_range(reader, view, first: int, last: int) -> tuple[bytes, CheckedSegment]:
    """`sealed_range`'s bytes and where they sit in the log's chain, as sealing them verified
    it (see EventLog.sealed_segment): every entry was checked against the chain from entry
    first - 1 while it was copied, so the CheckedSegment is what `check_segment` of the
    bytes would say, without decompressing them again."""
    for name, value in (("first", first), ("last", last)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"sealed_range: {name} must be an int, got {type(value).__name__}")
    if first > last:
        raise ValueError(f"sealed_range({first}, {last}): first is after last")
    if first < 1:
        raise IndexError(f"sealed_range: log index {first} is out of range (indexes start at 1)")
    oldest, durable = view.first_index, view.durable_index
    if first < oldest:
        raise CompactedError(first, oldest)
    if last > durable:
        raise IndexError(f"sealed_range({first}, {last}): entries after durable_index {durable} "
                         f"(last_index {view.last_index}) are not sealed: they could still be lost")
    prev_term = reader.term_at(first - 1)
    prev_checksum = reader.checksum_at(first - 1)
    limit = segment.raw_limit(first, last)
    values, total, seed, term = [], 0, prev_checksum, prev_term
    for index, value in reader.stored_values(first, last + 1):
        total += segment.LENGTH.size + len(value)
        if total > limit:
            raise ValueError(f"sealed_range({first}, {last}): the body would exceed {limit} bytes at entry "
                             f"{index}, more than one segment may hold; split the range (EventLog.segment_ranges)")
        # Verified against the chain from entry first - 1, so the segment never carries damage.
        _, _, term, _, seed = record.verify_value(index, value, seed)
        values.append(value)
    if len(values) != last - first + 1:
        raise IndexError(f"sealed_range({first}, {last}): entries after {first + len(values) - 1} "
                         "were truncated meanwhile")
    return (segment.encode(first, values, prev_term, prev_checksum),
            CheckedSegment(first, last, prev_term, prev_checksum, term, seed))


def segment_ranges(reader, first: int, last: int, target: int | None) -> list[tuple[int, int]]:
    """Consecutive (first, last) ranges covering first..last, each's body at most `target` bytes
    (segment.TARGET_RAW when None) unless it is one larger entry (see EventLog.segment_ranges)."""
    target = segment.TARGET_RAW if target is None else target
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ValueError(f"segment_ranges: target must be an int >= 1, got {target!r}")
    if first > last:
        return []
    target = min(target, segment.MAX_RAW)
    ranges, start, size = [], first, 0
    for header in reader.headers(first, last + 1, False):
        length = segment.LENGTH.size + record.HEADER_SIZE + len(header.op.encode("utf-8")) + header.payload_size
        if header.index > start and size + length > target:
            ranges.append((start, header.index - 1))
            start, size = header.index, 0
        size += length
    ranges.append((start, last))
    return ranges


# ---------------------------------------------------------------------- restoring


def create_from_segments(path, segments, *, term: int) -> None:
    """Create a NEW log directory at `path` whose history is `segments`. See FORMAT.md.

    Edge cases first:
    - `path` holds a log (a ``data.mdb``), is a file, or is a directory holding anything
      but the leftovers of an interrupted create_from_segments: FileExistsError, nothing
      touched. Leftovers (a ``.creating`` directory and an ``archive/`` beside it, no
      data.mdb) are removed and the log is created again.
    - A network filesystem: LogError, as EventLog.open.
    - `term` not an int >= 0: TypeError/ValueError; lower than the term of the last
      entry: ValueError (the log would hold entries from a term after its own).
    - An element that is not bytes-like: TypeError.
    - A segment that fails any check of `segment_bounds` (hostile headers are refused
      before any allocation), or that does not continue the one before it (a gap, an
      overlap, a prev_term/prev_checksum other than the previous segment's last entry's):
      SegmentRejectedError (a SegmentDamage) naming its position and range. Every
      segment is checked before anything is created, so a refusal writes nothing.
    - No segments: an empty log (first_index 1) whose term is `term`.
    The first segment may start above 1: its prev_term and prev_checksum become the
    log's boundary (first_index = its first, term_at/checksum_at answer at first - 1).
    The segments are written byte for byte into ``path/archive/`` (temp, fsync, rename,
    directory fsync), then the LMDB environment naming them the log's history is built
    under ``path/.creating/`` and renamed into place as ``path/data.mdb`` (then the
    directory is fsynced): a crash at any point leaves no directory that opens as a log.
    Afterwards LMDB holds no entries (live_first_index = last + 1), the stored term is
    `term`, and the next writer's open makes it term + 1. The caller must be the only
    process creating `path`.
    """
    path = Path(path)
    if isinstance(term, bool) or not isinstance(term, int):
        raise TypeError(f"create_from_segments: term must be an int, got {type(term).__name__}")
    if not 0 <= term < 2**64 - 1:
        raise ValueError(f"create_from_segments: term must be >= 0, got {term}")
    if isinstance(segments, (bytes, bytearray, memoryview, str)):
        raise TypeError("create_from_segments: segments must be a list of segment bytes, not one bytes object")
    segments = list(segments)
    for position, data in enumerate(segments):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"create_from_segments: segment {position} is {type(data).__name__}, not bytes")
    checked = _check_run(segments)
    if checked and term < checked[-1].last_term:
        raise ValueError(f"create_from_segments: term {term} is lower than the term {checked[-1].last_term} "
                         f"of entry {checked[-1].last}, the last entry")
    _check_target(path)
    _build(path, segments, checked, term, segment.write_file)


def _check_run(segments: list) -> list[CheckedSegment]:
    """Every segment checked, and each continuing the one before it; SegmentRejectedError otherwise."""
    checked: list[CheckedSegment] = []
    for position, data in enumerate(segments):
        try:
            this = check_segment(data)
        except SegmentDamage as exc:
            raise SegmentRejectedError(position, *declared_range(data), str(exc)) from None
        _check_continues(checked, this, position)
        checked.append(this)
    return checked


def _check_continues(checked: list[CheckedSegment], this: CheckedSegment, position: int) -> None:
    """SegmentRejectedError unless `this` (at `position`) continues the last of `checked`."""
    if not checked:
        return
    prev = checked[-1]
    reason = None
    if this.first <= prev.last:
        reason = f"it overlaps segment {position - 1} (entries {prev.first}..{prev.last})"
    elif this.first > prev.last + 1:
        reason = f"entries {prev.last + 1}..{this.first - 1} are missing after segment {position - 1}"
    elif (this.prev_term, this.prev_checksum) != (prev.last_term, prev.last_checksum):
        reason = (f"it chains from checksum {this.prev_checksum:016x} (term {this.prev_term}) but entry "
                  f"{prev.last} has checksum {prev.last_checksum:016x} (term {prev.last_term}): "
                  "a chain break (a segment of another log or history)")
    if reason is not None:
        raise SegmentRejectedError(position, this.first, this.last, reason)


class CreatedLog(NamedTuple):
    """What `create_from_segment_files` built: the segments, checked, and the chained checksum of
    the entry it was asked about (None when not asked, or outside the segments' range)."""

    segments: list
    checksum_at: int | None


def create_from_segment_files(path, files, *, term: int, checksum_at: int | None = None) -> CreatedLog:
    """Create a NEW log directory at `path` whose history is the segment files `files`, as
    `create_from_segments` does for bytes (its edge cases, checks, order of writes and
    outcome are the same), in bounded memory whatever the segments' sizes.

    Differences, edge cases first: an element that is not a path: TypeError; a missing
    file: FileNotFoundError; a file that fails a check: SegmentRejectedError naming its
    position (as for bytes). Each file is checked once, streaming (`check_segment_file`:
    about 1 MiB plus one entry in memory at a time), and then placed into
    ``path/archive/`` by a hard link when it is on the same filesystem (else copied),
    after an fsync of its data: the files are left where they were. `checksum_at`: an
    index whose chained checksum the caller needs (e.g. to place a snapshot on the new
    history), read during the check instead of from the new log afterwards (with no
    files, the empty log answers for index 0: checksum 0).
    """
    path = Path(path)
    if isinstance(term, bool) or not isinstance(term, int):
        raise TypeError(f"create_from_segment_files: term must be an int, got {type(term).__name__}")
    if not 0 <= term < 2**64 - 1:
        raise ValueError(f"create_from_segment_files: term must be >= 0, got {term}")
    if isinstance(files, (str, bytes, os.PathLike)):
        raise TypeError("create_from_segment_files: files must be a list of paths, not one path")
    files = list(files)
    for position, file in enumerate(files):
        if not isinstance(file, (str, os.PathLike)):
            raise TypeError(f"create_from_segment_files: file {position} is {type(file).__name__}, not a path")
    checked: list[CheckedSegment] = []
    found = None
    for position, file in enumerate(files):
        try:
            this, at = check_segment_file(file, checksum_at)
        except SegmentDamage as exc:
            raise SegmentRejectedError(position, *_file_range(file), str(exc)) from None
        _check_continues(checked, this, position)
        checked.append(this)
        found = at if at is not None else found
    if not checked and checksum_at == 0:
        found = 0  # an empty log: entry 0 is the boundary, whose checksum seeds entry 1
    if checked and term < checked[-1].last_term:
        raise ValueError(f"create_from_segment_files: term {term} is lower than the term {checked[-1].last_term} "
                         f"of entry {checked[-1].last}, the last entry")
    _check_target(path)
    _build(path, [Path(f) for f in files], checked, term, _place_file)
    return CreatedLog(checked, found)


def _place_file(archive: Path, name: SegmentName, source: Path) -> None:
    """Put the checked segment file `source` into `archive` as `name`, durably once the caller
    fsyncs `archive`: its data is fsynced, then it is hard-linked (copied across filesystems)."""
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(source, archive / name.name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        temp = archive / name.temp_name
        shutil.copyfile(source, temp, follow_symlinks=False)
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, archive / name.name)


def _file_range(file) -> tuple[int, int]:
    """(first, last) as the header of segment file `file` declares them, (0, 0) if it cannot say."""
    try:
        with open(file, "rb") as f:
            return declared_range(f.read(segment.HEADER_SIZE))
    except OSError:
        return 0, 0


def _check_target(path: Path) -> None:
    """FileExistsError unless `path` is missing, empty, or an interrupted create's leftovers (removed here)."""
    existing = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    refuse_network_filesystem(existing)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is not a directory; create_from_segments makes a new log")
    names = set(os.listdir(path))
    if "data.mdb" in names:
        raise FileExistsError(f"{path} already holds an event log (data.mdb); create_from_segments makes a new log")
    if not names:
        return
    if STAGING_DIR in names and names <= {STAGING_DIR, ARCHIVE_DIR}:
        for name in names:  # an interrupted create: nothing ever opened it as a log
            shutil.rmtree(path / name)
        fsync_directory(path)
        return
    raise FileExistsError(f"{path} is a non-empty directory ({len(names)} names); create_from_segments "
                          "makes a new log in a missing or empty directory")


def _build(path: Path, segments: list, checked: list[CheckedSegment], term: int, place) -> None:
    """Write the archive (`place(archive, name, segment)` puts each one there durably once the
    directory is fsynced), then the LMDB environment naming it; on any failure remove all of it."""
    created = [p for p in (*reversed(path.parents), path) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    staging, archive, data_file = path / STAGING_DIR, path / ARCHIVE_DIR, path / "data.mdb"
    try:
        # The marker first: until data.mdb is renamed in, the directory is an unfinished create.
        staging.mkdir()
        for directory in {path, *(p.parent for p in created)}:
            fsync_directory(directory)
        if checked:
            archive.mkdir()
            for data, this in zip(segments, checked):
                place(archive, SegmentName(this.first, this.last), data)
            fsync_directory(archive)
            fsync_directory(path)
        _write_meta(staging, path, checked, term)
        os.rename(staging / "data.mdb", data_file)
        fsync_directory(path)
    except BaseException:
        _remove_all(path, created, (data_file, staging, archive))
        raise
    shutil.rmtree(staging, ignore_errors=True)  # the log is complete; the marker is only clutter now


def _write_meta(staging: Path, path: Path, checked: list[CheckedSegment], term: int) -> None:
    """A durable LMDB environment in `staging` whose meta records name the archive as the whole log."""
    # One write transaction creates both databases and the records, unsynced; one forced
    # sync then makes all of it durable (data and meta pages) before data.mdb is renamed into
    # the log. Until that rename nothing here is read, so the order of the writes within
    # the environment does not matter, only that they are all on disk first: one fdatasync
    # instead of one per database created and per commit.
    env = lmdb.open(str(staging), subdir=True, max_dbs=2, map_size=_STAGING_MAP_SIZE, sync=False,
                    metasync=False, lock=True, readahead=False)
    try:
        with env.begin(write=True) as txn:
            entries_db = env.open_db(b"entries", txn=txn)
            meta_db = env.open_db(b"meta", txn=txn)
            meta.initialise(txn, meta_db, entries_db, path)
            meta.write_term(txn, meta_db, term)
            if checked:
                head, tail = checked[0], checked[-1]
                meta.write_boundary(txn, meta_db, tail.last + 1, tail.last_term, tail.last_checksum)
                meta.write_archive_boundary(txn, meta_db, head.first, head.prev_term, head.prev_checksum)
        env.sync(True)
    finally:
        env.close()


def _remove_all(path: Path, created: list[Path], names: tuple[Path, ...]) -> None:
    """Undo a failed create: the files it made, then the directories it created (innermost first)."""
    for name in names:
        if name.is_dir() and not name.is_symlink():
            shutil.rmtree(name, ignore_errors=True)
        else:
            try:
                name.unlink()
            except FileNotFoundError:
                pass
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            break
