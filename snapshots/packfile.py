"""Pack files: many chunk files in one file, with an index (FORMAT.md, "Pack file").

A save writes its new chunks into one pack (`PackWriter`): worker threads append chunk
files concurrently, each at an offset reserved under a lock and written with pwrite, so
hashing and compressing one chunk overlaps writing another; the commit thread then
appends the index and trailer and names the pack, fsyncing it before the rename
(`finish`: prune, importers) or after it, alongside its directory and the manifest
(`seal` and `sync`: a save, whose manifest is named only after both). Readers
get a pack's checked index from `read_index`; a chunk inside a pack is an ordinary chunk
file at an offset (`ChunkCodec.read`).
"""

from __future__ import annotations

import os
import re
import secrets
import struct
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from threading import Lock
from typing import Callable

import xxhash

from .chunkfile import HEADER as CHUNK_HEADER
from .chunkfile import MAX_PACK_BYTES, MAX_RAW_LEN, pread_upto
from .directio import StagingBuffers, WindowedWriter, enable_direct
from .durable import TMP_PREFIX, start_writeback, unlink_quietly
from .manifest import MAX_CHUNK_OVERHEAD, MIN_STORED_LEN
from .safefile import UnsafeFileError, open_regular

MAGIC = b"SNPPACK1"
HEADER_SIZE = 16
ENTRY = struct.Struct("<16sQQQ")  # chunk id (digest bytes), offset, stored_len, raw_len
TRAILER = struct.Struct("<QQ16s")  # entry count, index offset, xxh3-128 of the index bytes
SUFFIX = ".pack"
# A pack writing back in the background starts its thread only past this many bytes:
# below, a thread start and a hand-off per chunk cost more than the overlap gains.
BACKGROUND_AFTER = 8 << 20
# At most this many chunks in one pack: bounds what a hostile trailer can make a reader
# allocate for the index (40 MiB), as MAX_MANIFEST_BYTES bounds a manifest.
MAX_PACK_CHUNKS = 1 << 20
_NAME = re.compile(r"^[0-9a-f]{32}\.pack$")


class PackDecodeError(Exception):
    """A pack's index failed a check; `chunk` names the entry at fault (None: the pack as a whole)."""

    def __init__(self, reason: str, chunk: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.chunk = chunk


@dataclass(frozen=True)
class PackEntry:
    """Where one chunk file sits in a pack: bytes [offset, offset + stored_len)."""

    id: str
    offset: int
    stored_len: int
    raw_len: int


def is_pack_name(name: str) -> bool:
    """True for exactly 32 lowercase hex digits and ".pack": the only names a pack has."""
    return _NAME.match(name) is not None


def read_index(path: str) -> dict[str, PackEntry]:
    """The checked index of the pack file at `path`: chunk id -> entry.

    FileNotFoundError if it is gone; PackDecodeError (the reason, and the chunk when one
    entry is at fault) for anything FORMAT.md's "Pack file" refuses: not a regular file
    (never followed nor waited on), shorter than a header and trailer, a wrong magic, a
    count over MAX_PACK_CHUNKS or an index that does not end at the trailer, a digest
    mismatch, an entry out of range, overlapping another, or listed twice. Reads only the
    header, the trailer and the index (at most 40 MiB)."""
    try:
        fd, size = open_regular(path, MAX_PACK_BYTES)
    except UnsafeFileError as e:
        raise PackDecodeError(f"pack file {e}") from None
    try:
        if size < HEADER_SIZE + TRAILER.size:
            raise PackDecodeError(f"pack file is {size} bytes, shorter than a header and trailer")
        if _pread(fd, len(MAGIC), 0) != MAGIC:  # a short read is not a wrong magic
            raise PackDecodeError("bad pack magic")
        count, start, digest = TRAILER.unpack(_pread(fd, TRAILER.size, size - TRAILER.size))
        if count > MAX_PACK_CHUNKS:
            raise PackDecodeError(f"trailer declares {count} chunks, more than the {MAX_PACK_CHUNKS} allowed")
        if start < HEADER_SIZE or start + ENTRY.size * count + TRAILER.size != size:
            raise PackDecodeError(f"index of {count} entries at offset {start} does not end at the trailer "
                                  f"of a {size}-byte pack (truncated or extended)")
        data = _pread(fd, ENTRY.size * count, start)
    finally:
        os.close(fd)
    if xxhash.xxh3_128_digest(data) != digest:
        raise PackDecodeError("index checksum mismatch")
    return _entries(data, count, start)


def _entries(data: bytes, count: int, end: int) -> dict[str, PackEntry]:
    entries: dict[str, PackEntry] = {}
    at = HEADER_SIZE
    for k in range(count):
        raw_id, offset, stored_len, raw_len = ENTRY.unpack_from(data, k * ENTRY.size)
        cid = raw_id.hex()
        if cid in entries:
            raise PackDecodeError(f"index entry {k} lists the chunk a second time", cid)
        if not 0 < raw_len <= MAX_RAW_LEN or not MIN_STORED_LEN <= stored_len <= raw_len + MAX_CHUNK_OVERHEAD:
            raise PackDecodeError(f"index entry {k}: stored_len {stored_len} impossible for raw_len {raw_len}", cid)
        if offset < at or offset + stored_len > end:
            raise PackDecodeError(f"index entry {k}: range [{offset}, {offset + stored_len}) overlaps the previous "
                                  f"entry or leaves the chunk area [{HEADER_SIZE}, {end})", cid)
        at = offset + stored_len
        entries[cid] = PackEntry(cid, offset, stored_len, raw_len)
    return entries


def _pread(fd: int, n: int, offset: int) -> bytes:
    data = pread_upto(fd, n, offset)
    if len(data) < n:
        raise PackDecodeError("pack file ended early")
    return data


# Each chunk file's payload (the bytes after its header) starts on a multiple of this in
# the pack, after zero padding: the page cache copies aligned reads into the live tensors
# at full speed (FORMAT.md, "Pack file"; measured in snapshots/chunkfile.py's SHIFT_ALIGN).
PAYLOAD_ALIGN = 64
_ZEROS = memoryview(bytes(PAYLOAD_ALIGN))


class PackWriter:
    """One pack being written into `directory` (which must exist once `append` is called).

    Call sequence: `append` from any number of threads (the first creates the temp file),
    then on one thread either `finish()` (index, trailer, fsync, rename; returns the
    entries) or, for a save, `seal()` (index, trailer, rename) and then `sync()` (fsync;
    the caller fsyncs the directory alongside), or `discard()` after a failure. Nothing
    is named before `finish` or `seal`. `failpoint` is called with
    ``snapshot.before_pack_fsync`` and ``snapshot.before_pack_rename``.

    `writeback`: ask the kernel to start writing each chunk back as soon as it is
    appended (`durable.start_writeback`), so the final fsync finds little left to do.
    "inline": the appending thread asks, right after its write. It pays when chunks
    take CPU to make (compression overlaps the disk); for raw chunks on a busy disk it
    made saves slower (the hint blocks the appending thread on a full device queue):
    measured on 2 busy cores, median per-round ratios with/without 0.88-0.94 with zstd,
    1.29-1.75 without compression (54 and 256 MiB). "background": one thread of the
    pack's own asks, in append order, once the pack holds BACKGROUND_AFTER bytes (a
    small save starts no thread), so the disk writes one chunk while the workers copy
    the next and no worker waits on the device queue; hints not yet given when the
    pack is sealed are dropped (the fsync does the rest). Raw chunks, 256 MiB, 10
    interleaved rounds at load 4-7: wall per-round median 0.80x without (spread
    0.38-1.18), CPU 1.24x (the hints' own kernel work); 1 GiB, 4 rounds at load ~7.5:
    wall 0.54-0.76x in three rounds, 2.45x in one, CPU 1.4-2x. None: no hints.

    `direct`: write around the page cache where the filesystem allows (`directio`): the
    file gets O_DIRECT at its creation, every append (and the header, index and trailer)
    is copied into the aligned windows of a `directio.WindowedWriter` (memory from
    `staging`, kept by the caller between packs), whose own threads write them, and
    `seal`/`finish` write the last window and cut the file to its size before naming it;
    `writeback` is then moot (no dirty pages). Where O_DIRECT is refused at creation the
    pack is written as without `direct`. The bytes on disk are the same either way. A
    save asks for it for states of commit.DIRECT_AFTER bytes or more: copying into the
    page cache is what a large buffered save pays for, in CPU on a busy machine.
    """

    def __init__(self, directory: str, failpoint: Callable[[str], None] | None = None,
                 writeback: str | None = "inline", direct: bool = False, staging: StagingBuffers | None = None):
        if writeback not in (None, "inline", "background"):
            raise ValueError(f"writeback must be None, 'inline' or 'background', got {writeback!r}")
        self.directory = directory
        self._writeback = writeback
        self._want_direct = direct
        self._staging = staging
        self._windows: WindowedWriter | None = None  # direct: set by _open where O_DIRECT is taken
        self._hints: ThreadPoolExecutor | None = None  # "background": created once past BACKGROUND_AFTER
        self.name: str | None = None
        self._failpoint = failpoint
        self._lock = Lock()
        self._writing = Lock()  # one buffered append's pwrite at a time (append says why)
        self._fd: int | None = None
        self._tmp: str | None = None
        self._end = HEADER_SIZE
        self._entries: list[PackEntry] = []

    @property
    def empty(self) -> bool:
        return not self._entries

    @property
    def entries(self) -> list[PackEntry]:
        """The chunks appended so far, by offset (after `seal`: the pack's index)."""
        with self._lock:
            return sorted(self._entries, key=lambda e: e.offset)

    def append(self, cid: str, raw_len: int, parts: list) -> int:
        """Write one chunk file (`parts`, buffers in order) into the pack; its size.
        Thread-safe: the offset is reserved under the lock, the bytes written outside it.
        The chunk file starts where its payload lands on a PAYLOAD_ALIGN boundary, after
        zero padding (FORMAT.md, "Pack file"), which is written with it."""
        views = [memoryview(p).cast("B") for p in parts]
        size = sum(len(v) for v in views)
        with self._lock:
            if self._fd is None:
                self._open()
            padding = -(self._end + CHUNK_HEADER.size) % PAYLOAD_ALIGN
            offset = self._end + padding
            self._end = offset + size
            entry = PackEntry(cid, offset, size, raw_len)
            self._entries.append(entry)
            fd = self._fd
            windows = self._windows
        if padding:
            views.insert(0, _ZEROS[:padding])
            offset -= padding
            size += padding
        if windows is not None:
            windows.write(views, offset)  # no page cache, so no writeback to hint
            return size - padding
        # One buffered write at a time: the kernel runs them one at a time anyway (ext4
        # holds the file's inode lock across a buffered write), and a writer waiting for
        # that lock spins on the CPU while the holder copies: 9% of a 256 MiB save's CPU
        # samples (perf) were spent there. Waiting on this lock sleeps instead: CPU per
        # save 0.80-0.84x (`bench saves --baseline`, 25 and 11 interleaved rounds), wall
        # unchanged (1.01x): the hashing of other chunks still overlaps the write.
        with self._writing:
            _pwrite_all(fd, views, offset)
        if self._writeback == "inline":
            start_writeback(fd, offset, size)  # the kernel writes back while others encode
        elif self._writeback == "background" and offset + size > BACKGROUND_AFTER:
            with self._lock:
                if self._hints is None:
                    self._hints = ThreadPoolExecutor(1, thread_name_prefix="snapshots-writeback")
                self._hints.submit(start_writeback, fd, offset, size)
        return size - padding

    def _stop_hints(self) -> None:
        """Drop the hints not yet given and wait for the one being given: none may run
        once the descriptor is closed (its number could name another file by then)."""
        with self._lock:
            hints, self._hints = self._hints, None
        if hints is not None:
            hints.shutdown(wait=True, cancel_futures=True)

    def _open(self) -> None:
        self._tmp = os.path.join(self.directory, f"{TMP_PREFIX}pack.{os.getpid()}.{secrets.token_hex(8)}")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        if self._want_direct and enable_direct(self._fd):
            self._windows = WindowedWriter(self._fd, self._staging)
        self._write([memoryview(MAGIC + bytes(HEADER_SIZE - len(MAGIC)))], 0)

    def _write(self, views: list[memoryview], offset: int) -> None:
        if self._windows is not None:
            self._windows.write(views, offset)
        else:
            _pwrite_all(self._fd, views, offset)

    def finish(self) -> list[PackEntry]:
        """Append the index and trailer, fsync, rename to `<digest>.pack` (sets `name`);
        the entries, by offset. [] and no file when nothing was appended. The caller
        fsyncs the directory. On failure the temp file is deleted. (A save names its pack
        before the fsync instead: `seal`, then `sync`.)"""
        if self._fd is None:
            return []
        try:
            entries, name = self._write_index()
            if self._failpoint is not None:
                self._failpoint("snapshot.before_pack_fsync")
            os.fsync(self._fd)
            if self._failpoint is not None:
                self._failpoint("snapshot.before_pack_rename")
            os.close(self._fd)
            self._fd = None
            os.rename(self._tmp, os.path.join(self.directory, name))
        except BaseException:
            self.discard()
            raise
        self.name, self._tmp = name, None
        return entries

    def seal(self) -> list[PackEntry]:
        """`finish` less its fsync, for a save (FORMAT.md, "Commit protocol", step 1):
        append the index and trailer and rename to `<digest>.pack` (sets `name`), the
        file still open and not durable; the entries, by offset. [] and no file when
        nothing was appended. Nothing may rely on the pack (no manifest may name its
        chunks) until `sync` has returned and the directory has been fsynced; the two may
        run concurrently. On failure the temp file is deleted. `failpoint` is called with
        ``snapshot.before_pack_rename`` once the index is written and with
        ``snapshot.before_pack_fsync`` once the pack is named."""
        if self._fd is None:
            return []
        try:
            entries, name = self._write_index()
            if self._failpoint is not None:
                self._failpoint("snapshot.before_pack_rename")
            os.rename(self._tmp, os.path.join(self.directory, name))
        except BaseException:
            self.discard()
            raise
        self.name, self._tmp = name, os.path.join(self.directory, name)
        return entries

    def sync(self) -> None:
        """After `seal`: fsync the named pack and close it. On failure (or a raising
        failpoint) the pack is deleted: its bytes are not known to be on the disk, and
        nothing names its chunks yet. A no-op when nothing was sealed."""
        if self._fd is None:
            return
        try:
            if self._failpoint is not None:
                self._failpoint("snapshot.before_pack_fsync")
            os.fsync(self._fd)
        except BaseException:
            self.name = None
            self.discard()
            raise
        os.close(self._fd)
        self._fd, self._tmp = None, None

    def _write_index(self) -> tuple[list[PackEntry], str]:
        self._stop_hints()
        entries = sorted(self._entries, key=lambda e: e.offset)
        index = b"".join(ENTRY.pack(bytes.fromhex(e.id), e.offset, e.stored_len, e.raw_len) for e in entries)
        digest = xxhash.xxh3_128_digest(index)
        tail = index + TRAILER.pack(len(entries), self._end, digest)
        self._write([memoryview(tail)], self._end)
        if self._windows is not None:
            windows, self._windows = self._windows, None
            windows.finish(self._end + len(tail))  # every byte written, the file cut to its size
        return entries, digest.hex() + SUFFIX

    def discard(self) -> None:
        """Close and delete the file: the temp file, or the pack `seal` named and `sync`
        has not made durable (nothing relies on it yet). Idempotent; nothing once synced."""
        self._stop_hints()
        if self._windows is not None:
            self._windows.close()
            self._windows = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            unlink_quietly(self._tmp)
            self._tmp = None


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> None:
    # pwrite per buffer, not one pwritev: the crash-image and kill-at-the-nth-write tests
    # see (and cut) every write as a pwrite, and one pwritev measured within noise of this
    for view in views:
        while len(view):
            k = os.pwrite(fd, view, offset)
            offset += k
            view = view[k:]
