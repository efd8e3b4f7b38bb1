"""Shipping and restoring sealed segments (FORMAT.md, "Shipping and restoring segments").

`sealed_range` turns entries of a log, archived or live, into the bytes of one sealed
segment, copied as stored; `segment_bounds` checks such bytes and says where they sit in
a chain; `create_from_segments` builds a new log directory whose history is a run of
them. A segment's bytes are the same whether they are a file in ``<log>/archive/`` or an
object somewhere else, so one set of checks (segment.decode + the entry chain) covers both.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import lmdb
import xxhash
import zstandard

from . import meta, record, segment
from .archive import ARCHIVE_DIR
from .errors import CompactedError, CorruptEntryError, SegmentDamage, SegmentRejectedError
from .locking import fsync_directory, refuse_network_filesystem
from .safefile import UnsafeFileError, open_regular
from .segment import SegmentName

STAGING_DIR = ".creating"  # create_from_segments builds data.mdb here, then renames it into the log
_STAGING_MAP_SIZE = 2**20
_PIECE = 2**20  # bytes read or decompressed at a time by check_segment_file  # the new environment holds only meta records; a writer's open grows the map


class CheckedSegment(NamedTuple):
    """A segment whose bytes and entry chain checked out: where it sits in its log's chain."""

    first: int
    last: int
    prev_term: int
    prev_checksum: int
    last_term: int
    last_checksum: int


def check_segment(data) -> CheckedSegment:
    """Decode and check segment bytes: the file checks of segment.decode, then every entry's
    framing and checksum chained from the header's prev_checksum, and terms never decreasing
    (from prev_term on). SegmentDamage naming the entry range (when the header gives one).

    The body is decompressed in 1 MiB pieces and each entry checked as it completes, so
    about one piece plus one entry is held besides `data`, never the whole body."""
    view = memoryview(data).cast("B")
    try:
        fields = _checked_header(bytes(view[:segment.HEADER_SIZE]), len(view))
        hasher = xxhash.xxh3_64(bytes(view[:segment.CHECKED]))
        hasher.update(view[segment.HEADER_SIZE:])
        if hasher.intdigest() != fields[11]:
            raise SegmentDamage("checksum mismatch (the bytes were altered or cut)")
        first, last, prev_term, prev_checksum, raw_size = fields[4], fields[5], fields[6], fields[7], fields[9]
        _, term, seed = _check_entries(_ViewSource(view, segment.HEADER_SIZE), first, last, raw_size, prev_term,
                                       prev_checksum, None)
    except SegmentDamage as exc:
        first, last = _declared_range(data)
        where = f"segment of entries {first}..{last}" if first else "segment"
        raise SegmentDamage(f"{where}: {exc}") from None
    return CheckedSegment(first, last, prev_term, prev_checksum, term, seed)


def _checked_header(head: bytes, size: int) -> tuple:
    """The header fields of a segment of `size` bytes beginning with `head`, checked as a reader
    checks a file's (segment.check_header) before anything else is read; SegmentDamage."""
    if len(head) < segment.HEADER_SIZE:
        raise SegmentDamage(f"{size} bytes, shorter than the {segment.HEADER_SIZE}-byte segment header")
    fields = segment.HEADER.unpack(head)
    first, last = fields[4], fields[5]
    if not 1 <= first <= last:
        raise SegmentDamage(f"its header names the impossible range {first}..{last}")
    segment.check_header(head, SegmentName(first, last), size)
    return fields


class _ViewSource:
    """A read-only file object over a memoryview from `start`, for the decompressor."""

    def __init__(self, view: memoryview, start: int):
        self._view, self._at = view, start

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._at + size)
        data = bytes(self._view[self._at:end])
        self._at = max(self._at, end)
        return data

    def readable(self) -> bool:
        return True


def segment_identity(data) -> tuple[int, int, int, int]:
    """(first, last, prev_checksum, file checksum) of segment bytes, checking the header and the
    file checksum only: no decompression, no entry. What tells whether bytes are the very
    segment a full check (`segment_bounds`) already passed, so that a caller checks a
    segment it meets again (an archive file read twice) without decompressing it twice.

    Edge cases first: SegmentDamage for bytes shorter than a header, a header that is not a
    segment's or whose sizes are not the bytes', or a checksum mismatch.
    """
    view = memoryview(data).cast("B")
    if len(view) < segment.HEADER_SIZE:
        raise SegmentDamage(f"{len(view)} bytes, shorter than the {segment.HEADER_SIZE}-byte segment header")
    head = bytes(view[:segment.HEADER_SIZE])
    first, last = _declared_range(head)
    if not first:
        raise SegmentDamage("its header names no possible range")
    segment.check_header(head, SegmentName(first, last), len(view))
    fields = segment.HEADER.unpack(head)
    hasher = xxhash.xxh3_64(head[:segment.CHECKED])
    hasher.update(view[segment.HEADER_SIZE:])
    if hasher.intdigest() != fields[11]:
        raise SegmentDamage(f"segment of entries {first}..{last}: checksum mismatch (the bytes were altered or cut)")
    return first, last, fields[7], fields[11]


def check_segment_file(path, at: int | None = None) -> tuple[CheckedSegment, int | None]:
    """Check the segment file at `path` as `check_segment` checks bytes, in bounded memory; and
    the chained checksum of entry `at` when asked (None otherwise, or when `at` is outside
    first - 1..last).

    Edge cases first: FileNotFoundError when it is missing; SegmentDamage (naming the range
    when the header gives one) for a symlink or non-regular file, a header that is not a
    segment's or declares sizes beyond the format's limits or other than the file's (refused
    before anything else is read), a checksum mismatch, a body that does not decompress to
    exactly its declared size, an entry whose framing, checksum link or term is wrong.
    Memory: the file is hashed in 1 MiB reads, then decompressed in 1 MiB pieces and its
    entries checked as they come, so at most about one piece plus one entry is held,
    whatever the segment's size (check_segment holds the whole body).
    """
    fd, size = _open_capped(path, _MAX_SEGMENT_FILE)
    try:
        head = os.pread(fd, segment.HEADER_SIZE, 0)
        first, last = _declared_range(head)
        where = f"segment of entries {first}..{last}" if first else "segment"
        try:
            fields = _checked_header(head, size)
            prev_term, prev_checksum, raw_size, checksum = fields[6], fields[7], fields[9], fields[11]
            _check_file_sum(fd, head, size, checksum)
            with os.fdopen(os.dup(fd), "rb", buffering=0) as source:
                source.seek(segment.HEADER_SIZE)
                found, term, seed = _check_entries(source, first, last, raw_size, prev_term, prev_checksum, at)
        except SegmentDamage as exc:
            raise SegmentDamage(f"{where}: {exc}") from None
    finally:
        os.close(fd)
    if at is not None and at == first - 1:
        found = prev_checksum
    return CheckedSegment(first, last, prev_term, prev_checksum, term, seed), found


_MAX_SEGMENT_FILE = segment.HEADER_SIZE + segment.stored_bound(segment.MAX_SINGLE_RAW)


def _check_file_sum(fd: int, head: bytes, size: int, checksum: int) -> None:
    hasher = xxhash.xxh3_64(head[:segment.CHECKED])
    offset = segment.HEADER_SIZE
    while offset < size:
        piece = os.pread(fd, min(_PIECE, size - offset), offset)
        if not piece:
            raise SegmentDamage(f"the file ended at byte {offset} while {size} were expected")
        hasher.update(piece)
        offset += len(piece)
    if hasher.intdigest() != checksum:
        raise SegmentDamage("checksum mismatch (the file was altered or cut)")


def _check_entries(source, first: int, last: int, raw_size: int, prev_term: int, seed: int,
                   at: int | None) -> tuple[int | None, int, int]:
    """Decompress the body read from file object `source` in 1 MiB pieces (never more than
    raw_size + 1 bytes) and check each entry as it completes: its framing, its checksum chained
    from `seed`, its term never below the one before. (checksum of entry `at` if met, the last
    entry's term, the last entry's checksum); SegmentDamage saying what failed."""
    buffer, start, total, consumed = bytearray(), 0, 0, 0
    index, term, found, length = first, prev_term, None, None
    try:
        with zstandard.ZstdDecompressor().stream_reader(source, read_size=_PIECE, closefd=False) as reader:
            while True:
                piece = reader.read(min(_PIECE, raw_size + 1 - total))
                total += len(piece)
                if total > raw_size:
                    raise SegmentDamage(f"the body decompresses to more than the {raw_size} bytes its header declares")
                if piece:
                    del buffer[:start]  # what was checked goes: one piece and one entry at most stay
                    start = 0
                    buffer += piece
                while True:  # every entry the buffer now holds whole
                    if length is None:
                        if len(buffer) - start < segment.LENGTH.size:
                            break
                        if index > last:
                            raise SegmentDamage(f"{raw_size - consumed} bytes follow the last entry")
                        (length,) = segment.LENGTH.unpack_from(buffer, start)
                        start += segment.LENGTH.size
                        consumed += segment.LENGTH.size
                        if consumed + length > raw_size:
                            raise SegmentDamage(f"entry {index} declares {length} bytes, past the end of the body")
                    if len(buffer) - start < length:
                        break
                    # Checked in place; the views are released before the buffer is resized again.
                    with memoryview(buffer) as whole, whole[start:start + length] as value:
                        try:
                            _, _, entry_term, _, seed = record.verify_value(index, value, seed)
                        except CorruptEntryError as exc:
                            raise SegmentDamage(f"entry {index}: {exc.reason}") from None
                    start += length
                    consumed += length
                    if entry_term < term:
                        raise SegmentDamage(f"entry {index} has term {entry_term}, lower than the term {term} "
                                            "before it")
                    term = entry_term
                    if index == at:
                        found = seed
                    index, length = index + 1, None
                if not piece:
                    break
    except zstandard.ZstdError as exc:
        raise SegmentDamage(f"the body does not decompress: {exc}") from None
    if total < raw_size:
        raise SegmentDamage(f"the body decompresses to {total} bytes, its header declares {raw_size}")
    if index <= last:
        raise SegmentDamage(f"the body ends before entry {index}")
    if start < len(buffer):
        raise SegmentDamage(f"{len(buffer) - start} bytes follow the last entry")
    return found, term, seed


def segment_bounds(data) -> tuple[int, int, int, int]:
    """(first, last, prev_checksum, last_checksum) of segment bytes, after checking all of them.

    Edge cases first: bytes shorter than a header, a header declaring sizes beyond the
    format's limits (refused before any allocation), a checksum mismatch, a body that
    does not decompress to exactly its declared size, an entry whose framing, checksum
    link or term is wrong: SegmentDamage naming the entry range (when the header gives
    one) and what failed. prev_checksum is the chain seed of entry `first` (the checksum
    of entry first - 1), last_checksum the checksum of entry `last`: a segment continues
    another exactly when its first is the other's last + 1 and its prev_checksum the
    other's last_checksum.
    """
    checked = check_segment(data)
    return checked.first, checked.last, checked.prev_checksum, checked.last_checksum


def check_segment_header(head: bytes, size: int, first: int, last: int) -> None:
    """Check the first HEADER_SIZE (80) bytes of a segment object of `size` bytes that should
    hold entries first..last, before its body is fetched: magic, version, codec, the range,
    and sizes within the format's limits that add up to exactly `size`. SegmentDamage saying
    what failed. This bounds what a reader must fetch by what the header and the range
    declare; the body's checksum and entries are checked by `segment_bounds` afterwards."""
    segment.check_header(head, SegmentName(first, last), size)


def max_segment_size(first: int, last: int) -> int:
    """The most bytes a sealed segment of entries first..last may be, its header included: a
    reader refuses a larger one unread (check_segment_header, segment_bounds), so a fetch
    of such an object may be capped at this many bytes."""
    return segment.HEADER_SIZE + segment.stored_bound(segment.raw_limit(first, last))


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
    fd, size = _open_capped(path, max_segment_size(first, last))
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


def _open_capped(path, limit: int) -> tuple[int, int]:
    try:
        return open_regular(str(path), limit)
    except UnsafeFileError as exc:
        raise SegmentDamage(f"segment file {path} {exc}") from None


def sealed_range(reader, view, first: int, last: int) -> bytes:
    """The bytes of one sealed segment holding entries first..last of a log (see EventLog.sealed_range)."""
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
    values, total, seed = [], 0, prev_checksum
    for index, value in reader.stored_values(first, last + 1):
        total += segment.LENGTH.size + len(value)
        if total > limit:
            raise ValueError(f"sealed_range({first}, {last}): the body would exceed {limit} bytes at entry "
                             f"{index}, more than one segment may hold; split the range (EventLog.segment_ranges)")
        # Verified against the chain from entry first - 1, so the segment never carries damage.
        seed = record.verify_value(index, value, seed)[4]
        values.append(value)
    if len(values) != last - first + 1:
        raise IndexError(f"sealed_range({first}, {last}): entries after {first + len(values) - 1} "
                         "were truncated meanwhile")
    return segment.encode(first, values, prev_term, prev_checksum)


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
            raise SegmentRejectedError(position, *_declared_range(data), str(exc)) from None
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
    history), read during the check instead of from the new log afterwards.
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
            return _declared_range(f.read(segment.HEADER_SIZE))
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
    env = lmdb.open(str(staging), subdir=True, max_dbs=2, map_size=_STAGING_MAP_SIZE, sync=True,
                    metasync=True, lock=True, readahead=False)
    try:
        entries_db = env.open_db(b"entries")
        meta_db = env.open_db(b"meta")
        with env.begin(write=True) as txn:
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


def _declared_range(data) -> tuple[int, int]:
    """(first, last) as the header of segment bytes declares them, (0, 0) if it cannot say."""
    try:
        first, last = segment.HEADER.unpack_from(memoryview(data).cast("B"))[4:6]
    except Exception:  # too short, or not a buffer: the range is simply unknown
        return 0, 0
    return (first, last) if 1 <= first <= last else (0, 0)
