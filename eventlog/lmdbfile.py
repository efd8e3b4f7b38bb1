"""What eventlog knows about LMDB's data file, checked with plain reads before mapping it.

LMDB maps ``data.mdb`` and follows page numbers into the map without checking them
against the file's size: a file cut short (an interrupted copy or restore) makes the
first touch of a missing page a SIGBUS that kills the process with no message. So before
LMDB maps the file, its two meta pages are read with ``pread`` and the file's size is
checked against the last page the newest meta says is in use.

LMDB 0.9 layout (64-bit, little-endian hosts), as read here:

- page 0 and page 1 are meta pages; a page starts with a 16-byte header whose u16 at
  offset 10 holds the page flags (``P_META`` = 0x08);
- the meta body follows the header: u32 magic ``0xBEEFC0DE`` at +0, u32 data version
  ``1`` at +4, u64 map size at +16, the page size as the u32 at +24 (the free-list DB's
  ``md_pad``), u64 last used page number at +120, u64 transaction id at +128;
- LMDB uses the meta with the higher transaction id; pages ``0 .. last_pg`` must exist.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import lmdb

from .errors import DamagedLogError

_PAGE_HEADER = 16
_P_META = 0x08
_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1
_META = struct.Struct("<II8xQI")  # magic, version, (address), map size, page size
_TAIL = struct.Struct("<QQ")  # last page number, txn id, at +120 in the meta body
_META_SPAN = _PAGE_HEADER + 136
_MAX_MAP = 1 << 47  # beyond any user address space: no honest log declares a larger map

# LMDB errors that mean its pages are not what LMDB wrote (bit rot, a foreign or torn
# file), as opposed to operational errors (map full, readers full, I/O).
STRUCTURAL_ERRORS = (
    lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError,
    lmdb.BadValsizeError, lmdb.CursorFullError, lmdb.BadTxnError, lmdb.PageFullError,
    lmdb.BadDbiError, lmdb.IncompatibleError, lmdb.PanicError, struct.error,
)


def damaged(path: Path, exc: BaseException) -> DamagedLogError:
    """The DamagedLogError that reports structural error `exc` met while reading log `path`."""
    return DamagedLogError(
        f"{Path(path) / 'data.mdb'}: the log's page structure is damaged ({type(exc).__name__}: {exc}); "
        "restore the log from a copy"
    )


def check_data_file(directory: Path) -> None:
    """Raise DamagedLogError if ``directory/data.mdb`` is shorter than its pages in use or
    its meta pages are not LMDB's. A missing or empty file is left to the caller."""
    file = Path(directory) / "data.mdb"
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return
        first = os.pread(fd, _META_SPAN, 0)
        magic, version, map_size, page_size = _meta_fields(file, 0, first, size)
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise DamagedLogError(f"{file}: meta page 0 declares a page size of {page_size} bytes; it is damaged")
        if size < 2 * page_size:
            raise DamagedLogError(
                f"{file} is {size} bytes, shorter than its two {page_size}-byte meta pages ({2 * page_size} bytes): "
                "it was cut short")
        second = os.pread(fd, _META_SPAN, page_size)
        _meta_fields(file, 1, second, size)
        last_page, txn_id = _newest(first, second)
        needed = (last_page + 1) * page_size
        if last_page >= (_MAX_MAP // page_size) or size < needed:
            raise DamagedLogError(
                f"{file} is {size} bytes, but its newest meta page (transaction {txn_id}) uses pages up to "
                f"{last_page}, which need {needed} bytes: the file was cut short or its meta page is damaged")
    finally:
        os.close(fd)


def _meta_fields(file: Path, number: int, raw: bytes, size: int) -> tuple[int, int, int, int]:
    if len(raw) < _META_SPAN:
        raise DamagedLogError(f"{file} is {size} bytes, too short to hold LMDB meta page {number}: it was cut short")
    flags = struct.unpack_from("<H", raw, 10)[0]
    magic, version, map_size, page_size = _META.unpack_from(raw, _PAGE_HEADER)
    if not flags & _P_META or magic != _MAGIC:
        raise DamagedLogError(f"{file}: LMDB meta page {number} is damaged (flags {flags:#x}, magic {magic:#x})")
    if version != _DATA_VERSION:
        raise DamagedLogError(f"{file}: LMDB meta page {number} has data version {version}, expected {_DATA_VERSION}")
    if map_size > _MAX_MAP:
        raise DamagedLogError(f"{file}: LMDB meta page {number} declares a map of {map_size} bytes; it is damaged")
    return magic, version, map_size, page_size


def _newest(first: bytes, second: bytes) -> tuple[int, int]:
    """(last page number, transaction id) of the meta page LMDB uses: the higher txn id."""
    metas = [_TAIL.unpack_from(raw, _PAGE_HEADER + 120) for raw in (first, second)]
    return metas[0] if metas[0][1] >= metas[1][1] else metas[1]


def last_txnid(directory: Path) -> int:
    """The id of the newest transaction whose meta page reached ``directory/data.mdb``
    (read with pread; for tools that count commits, such as benchmarks)."""
    check_data_file(directory)
    file = Path(directory) / "data.mdb"
    with open(file, "rb") as f:
        first = os.pread(f.fileno(), _META_SPAN, 0)
        page_size = _meta_fields(file, 0, first, os.fstat(f.fileno()).st_size)[3]
        second = os.pread(f.fileno(), _META_SPAN, page_size)
    return _newest(first, second)[1]
