"""Entry framing: the fixed header, the chained checksum, and the Entry values readers get.

Layout and checksum definition are in FORMAT.md; this module is their only implementation.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import xxhash

from .codec import REUSE_LIMIT, decode_payload, payload_unpacker
from .errors import CorruptEntryError

ENTRY_VERSION = 1
HEADER = struct.Struct(">BBHIQQQ")  # version, flags, op_len, payload_len, term, time_ns, checksum
HEADER_SIZE = HEADER.size  # 32: the fixed entry header of FORMAT.md, exported as eventlog.HEADER_SIZE
FRAMING = struct.Struct(">BBHI")  # the header's first fields: version, flags, op_len, payload_len
CHECKSUM_AT = 24
MAX_OP_LEN = 1024
MAX_PAYLOAD_LEN = 2**32 - 1
KEY = struct.Struct(">Q")
# What the checksum covers ahead of op and payload: the index, then the header up to the checksum.
_HASHED_HEAD = struct.Struct(">QBBHIQQ")

_xxh3_64 = xxhash.xxh3_64_intdigest


class EntryHeader(NamedTuple):
    """An entry's fixed header and op, read without decoding its payload."""

    index: int
    term: int
    time_ns: int
    checksum: int
    op: str
    payload_size: int


class Entry(NamedTuple):
    """One log entry with its decoded payload. Tensors in the payload are fresh CPU tensors."""

    index: int
    term: int
    op: str
    payload: Any
    time_ns: int
    checksum: int

    @property
    def time(self) -> float:
        """Append time in seconds since the Unix epoch."""
        return self.time_ns / 1e9


def key(index: int) -> bytes:
    return KEY.pack(index)


def index_of(key_bytes: bytes) -> int:
    return KEY.unpack(key_bytes)[0]


def frame(index: int, term: int, op_bytes: bytes, payload: bytes, time_ns: int, prev_checksum: int) -> tuple[bytes, int]:
    """(value bytes, checksum) of the entry at `index`, chained from `prev_checksum`."""
    _, value, checksum = frame_entry(index, term, op_bytes, payload, time_ns, prev_checksum)
    return value, checksum


def frame_entry(index: int, term: int, op_bytes: bytes, payload: bytes, time_ns: int,
                prev_checksum: int) -> tuple[bytes, bytes, int]:
    """(LMDB key, value bytes, checksum) of the entry at `index`, chained from `prev_checksum`.

    The appenders' one call per entry: the key is the first 8 bytes of the hashed head
    (the index, big-endian, as `key` packs it), so it costs a slice, not a pack.
    """
    head = _HASHED_HEAD.pack(index, ENTRY_VERSION, 0, len(op_bytes), len(payload), term, time_ns)
    tail = op_bytes + payload
    checksum = _xxh3_64(head + tail, prev_checksum)
    return head[:8], b"".join((head[8:], KEY.pack(checksum), tail)), checksum


_OP_CACHE: dict[str, bytes] = {}  # op names are few and hot; bounded below
_OP_CACHE_LIMIT = 4096
# known_op_bytes(op): the bytes of a str op name check_op has accepted before, else None.
# A dict lookup in C, for EventLog.append's per-entry path (check_op for anything else).
known_op_bytes = _OP_CACHE.get


def check_op(op: str) -> bytes:
    """The UTF-8 bytes of a valid op name; ValueError/TypeError naming what is wrong."""
    cached = _OP_CACHE.get(op) if type(op) is str else None
    if cached is not None:
        return cached
    if not isinstance(op, str):
        raise TypeError(f"op must be a str, got {type(op).__name__}")
    op_bytes = op.encode("utf-8")
    if not 1 <= len(op_bytes) <= MAX_OP_LEN:
        raise ValueError(f"op name must be 1..{MAX_OP_LEN} bytes of UTF-8, got {len(op_bytes)}")
    if len(_OP_CACHE) < _OP_CACHE_LIMIT:
        _OP_CACHE[op] = op_bytes
    return op_bytes


def parse_header(index: int, value) -> tuple[int, int, int, int, int, int]:
    """(op_len, payload_len, term, time_ns, checksum, stored length) of a raw value.

    Raises CorruptEntryError when the framing itself is inconsistent.
    """
    return _unpack_framed(index, value, len(value))


def _unpack_framed(index: int, head, stored_length: int) -> tuple[int, int, int, int, int, int]:
    """Unpack the header at the start of `head` and check it against the stored length."""
    if len(head) < HEADER_SIZE:
        raise CorruptEntryError(index, f"value is {stored_length} bytes, shorter than the {HEADER_SIZE}-byte header")
    version, flags, op_len, payload_len, term, time_ns, checksum = HEADER.unpack_from(head)
    if version != ENTRY_VERSION:
        raise CorruptEntryError(index, f"unknown entry version {version}")
    if flags != 0:
        raise CorruptEntryError(index, f"unknown flags {flags:#x}")
    if stored_length != HEADER_SIZE + op_len + payload_len:
        raise CorruptEntryError(
            index, f"value is {stored_length} bytes but its header declares {HEADER_SIZE + op_len + payload_len}"
        )
    return op_len, payload_len, term, time_ns, checksum, stored_length


def verify_value(index: int, value, prev_checksum: int) -> tuple[int, int, int, int, int]:
    """Check framing and the chained checksum of a raw value.

    Returns (op_len, payload_len, term, time_ns, checksum); raises CorruptEntryError.
    """
    op_len, payload_len, term, time_ns, checksum, _ = parse_header(index, value)
    mv = memoryview(value)
    hasher = xxhash.xxh3_64(KEY.pack(index), seed=prev_checksum)
    hasher.update(mv[:CHECKSUM_AT])
    hasher.update(mv[HEADER_SIZE:])
    if hasher.intdigest() != checksum:
        raise CorruptEntryError(index, "checksum mismatch (the entry or the one before it was altered)")
    return op_len, payload_len, term, time_ns, checksum


def stored_checksum(index: int, value) -> int:
    """The checksum field of a raw value, after a framing check."""
    return parse_header(index, value)[4]


def copy_framed(index: int, value, head_only: bool = False) -> bytes | CorruptEntryError:
    """A copy of a stored value (of its header and op only if head_only) whose framing
    checks out, else the CorruptEntryError.

    The framing is checked on the value's header before anything else is copied: a
    damaged LMDB node can claim a length that runs past the end of the file, and copying
    it would touch unmapped pages (SIGBUS) or allocate without bound.
    """
    try:
        parse_header(index, value)
    except CorruptEntryError as exc:
        return exc
    return bytes(value[: head_length(value)]) if head_only else bytes(value)


def decode_header(index: int, value, prev_checksum: int) -> EntryHeader:
    """Checksum-verified header of a raw value; CorruptEntryError if anything is off."""
    op_len, payload_len, term, time_ns, checksum = verify_value(index, value, prev_checksum)
    op = _op_text(index, value, op_len)
    return EntryHeader(index, term, time_ns, checksum, op, payload_len)


def head_length(value) -> int:
    """Bytes of a raw value up to the end of its op (the whole value if it is too short)."""
    if len(value) < HEADER_SIZE:
        return len(value)
    return HEADER_SIZE + int.from_bytes(value[2:4], "big")


def decode_head(index: int, head, stored_length: int) -> EntryHeader:
    """Header of an entry from its first `head_length` bytes and its full stored length.

    Framing is checked against `stored_length`; the checksum is not (the payload is not here).
    """
    op_len, payload_len, term, time_ns, checksum, _ = _unpack_framed(index, head, stored_length)
    return EntryHeader(index, term, time_ns, checksum, _op_text(index, head, op_len), payload_len)


def decode_entry(index: int, value, prev_checksum: int) -> Entry:
    """A verified, decoded Entry from a raw value; CorruptEntryError if anything is off."""
    op_len, payload_len, term, time_ns, checksum = verify_value(index, value, prev_checksum)
    op = _op_text(index, value, op_len)
    start = HEADER_SIZE + op_len
    try:
        payload = decode_payload(bytes(value[start:]))
    except Exception as exc:  # msgpack raises several unrelated types on malformed input
        raise CorruptEntryError(index, f"payload does not decode: {type(exc).__name__}: {exc}") from exc
    return Entry(index, term, op, payload, time_ns, checksum)


_OP_TEXT: dict[bytes, str] = {}  # op bytes -> name: op names are few; bounded like _OP_CACHE
_HASH_COPY_LIMIT = 64 * 2**10  # up to this size, one concatenated copy is cheaper than a hasher object


def decode_entries(batch, seed: int) -> tuple[list[Entry], BaseException | None]:
    """Verified, decoded Entries of a batch of (index, value, stored length), chained from `seed`.

    Returns (entries, error): the entries before the first one that fails, and that
    entry's CorruptEntryError (or the exception the batch carries at that position),
    or None. Exactly what calling `decode_entry` on each value in turn gives, in one
    tight loop: one header unpack, one xxh3 call and one msgpack decode per entry. Any
    entry that does not pass the fast checks is handed to `decode_entry`, so a damaged
    entry raises the same error, naming the same index, as it always did.
    """
    out: list[Entry] = []
    append = out.append
    unpack = HEADER.unpack_from
    pack_key = KEY.pack
    ops = _OP_TEXT
    new = tuple.__new__  # Entry's own __new__ is a Python function: one call more per entry
    unpacker = payload_unpacker()
    fed = 0
    for index, value, _ in batch:
        if isinstance(value, BaseException):
            return out, value
        try:
            version, flags, op_len, payload_len, term, time_ns, checksum = unpack(value)
            start = HEADER_SIZE + op_len
            if version != ENTRY_VERSION or flags or len(value) != start + payload_len:
                raise _Slow
            if payload_len <= _HASH_COPY_LIMIT:
                if _xxh3_64(pack_key(index) + value[:CHECKSUM_AT] + value[HEADER_SIZE:], seed) != checksum:
                    raise _Slow
            else:
                verify_value(index, value, seed)
            op = ops.get(value[HEADER_SIZE:start])
            if op is None:
                op = _op_text(index, value, op_len)
                if len(ops) < _OP_CACHE_LIMIT:
                    ops[bytes(value[HEADER_SIZE:start])] = op
            if payload_len > REUSE_LIMIT:
                payload = decode_payload(value[start:])
            else:
                unpacker.feed(value[start:])
                fed += payload_len
                payload = unpacker.unpack()
                if unpacker.tell() != fed:
                    raise _Slow  # bytes after the document
        except CorruptEntryError as exc:
            return out, exc
        except Exception:  # noqa: BLE001 - the per-entry path names what is wrong (a short value, bad msgpack...)
            unpacker, fed = payload_unpacker(), 0  # it may hold a bad payload's bytes
            try:
                entry = decode_entry(index, value, seed)
            except CorruptEntryError as exc:
                return out, exc
            append(entry)
            seed = entry.checksum
            continue
        append(new(Entry, (index, term, op, payload, time_ns, checksum)))
        seed = checksum
    return out, None


def decode_heads(batch) -> tuple[list[EntryHeader], BaseException | None]:
    """Headers of a batch of (index, head bytes, stored length), as `decode_head` gives each
    (framing checked, checksum not); (headers before the first failure, its error or None)."""
    out: list[EntryHeader] = []
    append = out.append
    unpack = HEADER.unpack_from
    ops = _OP_TEXT
    for index, head, length in batch:
        if isinstance(head, BaseException):
            return out, head
        try:
            version, flags, op_len, payload_len, term, time_ns, checksum = unpack(head)
            op = ops.get(head[HEADER_SIZE:HEADER_SIZE + op_len])
            if version != ENTRY_VERSION or flags or length != HEADER_SIZE + op_len + payload_len or op is None:
                raise _Slow
        except Exception:  # noqa: BLE001 - the per-entry path names what is wrong (or learns a new op)
            try:
                header = decode_head(index, head, length)
            except CorruptEntryError as exc:
                return out, exc
            if len(ops) < _OP_CACHE_LIMIT:
                ops[bytes(head[HEADER_SIZE:HEADER_SIZE + len(header.op.encode())])] = header.op
            append(header)
            continue
        append(EntryHeader(index, term, time_ns, checksum, op, payload_len))
    return out, None


class _Slow(Exception):
    """A fast check failed: decode this entry the per-entry way, which names the damage."""


def _op_text(index: int, value, op_len: int) -> str:
    try:
        return bytes(value[HEADER_SIZE : HEADER_SIZE + op_len]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptEntryError(index, "op name is not UTF-8") from exc
