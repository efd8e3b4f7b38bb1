"""Manifests: the committed description of one snapshot (FORMAT.md, "Manifest file").

`Manifest.decode` is the only way bytes from disk become a manifest, and it checks the
whole schema, so code holding a `Manifest` may trust every index and chunk id in it.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import xxhash

from . import tree
from .chunkfile import MAX_RAW_LEN
from .tensorbytes import DTYPES

MAGIC = b"SNPMANIF"
VERSION = 1
HEADER = struct.Struct("<8sII16s")
_NAME = re.compile(r"^([0-9]+)-([0-9]+)$")
_CHUNK_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_INT = 2**63 - 1


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
    bytes_written: int
    bytes_stored: int

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
                "bytes": {"logical": self.bytes_logical, "written": self.bytes_written, "stored": self.bytes_stored},
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
            return cls._from_doc(name, doc)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestDecodeError(f"bad schema: {e}") from None

    @classmethod
    def _from_doc(cls, name: str, doc: Any) -> "Manifest":
        _check(isinstance(doc, dict), "body is not a map")
        _check(doc["format"] == VERSION, "body format differs from header")
        index, term = doc["index"], doc["term"]
        _check(_is_count(index) and _is_count(term), "index/term not ints >= 0")
        _check(parse_manifest_name(name) == (index, term), f"index/term {index}-{term} differ from name {name}")
        created = doc["created"]
        _check(isinstance(created, (int, float)) and not isinstance(created, bool), "created not a number")

        chunks = []
        for entry in doc["chunks"]:
            _check(isinstance(entry, list) and len(entry) == 3, "chunk entry is not [id, raw_len, stored_len]")
            cid, raw_len, stored_len = entry
            _check(is_chunk_id(cid), f"malformed chunk id {cid!r}")
            _check(_is_count(raw_len) and 0 < raw_len <= MAX_RAW_LEN, f"chunk raw_len {raw_len!r}")
            _check(_is_count(stored_len), f"chunk stored_len {stored_len!r}")
            chunks.append(ChunkRef(cid, raw_len, stored_len))
        _check(len({c.id for c in chunks}) == len(chunks), "a chunk is listed twice")

        tensors = []
        for entry in doc["tensors"]:
            _check(isinstance(entry, list) and len(entry) == 3, "tensor entry is not [dtype, shape, segs]")
            dtype, shape, segs = entry
            _check(dtype in DTYPES, f"unsupported dtype {dtype!r}")
            _check(isinstance(shape, list) and all(_is_count(d) for d in shape), f"bad shape {shape!r}")
            _check(isinstance(segs, list), "segments not a list")
            segments = []
            for seg in segs:
                _check(isinstance(seg, list) and len(seg) == 3 and all(_is_count(x) for x in seg), f"bad segment {seg!r}")
                chunk_no, offset, length = seg
                _check(chunk_no < len(chunks), f"segment names chunk #{chunk_no} of {len(chunks)}")
                _check(length > 0 and offset + length <= chunks[chunk_no].raw_len, f"segment {seg} outside its chunk")
                segments.append((chunk_no, offset, length))
            record = TensorRecord(dtype, tuple(shape), tuple(segments))
            _check(sum(s[2] for s in segments) == record.nbytes, f"segments do not cover {record.nbytes} bytes")
            tensors.append(record)

        tree.validate(doc["tree"], len(tensors))
        sizes = doc["bytes"]
        _check(isinstance(sizes, dict) and all(_is_count(sizes[k]) for k in ("logical", "written", "stored")), "bad bytes map")
        return cls(
            index=index, term=term, created=float(created), meta=doc["meta"], tree=doc["tree"],
            tensors=tuple(tensors), chunks=tuple(chunks), bytes_logical=sizes["logical"],
            bytes_written=sizes["written"], bytes_stored=sizes["stored"],
        )


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_INT


def _check(ok: bool, reason: str) -> None:
    if not ok:
        raise ManifestDecodeError(reason)
