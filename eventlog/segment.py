"""Sealed archive segments: one immutable file of consecutive entries (layout in FORMAT.md).

`write_segment` seals entries durably under a temp name and renames it (the caller
fsyncs the directory once for all segments of one compaction); `read_segment` reads a
segment back through a checked descriptor, checksum first, in bounded chunks, and
raises `SegmentDamage` with the reason for anything that is not what a writer sealed.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import xxhash
import zstandard

from . import record
from .errors import SegmentDamage
from .safefile import UnsafeFileError, open_regular

MAGIC = b"EVLOGSEG"
SEGMENT_VERSION = 1
CODEC_ZSTD = 1
HEADER = struct.Struct(">8sHHIQQQQQQQQ")  # magic, version, flags, codec, first, last, prev term,
#                                            prev checksum, last time, raw size, stored size, checksum
HEADER_SIZE = HEADER.size  # 80
CHECKED = HEADER_SIZE - 8  # the checksum covers the header up to itself, then the body
LENGTH = struct.Struct(">I")
TARGET_RAW = 16 * 2**20  # a writer seals at most this many body bytes per segment (one bigger entry excepted)
MAX_RAW = 64 * 2**20  # a reader refuses a segment of several entries declaring more
MAX_SINGLE_RAW = LENGTH.size + record.HEADER_SIZE + record.MAX_OP_LEN + record.MAX_PAYLOAD_LEN
ZSTD_LEVEL = 1  # level 3 compressed log entries no better (1.63x vs 1.61x on step payloads) at 2-5x the time
_CHUNK = 2**20
_NAME = re.compile(r"^(\d{20})-(\d{20})\.seg$")
TEMP_SUFFIX = ".seg.tmp"


@dataclass(frozen=True, order=True)
class SegmentName:
    """A segment as its file name describes it: entries first..last (inclusive)."""

    first: int
    last: int

    @property
    def name(self) -> str:
        return f"{self.first:020d}-{self.last:020d}.seg"

    @property
    def temp_name(self) -> str:
        return f".{self.first:020d}-{self.last:020d}{TEMP_SUFFIX}"


@dataclass(frozen=True)
class Segment:
    """A segment read back and checked: its header fields and each entry's stored value."""

    first: int
    last: int
    prev_term: int
    prev_checksum: int
    last_time_ns: int
    file_size: int
    values: tuple  # memoryviews of the stored entry values, first..last

    def last_checksum(self) -> int:
        """The stored checksum of the last entry: the seed the entry after this segment chains from.

        CorruptEntryError if that entry's framing is damaged."""
        return record.stored_checksum(self.last, self.values[-1])

    def seed(self, index: int) -> int:
        """The checksum entry `index` (in this segment) chains from."""
        if index == self.first:
            return self.prev_checksum
        return record.stored_checksum(index - 1, self.values[index - 1 - self.first])


def parse_name(name: str) -> SegmentName | None:
    """The SegmentName a file name stands for, or None if it is not a segment's name."""
    match = _NAME.match(name)
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    return SegmentName(first, last) if 1 <= first <= last else None


def stored_bound(raw_size: int) -> int:
    """The most compressed bytes an honest segment of `raw_size` body bytes can hold (zstd's bound, rounded up)."""
    return raw_size + (raw_size >> 7) + 4096


def raw_limit(first: int, last: int) -> int:
    """The largest body a reader accepts for a segment of entries first..last."""
    return MAX_SINGLE_RAW if first == last else MAX_RAW


def encode(first: int, values: list, prev_term: int, prev_checksum: int) -> bytes:
    """The bytes of a segment holding `values` (stored entry values) as entries first, first + 1, ..."""
    last = first + len(values) - 1
    parts = []
    for value in values:
        parts.append(LENGTH.pack(len(value)))
        parts.append(value)
    body = b"".join(parts)
    stored = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body)
    last_time = record.parse_header(last, values[-1])[3]
    head = HEADER.pack(MAGIC, SEGMENT_VERSION, 0, CODEC_ZSTD, first, last, prev_term, prev_checksum,
                       last_time, len(body), len(stored), 0)[:CHECKED]
    hasher = xxhash.xxh3_64(head)
    hasher.update(stored)
    return head + struct.pack(">Q", hasher.intdigest()) + stored


def write_segment(directory: Path, first: int, values: list, prev_term: int, prev_checksum: int) -> SegmentName:
    """Seal `values` as entries first.. in `directory`: temp file, fsync, rename.

    The caller fsyncs `directory` afterwards (once for all segments it wrote), which is
    what makes the new names durable.
    """
    name = SegmentName(first, first + len(values) - 1)
    write_file(directory, name, encode(first, values, prev_term, prev_checksum))
    return name


def write_file(directory: Path, name: SegmentName, data) -> None:
    """Write segment bytes `data` as `name` in `directory`: temp file, fsync, rename (the caller fsyncs `directory`)."""
    temp = directory / name.temp_name
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, directory / name.name)


def read_header(path: Path, name: SegmentName) -> tuple[int, int]:
    """(last_time_ns, file size) from a segment's header, checked against its name (not its checksum).

    SegmentDamage if the header is not a segment header for `name`; FileNotFoundError if it is gone.
    """
    fields, size = _read_fields(path, name)
    return fields[8], size


def read_prev_checksum(path: Path, name: SegmentName) -> int:
    """The `prev_checksum` a segment's header declares (the seed of its first entry), from
    its 80 header bytes alone, checked against its name (not its checksum).

    SegmentDamage if the header is not a segment header for `name`; FileNotFoundError if it is gone.
    """
    return _read_fields(path, name)[0][7]


def _read_fields(path: Path, name: SegmentName) -> tuple[tuple, int]:
    fd, size = _open(path, name)
    try:
        return _header(os.pread(fd, HEADER_SIZE, 0), name, size), size
    finally:
        os.close(fd)


def read_raw_size(path: Path, name: SegmentName) -> tuple[int, int]:
    """(raw body size, file size) from a segment's header, checked against its name (not its checksum).

    SegmentDamage if the header is not a segment header for `name`; FileNotFoundError if it is gone.
    """
    fd, size = _open(path, name)
    try:
        fields = _header(os.pread(fd, HEADER_SIZE, 0), name, size)
        return fields[9], size
    finally:
        os.close(fd)


def read_segment(path: Path, name: SegmentName) -> Segment:
    """The segment at `path`, which its directory listing names `name`, fully checked.

    Order of checks, so damage never costs more than the file's bounded size: a regular
    file no larger than its name allows; the header (magic, version, flags, codec, the
    range it names, sizes within the limits and matching the file); the checksum over
    the file, read in 1 MiB chunks; decompression that stops at `raw_size`; one length-
    prefixed value per entry and nothing after the last. SegmentDamage says what failed;
    FileNotFoundError if the file is gone (a retention or cleanup removed it).
    """
    fd, size = _open(path, name)
    try:
        head = os.pread(fd, HEADER_SIZE, 0)
        (_, _, _, _, first, last, prev_term, prev_checksum, last_time, raw_size, stored_size,
         checksum) = _header(head, name, size)
        check_file_checksum(fd, head, size, checksum)
        body = _decompress(fd, size, raw_size)
    finally:
        os.close(fd)
    values = _split(body, first, last)
    return Segment(first, last, prev_term, prev_checksum, last_time, size, values)


def read_last_value(path: Path, name: SegmentName):
    """The stored value of the last entry of the segment at `path`, with every check
    `read_segment` makes (the body must hold exactly one value per entry), but without
    splitting out the others: what following the chain across segments needs.

    SegmentDamage / FileNotFoundError as `read_segment`.
    """
    fd, size = _open(path, name)
    try:
        head = os.pread(fd, HEADER_SIZE, 0)
        fields = _header(head, name, size)
        check_file_checksum(fd, head, size, fields[11])
        body = _decompress(fd, size, fields[9])
    finally:
        os.close(fd)
    view, at, unpack = memoryview(body), 0, LENGTH.unpack_from
    start = 0
    for index in range(name.first, name.last + 1):
        if at + LENGTH.size > len(view):
            raise SegmentDamage(f"the body ends before entry {index}")
        start = at + LENGTH.size
        at = start + unpack(view, at)[0]
        if at > len(view):
            raise SegmentDamage(f"entry {index} declares {at - start} bytes, past the end of the body")
    if at != len(view):
        raise SegmentDamage(f"{len(view) - at} bytes follow the last entry")
    return view[start:at]


def check_file_checksum(fd: int, head: bytes, size: int, checksum: int) -> None:
    """SegmentDamage unless the file's checksum (header up to itself, then the body, read in
    bounded chunks) is `checksum`."""
    hasher = xxhash.xxh3_64(head[:CHECKED])
    offset = HEADER_SIZE
    while offset < size:
        chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
        if not chunk:
            raise SegmentDamage(f"file ended at byte {offset} while {size} were expected")
        hasher.update(chunk)
        offset += len(chunk)
    if hasher.intdigest() != checksum:
        raise SegmentDamage("checksum mismatch (the file was altered or cut)")


def decode(data) -> Segment:
    """The segment held in `data` (bytes of a whole segment file), fully checked as `read_segment` checks a file.

    The range comes from the header itself, so no name is checked. Before anything is
    hashed or decompressed: the header, its range, and the sizes it declares within
    the limits and matching len(data); decompression stops at `raw_size`. SegmentDamage
    says what failed (the caller adds where the bytes came from).
    """
    view = memoryview(data).cast("B")
    if len(view) < HEADER_SIZE:
        raise SegmentDamage(f"{len(view)} bytes, shorter than the {HEADER_SIZE}-byte segment header")
    head = bytes(view[:HEADER_SIZE])
    first, last = HEADER.unpack(head)[4:6]
    if not 1 <= first <= last:
        raise SegmentDamage(f"its header names the impossible range {first}..{last}")
    (_, _, _, _, _, _, prev_term, prev_checksum, last_time, raw_size, _, checksum) = _header(
        head, SegmentName(first, last), len(view))
    hasher = xxhash.xxh3_64(head[:CHECKED])
    hasher.update(view[HEADER_SIZE:])
    if hasher.intdigest() != checksum:
        raise SegmentDamage("checksum mismatch (the bytes were altered or cut)")
    body = _decompress_from(MemoryReader(view, HEADER_SIZE), raw_size)
    values = _split(body, first, last)
    return Segment(first, last, prev_term, prev_checksum, last_time, len(view), values)


def _open(path: Path, name: SegmentName) -> tuple[int, int]:
    limit = HEADER_SIZE + stored_bound(raw_limit(name.first, name.last))
    try:
        return open_regular(str(path), limit)
    except UnsafeFileError as exc:
        raise SegmentDamage(f"the file {exc}") from None


def check_header(head: bytes, name: SegmentName, size: int) -> None:
    """SegmentDamage unless `head` is a header for `name` of a file of `size` bytes (as read_header checks)."""
    _header(head, name, size)


def _header(head: bytes, name: SegmentName, size: int) -> tuple:
    if len(head) < HEADER_SIZE:
        raise SegmentDamage(f"the file is {size} bytes, shorter than the {HEADER_SIZE}-byte segment header")
    fields = HEADER.unpack(head)
    magic, version, flags, codec, first, last, _, _, _, raw_size, stored_size, _ = fields
    if magic != MAGIC:
        raise SegmentDamage(f"not a segment (magic {magic!r})")
    if version != SEGMENT_VERSION or flags != 0 or codec != CODEC_ZSTD:
        raise SegmentDamage(f"unknown segment version {version}, flags {flags:#x} or codec {codec}")
    if (first, last) != (name.first, name.last):
        raise SegmentDamage(f"its header names entries {first}..{last}, its file name {name.first}..{name.last}")
    if raw_size > raw_limit(first, last) or raw_size < (last - first + 1) * (LENGTH.size + record.HEADER_SIZE):
        raise SegmentDamage(f"its header declares a body of {raw_size} bytes, impossible for "
                            f"{last - first + 1} entries (at most {raw_limit(first, last)})")
    if stored_size > stored_bound(raw_size) or size != HEADER_SIZE + stored_size:
        raise SegmentDamage(f"the file is {size} bytes but its header declares {HEADER_SIZE + stored_size}")
    return fields


def _decompress(fd: int, size: int, raw_size: int) -> bytes:
    """The body, decompressed from the descriptor in bounded steps; never more than raw_size + 1 bytes."""
    return _decompress_from(_Region(fd, HEADER_SIZE, size), raw_size)


def _decompress_from(source, raw_size: int) -> bytes:
    """The body read from file object `source`, decompressed in bounded steps; never more than raw_size + 1 bytes."""
    parts, total = [], 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(source, read_size=_CHUNK, closefd=False) as reader:
            while total <= raw_size:
                part = reader.read(min(_CHUNK, raw_size + 1 - total))
                if not part:
                    break
                parts.append(part)
                total += len(part)
    except zstandard.ZstdError as exc:
        raise SegmentDamage(f"the body does not decompress: {exc}") from None
    if total > raw_size:
        raise SegmentDamage(f"the body decompresses to more than the {raw_size} bytes its header declares")
    if total < raw_size:
        raise SegmentDamage(f"the body decompresses to {total} bytes, its header declares {raw_size}")
    return b"".join(parts)


def _split(body: bytes, first: int, last: int) -> tuple:
    """The stored values in a decompressed body: exactly one per entry, nothing after the last."""
    view = memoryview(body)
    values, at = [], 0
    for index in range(first, last + 1):
        if at + LENGTH.size > len(view):
            raise SegmentDamage(f"the body ends before entry {index}")
        (length,) = LENGTH.unpack_from(view, at)
        at += LENGTH.size
        if at + length > len(view):
            raise SegmentDamage(f"entry {index} declares {length} bytes, past the end of the body")
        values.append(view[at:at + length])
        at += length
    if at != len(view):
        raise SegmentDamage(f"{len(view) - at} bytes follow the last entry")
    return tuple(values)


class _Region:
    """A read-only file object over bytes [start, end) of a descriptor, read with pread."""

    def __init__(self, fd: int, start: int, end: int):
        self._fd, self._at, self._end = fd, start, end

    def read(self, size: int = -1) -> bytes:
        size = self._end - self._at if size is None or size < 0 else min(size, self._end - self._at)
        data = os.pread(self._fd, size, self._at) if size > 0 else b""
        self._at += len(data)
        return data

    def readable(self) -> bool:
        return True


class MemoryReader:
    """A read-only file object over a memoryview from `start`, for a decompressor (no copy
    of the compressed bytes; segment_checks streams a mapped segment through it too)."""

    def __init__(self, view: memoryview, start: int):
        self._view, self._at = view, start

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._at + size)
        data = bytes(self._view[self._at:end])
        self._at = max(self._at, end)
        return data

    def readable(self) -> bool:
        return True
