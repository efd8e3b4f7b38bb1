"""Chunk files: byte grouping (`grouping`), zstd, the raw flag, and hash-checked bounded decoding.

The byte layout is in FORMAT.md ("Chunk file"). A `ChunkCodec` is shared by the worker
threads of one store; zstd contexts are not thread-safe, so each thread gets its own.
"""

from __future__ import annotations

import os
import struct
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


# What a writer does to new chunks (writer policy; readers decode any chunk file):
# "zstd" groups and compresses where it pays (FORMAT.md, "Raw flag"), "none" stores every
# chunk raw, so loading it is one read and a hash.
COMPRESSIONS = ("zstd", "none")


class ChunkDecodeError(Exception):
    """A chunk file failed a check; the message says which (caught and re-raised by the
    store as CorruptSnapshotError with the snapshot's name)."""


def chunk_id(raw: torch.Tensor) -> str:
    """xxh3-128 of a chunk's raw bytes (a flat uint8 CPU tensor) as 32 hex digits."""
    return xxhash.xxh3_128_hexdigest(buffer(raw))


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

    def read(self, path: str, raw_len: int, stored_len: int, out: torch.Tensor, offset: int | None = None) -> None:
        """Decode the chunk file at `path` into `out` (flat uint8 of `raw_len` bytes).

        `offset` None: the whole file is the chunk file and must be `stored_len` bytes.
        An offset: the chunk file is bytes [offset, offset + stored_len) of a pack, which
        must hold them. Raises ChunkDecodeError on any mismatch (size, header, frame size,
        length) or if the file is not a regular file (a symlink, FIFO or device: never
        followed, waited on or read), and FileNotFoundError if the file is missing. Never
        reads outside the chunk's `stored_len` bytes nor decompresses past `raw_len`. The
        caller checks the hash.
        """
        try:
            fd, size = open_regular(path, stored_len if offset is None else MAX_PACK_BYTES)
        except UnsafeFileError as e:
            raise ChunkDecodeError(f"{'chunk' if offset is None else 'pack'} file {e}") from None
        try:
            if offset is None:
                if size != stored_len:
                    raise ChunkDecodeError(f"file is {size} bytes, manifest says {stored_len}")
                base = 0
            else:
                if offset + stored_len > size:
                    raise ChunkDecodeError(f"pack is {size} bytes, the chunk's range ends at {offset + stored_len}")
                base = offset
            header = os.pread(fd, HEADER.size, base)
            if len(header) != HEADER.size:
                raise ChunkDecodeError("shorter than its header")
            magic, version, codec, width, _, n = HEADER.unpack(header)
            if magic != MAGIC or version != VERSION:
                raise ChunkDecodeError(f"bad magic or version {magic!r}/{version}")
            if n != raw_len:
                raise ChunkDecodeError(f"header says {n} raw bytes, manifest says {raw_len}")
            if codec == CODEC_RAW:
                if width != 1 or stored_len - HEADER.size != n:
                    raise ChunkDecodeError("raw chunk with grouping or wrong payload length")
                _pread_exact(fd, buffer(out), base + HEADER.size)
            elif codec == CODEC_STREAMS:
                self._read_streams(fd, base, stored_len, n, width, out)
            else:
                raise ChunkDecodeError(f"unknown codec {codec}")
        finally:
            os.close(fd)

    def _read_streams(self, fd: int, base: int, size: int, n: int, width: int, out: torch.Tensor) -> None:
        if width < 1 or n % width:
            raise ChunkDecodeError(f"group width {width} does not divide {n}")
        table_len = STREAM.size * width
        table = os.pread(fd, table_len, base + HEADER.size)
        if len(table) != table_len:
            raise ChunkDecodeError("stream table cut short")
        streams = [STREAM.unpack_from(table, j * STREAM.size) for j in range(width)]
        if HEADER.size + table_len + sum(length for _, length in streams) != size:
            raise ChunkDecodeError("stream lengths do not add up to the file size")
        stream_len = n // width
        target = self._scratch(n) if width > 1 else out
        offset = base + HEADER.size + table_len
        for j, (codec, length) in enumerate(streams):
            view = buffer(target[j * stream_len:(j + 1) * stream_len])
            if codec == CODEC_RAW:
                if length != stream_len:
                    raise ChunkDecodeError(f"raw stream {j} is {length} bytes, expected {stream_len}")
                _pread_exact(fd, view, offset)
            elif codec == CODEC_ZSTD:
                # length <= size (checked above), itself the manifest's stored_len.
                payload = buffer(self._scratch(length, "payload"))
                _pread_exact(fd, payload, offset)
                self._decompress(payload, view)
            else:
                raise ChunkDecodeError(f"unknown stream codec {codec}")
            offset += length
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


def _worth_trying(cctx: zstandard.ZstdCompressor, stream: memoryview) -> bool:
    """Whether a sample of `stream` compresses enough to be worth compressing it all."""
    size = len(stream)
    if size < SAMPLE_MIN:
        return True
    step = (size - SAMPLE_PIECE) // (SAMPLE_PIECES - 1)
    sample = b"".join([stream[k * step:k * step + SAMPLE_PIECE] for k in range(SAMPLE_PIECES)])
    return len(cctx.compress(sample)) <= len(sample) - len(sample) // SAMPLE_UNLESS_SAVES


def _pread_exact(fd: int, view: memoryview, offset: int) -> None:
    got = 0
    while got < len(view):
        k = os.preadv(fd, [view[got:]], offset + got)
        if k == 0:
            raise ChunkDecodeError("file ended early")
        got += k
