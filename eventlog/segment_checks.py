"""Checking sealed segments wherever they are: bytes in memory, or a file (FORMAT.md, "The
archive" and "Shipping and restoring segments").

`check_segment` / `segment_bounds` check bytes, `check_segment_file` a file, both alike:
the header first (limits before any allocation), the file checksum, then the body
decompressed in 1 MiB pieces with each entry's framing, chained checksum and term checked
as it completes, so a check holds about one piece plus one entry, never the whole body.
`segment_identity` checks only the header and the file checksum (no decompression): what
tells whether bytes are a segment a full check already passed.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import xxhash
import zstandard

from . import record, segment
from .errors import CorruptEntryError, SegmentDamage
from .safefile import UnsafeFileError, open_regular
from .segment import SegmentName

_PIECE = 2**20  # bytes read or decompressed at a time


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
        # The body's view is the decompressor's source as it is: zstd reads a buffer in place.
        _, term, seed = _check_entries(view[segment.HEADER_SIZE:], first, last, raw_size, prev_term, prev_checksum,
                                       None)
    except SegmentDamage as exc:
        first, last = declared_range(data)
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
    first, last = declared_range(head)
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
    fd, size = open_segment_file(path, _MAX_SEGMENT_FILE)
    try:
        head = os.pread(fd, segment.HEADER_SIZE, 0)
        first, last = declared_range(head)
        where = f"segment of entries {first}..{last}" if first else "segment"
        try:
            fields = _checked_header(head, size)
            prev_term, prev_checksum, raw_size, checksum = fields[6], fields[7], fields[9], fields[11]
            segment.check_file_checksum(fd, head, size, checksum)
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


def _check_entries(source, first: int, last: int, raw_size: int, prev_term: int, seed: int,
                   at: int | None) -> tuple[int | None, int, int]:
    """Decompress the body read from `source` (a file object, or a buffer read in place) in
    1 MiB pieces (never more than raw_size + 1 bytes) and check each entry as it completes:
    its framing, its checksum chained from `seed`, its term never below the one before.
    (checksum of entry `at` if met, the last entry's term, the last entry's checksum);
    SegmentDamage saying what failed.

    Every piece is decompressed into the same scratch buffer (a fresh 1 MiB object per piece
    costs its page faults again: about a third of the CPU of a check), then appended to the
    entries' buffer, whose space is reused as checked entries leave it."""
    buffer, start, total, consumed = bytearray(), 0, 0, 0
    index, term, found, length = first, prev_term, None, None
    scratch = bytearray(_PIECE)
    try:
        with zstandard.ZstdDecompressor().stream_reader(source, read_size=_PIECE, closefd=False) as reader, \
                memoryview(scratch) as into:
            while True:
                got = reader.readinto(into[:min(_PIECE, raw_size + 1 - total)])
                total += got
                if total > raw_size:
                    raise SegmentDamage(f"the body decompresses to more than the {raw_size} bytes its header declares")
                if got:
                    del buffer[:start]  # what was checked goes: one piece and one entry at most stay
                    start = 0
                    buffer += into[:got]
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
                if not got:
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


def open_segment_file(path, limit: int) -> tuple[int, int]:
    """(descriptor, size) of the regular segment file at `path`, at most `limit` bytes (safefile.open_regular);
    SegmentDamage naming the file for a symlink, a non-regular or a larger file; FileNotFoundError."""
    try:
        return open_regular(str(path), limit)
    except UnsafeFileError as exc:
        raise SegmentDamage(f"segment file {path} {exc}") from None


def declared_range(data) -> tuple[int, int]:
    """(first, last) as the header of segment bytes declares them, (0, 0) if it cannot say."""
    try:
        first, last = segment.HEADER.unpack_from(memoryview(data).cast("B"))[4:6]
    except Exception:  # too short, or not a buffer: the range is simply unknown
        return 0, 0
    return (first, last) if 1 <= first <= last else (0, 0)
