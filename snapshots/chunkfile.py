"""Chunk files: byte grouping (`grouping`), zstd, the raw flag, and hash-checked bounded decoding.

The byte layout is in FORMAT.md ("Chunk file"). A `ChunkCodec` is shared by the worker
threads of one store; zstd contexts are not thread-safe, so each thread gets its own.

Reading returns the xxh3-128 of what was decoded, so the caller checks it against the
chunk's id before trusting a byte. A raw chunk (every chunk of a store written with
compression="none") is read and hashed piece by piece (HASH_PIECE), each piece hashed
while it is in cache, and read shifted into alignment when its payload's file offset and
its destination differ modulo SHIFT_ALIGN (FORMAT.md, "Raw flag", says why).
"""

from __future__ import annotations

import ctypes
import os
import struct
import tempfile
import threading

import torch
import xxhash
import zstandard

from .grouping import group, ungroup
from .safefile import UnsafeFileError, open_regular
from .tensorbytes import buffer

MAGIC = b"SNPC"
VERSION = 1
HEADER = struct.Struct("<4sBBBBQ")
STREAM = struct.Struct("<B3xI")  # per stream: codec, stored length
CODEC_RAW = 0  # chunk: payload is the raw bytes; stream: stored as is
CODEC_STREAMS = 1  # chunk: byte-group streams, each raw or zstd, after a stream table
CODEC_ZSTD = 1  # stream: one zstd frame
MAX_RAW_LEN = 1 << 30
# The largest pack file a reader opens (packfile.py): no real bound, as a save of a huge
# state is one pack; only a pack's index is ever read whole, and it is bounded there.
MAX_PACK_BYTES = 1 << 50
# Per-thread scratch buffers up to this size are kept for the next chunk (the default
# chunk is 4 MiB); larger ones are allocated per use.
KEEP_SCRATCH = 64 << 20
# A stream is stored raw unless compression saves at least 1/RAW_UNLESS_SAVES of it.
RAW_UNLESS_SAVES = 32
# Before compressing a stream of at least SAMPLE_MIN bytes, compress a sample of it:
# SAMPLE_PIECES pieces of SAMPLE_PIECE bytes spread evenly over it. If the sample saves
# less than 1/SAMPLE_UNLESS_SAVES (half the bar above, as small inputs compress a little
# worse), the stream is stored raw without trying: the mantissa bytes of float data, a
# chunk of noise or of already-compressed bytes cost one small compression, not a
# full pass (writer policy: readers see an ordinary raw stream).
SAMPLE_PIECES = 8
SAMPLE_PIECE = 4096
SAMPLE_MIN = 4 * SAMPLE_PIECES * SAMPLE_PIECE
SAMPLE_UNLESS_SAVES = 64
# A raw chunk is read and hashed in pieces of this many bytes, each hashed right after it
# lands in `out` while it is still in this core's cache (a chunk read whole, then hashed,
# is hashed from L3 at best and from memory when it is larger or other work evicts it:
# xxh3 runs at ~52 GB/s from cache, ~22 GB/s from memory on the machine we measure). One
# core's L2 on that machine (Zen 4); a piece costs one more read system call.
HASH_PIECE = 1 << 20
# The kernel copies a read's bytes out of the page cache with `rep movsb`, which on the
# machine we measure (Zen 4) runs at two thirds of its speed unless source and
# destination are equally aligned modulo 32 bytes (200 MiB from a hot file: 22 ms
# aligned, 32-38 ms at 8, 16 or 48 bytes apart). A chunk's payload starts 16 bytes into
# its file (its header), and live tensors start on 64-byte boundaries, so a raw chunk
# whose payload is misaligned against its destination is read SHIFT_ALIGN-aligned a few
# bytes past its place and moved back piece by piece while the piece is in cache (an
# in-cache memmove: 28 ms for those 200 MiB, hash included, instead of 34 ms).
SHIFT_ALIGN = 32
# Chunks shorter than this are read where they go (the shift saves nothing on them).
SHIFT_MIN = 64 << 10
# Stream table entries read with a chunk's header (one read for widths up to 8, which is
# every width a writer uses: a float's component size); a wider table is read after it.
TABLE_GUESS = 8 * STREAM.size


# What a writer does to new chunks (writer policy; readers decode any chunk file):
# "zstd" groups and compresses where it pays (FORMAT.md, "Raw flag"), "none" stores every
# chunk raw, so loading it is one read and a hash.
COMPRESSIONS = ("zstd", "none")


class ChunkDecodeError(Exception):
    """A chunk file failed a check; the message says which (caught and re-raised by the
    store as CorruptSnapshotError with the snapshot's name)."""


def chunk_id(raw: torch.Tensor) -> str:
    """xxh3-128 of a chunk's raw bytes (a flat uint8 CPU tensor) as 32 hex digits."""
    # The hasher object's update releases the GIL (xxhash's one-shot functions hold it),
    # so the worker threads hash their chunks in parallel; same digest either way.
    hasher = xxhash.xxh3_128()
    hasher.update(buffer(raw))
    return hasher.hexdigest()


class ChunkCodec:
    """Encodes and decodes chunk files with per-thread zstd contexts.

    `level` is the zstd level; `compression` ("zstd" or "none") is what `encode` does. At level 1 and below, byte-grouped float chunks use tuned
    parameters (tiny hash table, long minimum match): grouped float bytes have few
    repeats, so nearly all the gain is entropy coding, and searching for matches only
    costs time (measured: ratio 0.34 vs 0.37 on bf16 exponent bytes, at twice the speed;
    the smallest hash table, 2**6 entries, is another 25% faster at the same ratio).
    """

    def __init__(self, level: int = 1, compression: str = "zstd"):
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(map(repr, COMPRESSIONS))}, not {compression!r}")
        self.level = level
        self.compression = compression
        self._local = threading.local()
        self._float_params = (
            zstandard.ZstdCompressionParameters(
                window_log=20, hash_log=6, chain_log=6, search_log=1, min_match=7,
                target_length=0, strategy=zstandard.STRATEGY_FAST,
            )
            if level <= 1
            else None
        )

    def _compressor(self, grouped: bool) -> zstandard.ZstdCompressor:
        key = "grouped" if grouped and self._float_params is not None else "plain"
        cctx = getattr(self._local, key, None)
        if cctx is None:
            if key == "grouped":
                cctx = zstandard.ZstdCompressor(compression_params=self._float_params)
            else:
                cctx = zstandard.ZstdCompressor(level=self.level)
            setattr(self._local, key, cctx)
        return cctx

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        return dctx

    def _scratch(self, n: int, name: str = "scratch", pinned: bool = False) -> torch.Tensor:
        """A reusable per-thread uint8 buffer of at least `n` bytes (one per `name`).
        Buffers over KEEP_SCRATCH are not kept: a store of huge chunks (a manifest may
        declare up to 1 GiB each) must not pin that much memory per worker thread."""
        if n > KEEP_SCRATCH:
            return torch.empty(n, dtype=torch.uint8, pin_memory=pinned)
        scratch = getattr(self._local, name, None)
        if scratch is None or scratch.numel() < n:
            scratch = torch.empty(n, dtype=torch.uint8, pin_memory=pinned)
            setattr(self._local, name, scratch)
        return scratch[:n]

    def scratch(self, n: int, name: str, pinned: bool = False) -> torch.Tensor:
        """This thread's reusable uint8 buffer `name` of `n` bytes (contents undefined),
        for callers that decode a chunk before copying parts of it out; valid until this
        thread asks for `name` again. Names used here: "scratch", "shift", "payload".
        pinned=True: page-locked host memory (CUDA must be available), from which a copy
        to a GPU is a DMA without a bounce buffer."""
        return self._scratch(n, name, pinned)

    def encode(self, raw: torch.Tensor, width: int) -> list:
        """The chunk file for `raw` (flat uint8) as a list of buffers to write in order."""
        n = raw.numel()
        if n > MAX_RAW_LEN:
            raise ValueError(f"chunk of {n} bytes exceeds the format's limit of {MAX_RAW_LEN}")
        if self.compression == "none":
            return [HEADER.pack(MAGIC, VERSION, CODEC_RAW, 1, 0, n), buffer(raw)]
        if width > 1 and n % width:
            width = 1
        grouped = group(raw, width, self._scratch(n), self._scratch(n, "shift")) if width > 1 else raw
        size = n // width
        cctx = self._compressor(width > 1)
        table, payloads, any_compressed = [], [], False
        for j in range(width):
            stream = buffer(grouped[j * size:(j + 1) * size])
            compressed = cctx.compress(stream) if _worth_trying(cctx, stream) else None
            if compressed is None or len(compressed) > size - size // RAW_UNLESS_SAVES:
                table.append(STREAM.pack(CODEC_RAW, size))
                payloads.append(stream)
            else:
                table.append(STREAM.pack(CODEC_ZSTD, len(compressed)))
                payloads.append(compressed)
                any_compressed = True
        if not any_compressed:
            return [HEADER.pack(MAGIC, VERSION, CODEC_RAW, 1, 0, n), buffer(raw)]
        return [HEADER.pack(MAGIC, VERSION, CODEC_STREAMS, width, 0, n) + b"".join(table), *payloads]

    def read(self, path: str, raw_len: int, stored_len: int, out: "torch.Tensor | memoryview",
             offset: int | None = None) -> str:
        """Decode the chunk file at `path` into `out` (flat uint8 tensor, or a writable
        byte memoryview, of `raw_len` bytes) and return the xxh3-128 of what it decoded,
        as 32 hex digits: the chunk's id if the chunk is good. The caller compares it.

        `offset` None: the whole file is the chunk file and must be `stored_len` bytes.
        An offset: the chunk file is bytes [offset, offset + stored_len) of a pack, which
        must hold them. Raises ChunkDecodeError on any mismatch (size, header, frame size,
        length) or if the file is not a regular file (a symlink, FIFO or device: never
        followed, waited on or read), and FileNotFoundError if the file is missing. Never
        reads outside the chunk's `stored_len` bytes nor decompresses past `raw_len`.
        (`open_file` and `read_open` are its two halves, for a reader that keeps a pack
        open across the chunks it holds.)
        """
        kept = getattr(self._local, "packs", None) if offset is not None else None
        if kept is not None:
            fd, size = kept.open(path)
            return self.read_open(fd, size, raw_len, stored_len, out, offset)
        fd, size = self.open_file(path, stored_len if offset is None else None)
        try:
            return self.read_open(fd, size, raw_len, stored_len, out, offset)
        finally:
            os.close(fd)

    def read_bytes(self, data: "bytes | bytearray | memoryview", raw_len: int,
                   out: "torch.Tensor | memoryview") -> str:
        """`read` of a chunk file held in memory (`data`, all of it, as `stored_len`):
        the same checks, errors (but FileNotFoundError) and digest. For a caller that hands
        out the bytes it checked: a second read of the file could see other bytes."""
        # Decoded through a memory file, so one decoder (read_open) serves both: nothing
        # here touches the disk, and the copy costs what the bytes' size does. (Where
        # there is no memfd_create, an unnamed temporary file does the same.)
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("snapshots-chunk", os.MFD_CLOEXEC)
        else:
            with tempfile.TemporaryFile() as f:
                fd = os.dup(f.fileno())
        try:
            view = memoryview(data).cast("B")
            while len(view):
                view = view[os.write(fd, view):]
            return self.read_open(fd, len(data), raw_len, len(data), out)
        finally:
            os.close(fd)

    def packs_kept_open(self) -> "OpenPacks":
        """A context manager: until it exits, `read` on this thread keeps every pack it
        opens open for the next chunk in it (a load reads many chunks of one pack), and
        closes them all at exit. Only for callers that hold the store's shared lock meanwhile
        (a prune deletes no pack under it; an open pack keeps its bytes anyway)."""
        return OpenPacks(self._local)

    @staticmethod
    def open_file(path: str, stored_len: int | None) -> tuple[int, int]:
        """(descriptor, size) of a loose chunk file (`stored_len` its bound) or of a pack
        (None); the caller closes it. ChunkDecodeError if it is not a regular file within
        the bound, FileNotFoundError if it is missing."""
        try:
            return open_regular(path, MAX_PACK_BYTES if stored_len is None else stored_len)
        except UnsafeFileError as e:
            raise ChunkDecodeError(f"{'pack' if stored_len is None else 'chunk'} file {e}") from None

    def read_open(self, fd: int, size: int, raw_len: int, stored_len: int, out: "torch.Tensor | memoryview",
                  offset: int | None = None) -> str:
        """`read` from a descriptor of `open_file` (`size` as it returned): the same checks,
        the same errors but FileNotFoundError, the same digest returned. ValueError, before
        anything is read, when `out` is not `raw_len` contiguous bytes. `out` may hold
        anything afterwards if it raises (a raw read goes straight into it before its
        header is checked), and holds the bytes read if the digest is not the chunk's.

        A raw chunk (the common case, and every chunk of a store written with
        compression="none") is read in HASH_PIECE pieces, each hashed as soon as it lands;
        a stream chunk is decoded whole, then hashed."""
        if offset is None:
            if size != stored_len:
                raise ChunkDecodeError(f"file is {size} bytes, manifest says {stored_len}")
            base = 0
        else:
            if offset + stored_len > size:
                raise ChunkDecodeError(f"pack is {size} bytes, the chunk's range ends at {offset + stored_len}")
            base = offset
        if isinstance(out, memoryview):
            view = out
        elif out.is_contiguous():
            view = buffer(out)
        else:
            # buffer() would span the tensor's nbytes from its first element: other
            # tensors' bytes, for a strided view (a caller bug, never silent).
            raise ValueError(f"destination of {out.numel()} elements with strides {out.stride()} is not contiguous")
        if len(view) != raw_len:
            raise ValueError(f"destination is {len(view)} bytes, the chunk's raw length is {raw_len}")
        shift = 0
        if stored_len == HEADER.size + raw_len:
            # Most likely a raw chunk: header and first piece in one read, the piece
            # straight into `out` (SHIFT_ALIGN: `shift` bytes past its place). A stream
            # chunk can have this size too: it is decoded over it below.
            shift = _shift(view, base + HEADER.size) if raw_len >= max(SHIFT_MIN, SHIFT_ALIGN) else 0
            head = bytearray(HEADER.size)
            got = os.preadv(fd, [head, view[shift:shift + min(HASH_PIECE, raw_len - shift)]], base)
            if got < HEADER.size:
                # A read may return less than asked before the end of the file (POSIX;
                # only 0 bytes means the end), so the rest of the header is read before
                # the file is called short. The piece is then read by _read_hashing.
                rest = pread_upto(fd, HEADER.size - got, base + got)
                head[got:got + len(rest)] = rest
                got += len(rest)
            header = bytes(head) if got >= HEADER.size else b""
        else:
            got = 0
            header = pread_upto(fd, min(stored_len, HEADER.size + TABLE_GUESS), base)
        if len(header) < HEADER.size:
            raise ChunkDecodeError("shorter than its header")
        magic, version, codec, width, _, n = HEADER.unpack_from(header)
        if magic != MAGIC or version != VERSION:
            raise ChunkDecodeError(f"bad magic or version {magic!r}/{version}")
        if n != raw_len:
            raise ChunkDecodeError(f"header says {n} raw bytes, manifest says {raw_len}")
        if codec == CODEC_RAW:
            if width != 1 or stored_len - HEADER.size != n:
                raise ChunkDecodeError("raw chunk with grouping or wrong payload length")
            return _read_hashing(fd, view[:n], base + HEADER.size, max(0, got - HEADER.size), shift)
        if codec == CODEC_STREAMS:
            target = out if isinstance(out, torch.Tensor) else torch.frombuffer(out, dtype=torch.uint8)
            self._read_streams(fd, base, stored_len, n, width, target[:n], header[HEADER.size:])
            hasher = xxhash.xxh3_128()
            hasher.update(view[:n])
            return hasher.hexdigest()
        raise ChunkDecodeError(f"unknown codec {codec}")

    def _read_streams(self, fd: int, base: int, size: int, n: int, width: int, out: torch.Tensor, table: bytes) -> None:
        """Decode a CODEC_STREAMS chunk; `table` holds whatever of its stream table was read with the header."""
        if width < 1 or n % width:
            raise ChunkDecodeError(f"group width {width} does not divide {n}")
        table_len = STREAM.size * width
        if len(table) < table_len:
            table = pread_upto(fd, table_len, base + HEADER.size)
            if len(table) != table_len:
                raise ChunkDecodeError("stream table cut short")
        streams = [STREAM.unpack_from(table, j * STREAM.size) for j in range(width)]
        if HEADER.size + table_len + sum(length for _, length in streams) != size:
            raise ChunkDecodeError("stream lengths do not add up to the file size")
        stream_len = n // width
        target = self._scratch(n) if width > 1 else out
        packed = sum(length for codec, length in streams if codec == CODEC_ZSTD)
        payload = buffer(self._scratch(packed, "payload")) if packed else None
        # Every stream in one read: raw ones straight into place, zstd frames into `payload`.
        views, frames, at = [], [], 0
        for j, (codec, length) in enumerate(streams):
            if codec == CODEC_RAW:
                if length != stream_len:
                    raise ChunkDecodeError(f"raw stream {j} is {length} bytes, expected {stream_len}")
                views.append(buffer(target[j * stream_len:(j + 1) * stream_len]))
            elif codec == CODEC_ZSTD:
                # length <= size (checked above), itself the manifest's stored_len.
                views.append(payload[at:at + length])
                frames.append((j, at, length))
                at += length
            else:
                raise ChunkDecodeError(f"unknown stream codec {codec}")
        _preadv_exact(fd, views, base + HEADER.size + table_len)
        for j, at, length in frames:
            self._decompress(payload[at:at + length], buffer(target[j * stream_len:(j + 1) * stream_len]))
        if width > 1:
            ungroup(target, width, out)

    def _decompress(self, payload: memoryview, view: memoryview) -> None:
        n = len(view)
        try:
            declared = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as e:
            raise ChunkDecodeError(f"bad zstd frame header: {e}") from None
        if declared != n:
            # Checked first: decompress() would trust a frame's declared size over any bound.
            raise ChunkDecodeError(f"zstd frame declares {declared} bytes, expected {n}")
        try:
            reader = self._decompressor().stream_reader(payload, read_across_frames=False)
            got = 0
            while got < n:
                k = reader.readinto(view[got:])
                if k == 0:
                    break
                got += k
            extra = reader.read(1) if got == n else b""
        except zstandard.ZstdError as e:
            raise ChunkDecodeError(f"zstd: {e}") from None
        if got != n or extra:
            raise ChunkDecodeError(f"decompressed to {'more' if extra else got} bytes, expected {n}")


class OpenPacks:
    """The packs one thread keeps open (`ChunkCodec.packs_kept_open`); entered and exited
    on that thread, which is the only one that uses it."""

    def __init__(self, local: threading.local):
        self._local = local
        self._files: dict[str, tuple[int, int]] = {}

    def open(self, path: str) -> tuple[int, int]:
        """(descriptor, size) of the pack at `path`, opened and checked on first use
        (`ChunkCodec.open_file`: its errors, FileNotFoundError for a missing pack, are
        raised again on every use, as nothing is kept for it)."""
        found = self._files.get(path)
        if found is None:
            found = self._files[path] = ChunkCodec.open_file(path, None)
        return found

    def __enter__(self) -> "OpenPacks":
        self._local.packs = self
        return self

    def __exit__(self, *exc) -> None:
        self._local.packs = None
        files, self._files = self._files, {}
        for fd, _ in files.values():
            os.close(fd)


def _worth_trying(cctx: zstandard.ZstdCompressor, stream: memoryview) -> bool:
    """Whether a sample of `stream` compresses enough to be worth compressing it all."""
    size = len(stream)
    if size < SAMPLE_MIN:
        return True
    step = (size - SAMPLE_PIECE) // (SAMPLE_PIECES - 1)
    sample = b"".join([stream[k * step:k * step + SAMPLE_PIECE] for k in range(SAMPLE_PIECES)])
    return len(cctx.compress(sample)) <= len(sample) - len(sample) // SAMPLE_UNLESS_SAVES


def _shift(view: memoryview, offset: int) -> int:
    """How many bytes past `view`'s start a read of the file bytes at `offset` must land
    to be as aligned as their page cache copy (SHIFT_ALIGN), 0 when it already is."""
    return (offset - ctypes.addressof(ctypes.c_char.from_buffer(view))) % SHIFT_ALIGN


def _read_hashing(fd: int, view: memoryview, offset: int, done: int, shift: int = 0) -> str:
    """Fill `view` with the len(view) bytes at `offset` and return their xxh3-128 hex
    digest, hashing each HASH_PIECE right after it is read. The first `done` of them are
    read already, at `view[shift:]`.

    With a `shift` (SHIFT_ALIGN), bytes [0, n - shift) are read `shift` bytes past their
    place, piece after piece, and each piece is moved back (memmove: they overlap) while
    it is in cache; the last `shift` bytes, which have no room past the end, are read in
    place. The object's update releases the GIL (the one-shot functions hold it), so the
    load's other threads run meanwhile; pieces feed one streaming hasher, which gives
    the same digest as hashing the bytes at once."""
    hasher = xxhash.xxh3_128()
    n, at = len(view), 0
    shifted_end = n - shift  # where reading past the place would run past the view
    while at < shifted_end:
        end = at + HASH_PIECE if at + HASH_PIECE < shifted_end else shifted_end
        if done < end:
            # One read per piece; the general loop only when the file cut it short.
            got = os.preadv(fd, [view[shift + done:shift + end]], offset + done)
            if got < end - done:
                _pread_exact(fd, view[shift + done + got:shift + end], offset + done + got)
            done = end
        if shift:
            view[at:end] = view[at + shift:end + shift]
        hasher.update(view[at:end])
        at = end
    if at < n:
        _pread_exact(fd, view[at:n], offset + at)
        hasher.update(view[at:n])
    return hasher.hexdigest()


def pread_upto(fd: int, n: int, offset: int) -> bytes:
    """The `n` bytes at `offset`, fewer only where the file ends (a read that returns
    less than asked is not the end: only one that returns nothing is). Every reader of
    a chunk or pack range reads through this."""
    parts, got = [], 0
    while got < n:
        part = os.pread(fd, n - got, offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pread_exact(fd: int, view: memoryview, offset: int) -> None:
    _preadv_exact(fd, [view], offset)


def _preadv_exact(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill `views`, in order, from the bytes at `offset` (one system call unless cut short)."""
    views = [v for v in views if len(v)]
    while views:
        k = os.preadv(fd, views, offset)
        if k == 0:
            raise ChunkDecodeError("file ended early")
        offset += k
        while views and k >= len(views[0]):
            k -= len(views[0])
            views.pop(0)
        if views and k:
            views[0] = views[0][k:]
