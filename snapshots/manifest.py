"""Manifests: the committed description of one snapshot (FORMAT.md, "Manifest file").

`Manifest.decode` is the only way bytes from disk become a manifest, and it checks the
whole schema, so code holding a `Manifest` may trust every index and chunk id in it.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import xxhash

from . import tree
from .chunkfile import HEADER as CHUNK_HEADER
from .chunkfile import MAX_RAW_LEN, STREAM
from .tensorbytes import DTYPES

MAGIC = b"SNPMANIF"
VERSION = 1
# The value of the body's `counts` field: `bytes.written` and `bytes.stored` count the
# chunk files only, and a reader adds the manifest file's own size. Manifests without the
# field (older writers) counted the manifest in, which made the writer re-encode until
# its size stopped changing (FORMAT.md, "Manifest file").
COUNTS_CHUNKS = "chunks"
HEADER = struct.Struct("<8sII16s")
_NAME = re.compile(r"^([0-9]+)-([0-9]+)$")
_CHUNK_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_INT = 2**63 - 1
# The largest manifest file a reader reads (and a writer writes): about a million 4 MiB
# chunks, several TiB of state. Bounding it bounds what a hostile manifest file (a
# sparse 64 GiB file, a symlink to /dev/zero) can make a reader read or decode.
MAX_MANIFEST_BYTES = 64 << 20
# A chunk file is its header, at most 255 stream-table entries and at most its raw
# bytes (a stream that would not shrink is stored raw), so this bounds stored_len.
MAX_CHUNK_OVERHEAD = CHUNK_HEADER.size + 255 * STREAM.size
MIN_STORED_LEN = CHUNK_HEADER.size


class ManifestDecodeError(Exception):
    """A manifest failed a check; the message says which."""


def manifest_name(index: int, term: int) -> str:
    """The file name of the manifest for (index, term): decimal, e.g. "1200-3"."""
    return f"{index}-{term}"


def parse_manifest_name(name: str) -> tuple[int, int] | None:
    """(index, term) for a valid manifest name, None for anything else (temp files...)."""
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def is_chunk_id(value: object) -> bool:
    """True for exactly 32 lowercase hex digits: the only strings used as chunk names."""
    return isinstance(value, str) and _CHUNK_ID.match(value) is not None


@dataclass(frozen=True)
class ChunkRef:
    id: str
    raw_len: int
    stored_len: int


@dataclass(frozen=True)
class TensorRecord:
    dtype: str
    shape: tuple[int, ...]
    segments: tuple[tuple[int, int, int], ...]  # (chunk_no, offset, length)

    @property
    def nbytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class Manifest:
    index: int
    term: int
    created: float
    meta: Any
    tree: list
    tensors: tuple[TensorRecord, ...]
    chunks: tuple[ChunkRef, ...]
    bytes_logical: int
    chunk_bytes_written: int  # new chunk files the save wrote (not the manifest)
    chunk_bytes_stored: int  # every chunk file it uses (not the manifest)
    file_size: int = 0  # of the manifest file: set by decode, and by the writer once encoded

    @property
    def name(self) -> str:
        return manifest_name(self.index, self.term)

    def encode(self) -> bytes:
        body = msgpack.packb(
            {
                "format": VERSION,
                "index": self.index,
                "term": self.term,
                "created": self.created,
                "meta": self.meta,
                "tree": self.tree,
                "tensors": [[t.dtype, list(t.shape), [list(s) for s in t.segments]] for t in self.tensors],
                "chunks": [[c.id, c.raw_len, c.stored_len] for c in self.chunks],
                "bytes": {"logical": self.bytes_logical, "written": self.chunk_bytes_written, "stored": self.chunk_bytes_stored},
                "counts": COUNTS_CHUNKS,
            },
            use_bin_type=True,
        )
        return HEADER.pack(MAGIC, VERSION, 0, xxhash.xxh3_128_digest(body)) + body

    @classmethod
    def decode(cls, name: str, data: bytes) -> "Manifest":
        """Parse and fully validate manifest bytes read from the file `name`."""
        if len(data) < HEADER.size:
            raise ManifestDecodeError("shorter than its header")
        magic, version, _, digest = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ManifestDecodeError("bad magic")
        if version != VERSION:
            raise ManifestDecodeError(f"unsupported format version {version}")
        body = data[HEADER.size:]
        if xxhash.xxh3_128_digest(body) != digest:
            raise ManifestDecodeError("checksum mismatch")
        try:
            doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises several unrelated types on bad input
            raise ManifestDecodeError(f"undecodable body: {type(e).__name__}: {e}") from None
        try:
            return cls._from_doc(name, doc, len(data))
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestDecodeError(f"bad schema: {e}") from None

    @classmethod
    def _from_doc(cls, name: str, doc: Any, file_size: int) -> "Manifest":
        # Every field is checked for type and range here and a failure names the field:
        # a hostile value (created=inf, term=2**64-1, a float where an int belongs) is
        # damage, never a traceback later nor a snapshot that verifies.
        _check(isinstance(doc, dict), "body is not a map")
        unknown = sorted(map(repr, set(doc) - _FIELDS - _OPTIONAL))
        _check(not unknown, f"unknown field(s) {', '.join(unknown)[:200]}")
        counts = doc.get("counts")
        _check(counts in (None, COUNTS_CHUNKS), f"field 'counts': {counts!r:.40} is not {COUNTS_CHUNKS!r}")
        missing = sorted(_FIELDS - set(doc))
        _check(not missing, f"missing field(s) {', '.join(missing)}")
        _check(type(doc["format"]) is int and doc["format"] == VERSION, f"field 'format': {doc['format']!r:.40} is not {VERSION}")
        index, term = doc["index"], doc["term"]
        _check(_is_count(index), f"field 'index': {index!r:.40} is not an int in [0, 2**63)")
        _check(_is_count(term), f"field 'term': {term!r:.40} is not an int in [0, 2**63)")
        _check(parse_manifest_name(name) == (index, term), f"fields index/term {index}-{term} differ from name {name}")
        created = doc["created"]
        _check(type(created) in (int, float) and math.isfinite(created) and 0 <= created < 2**53,
               f"field 'created': {created!r:.40} is not a finite time >= 0")
        _check(_is_plain(doc["meta"]), "field 'meta': holds a msgpack extension type or nests too deep")

        chunks = []
        _check(isinstance(doc["chunks"], list), "field 'chunks' is not an array")
        for k, entry in enumerate(doc["chunks"]):
            where = f"chunks[{k}]"
            _check(isinstance(entry, list) and len(entry) == 3, f"{where} is not [id, raw_len, stored_len]")
            cid, raw_len, stored_len = entry
            _check(is_chunk_id(cid), f"{where}.id: malformed chunk id {cid!r:.80}")
            _check(_is_count(raw_len) and 0 < raw_len <= MAX_RAW_LEN, f"{where}.raw_len: {raw_len!r:.40} not in [1, {MAX_RAW_LEN}]")
            _check(_is_count(stored_len) and MIN_STORED_LEN <= stored_len <= raw_len + MAX_CHUNK_OVERHEAD,
                   f"{where}.stored_len: {stored_len!r:.40} impossible for raw_len {raw_len}")
            chunks.append(ChunkRef(cid, raw_len, stored_len))
        _check(len({c.id for c in chunks}) == len(chunks), "field 'chunks': a chunk is listed twice")

        tensors = []
        _check(isinstance(doc["tensors"], list), "field 'tensors' is not an array")
        for k, entry in enumerate(doc["tensors"]):
            where = f"tensors[{k}]"
            _check(isinstance(entry, list) and len(entry) == 3, f"{where} is not [dtype, shape, segs]")
            dtype, shape, segs = entry
            _check(isinstance(dtype, str) and dtype in DTYPES, f"{where}.dtype: unsupported dtype {dtype!r:.40}")
            _check(isinstance(shape, list) and len(shape) <= _MAX_DIMS and all(_is_count(d) for d in shape),
                   f"{where}.shape: bad shape {shape!r:.80}")
            _check(math.prod(max(d, 1) for d in shape) <= _MAX_NUMEL, f"{where}.shape: {shape!r:.80} too large")
            _check(isinstance(segs, list), f"{where}.segments is not an array")
            segments = []
            for seg in segs:
                _check(isinstance(seg, list) and len(seg) == 3 and all(_is_count(x) for x in seg), f"{where}: bad segment {seg!r:.80}")
                chunk_no, offset, length = seg
                _check(chunk_no < len(chunks), f"{where}: segment names chunk #{chunk_no} of {len(chunks)}")
                _check(length > 0 and offset + length <= chunks[chunk_no].raw_len,
                       f"{where}: segment {seg} reads past its chunk's {chunks[chunk_no].raw_len} bytes")
                segments.append((chunk_no, offset, length))
            record = TensorRecord(dtype, tuple(shape), tuple(segments))
            _check(sum(s[2] for s in segments) == record.nbytes,
                   f"{where}: segments hold {sum(s[2] for s in segments)} bytes, {dtype} {shape} needs {record.nbytes}")
            tensors.append(record)

        tree.validate(doc["tree"], len(tensors))
        sizes = doc["bytes"]
        _check(isinstance(sizes, dict) and set(sizes) == {"logical", "written", "stored"}, "field 'bytes' is not a map of logical, written, stored")
        for key in ("logical", "written", "stored"):
            _check(_is_count(sizes[key]), f"field 'bytes.{key}': {sizes[key]!r:.40} is not an int in [0, 2**63)")
        logical = sum(t.nbytes for t in tensors)
        _check(sizes["logical"] == logical, f"field 'bytes.logical': {sizes['logical']} but the tensors hold {logical} bytes")
        written, stored = sizes["written"], sizes["stored"]
        if counts is None:  # an older writer counted this file in: keep the chunks' share
            written, stored = max(0, written - file_size), max(0, stored - file_size)
        return cls(
            index=index, term=term, created=float(created), meta=doc["meta"], tree=doc["tree"],
            tensors=tuple(tensors), chunks=tuple(chunks), bytes_logical=sizes["logical"],
            chunk_bytes_written=written, chunk_bytes_stored=stored, file_size=file_size,
        )


_FIELDS = frozenset({"format", "index", "term", "created", "meta", "tree", "tensors", "chunks", "bytes"})
_OPTIONAL = frozenset({"counts"})
_MAX_DIMS = 64
_MAX_NUMEL = 2**62  # torch computes strides in int64; with zero dims counted as 1


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Whether a decoded msgpack value holds only nil, bool, int, float, str, bytes,
    arrays and maps (no extension types such as msgpack's Timestamp), nested <= 256 deep."""
    if depth > 256:
        return False
    if type(value) is list:  # exact types: msgpack's ExtType is a tuple subclass
        return all(_is_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return value is None or type(value) in (bool, int, float, str, bytes)


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_INT


def _check(ok: bool, reason: str) -> None:
    if not ok:
        raise ManifestDecodeError(reason)
