"""Reading one object with a byte cap: the one rule both backends' readers and `get` follow.

A store states an object's size before its body is read (fstat, or the GET's
Content-Length), so an object larger than the caller's limit is refused unread; what
arrives is counted as well, and one byte past the limit is an error, so a file that grew
or a server that sends more than it declared never makes a reader hold more than
`limit` + 1 bytes.
"""

from __future__ import annotations

import sys
from typing import Callable

from .errors import ObjectTooLargeError
from .store import ObjectReader

_PIECE = 1 << 20  # what `read_all` asks for after the first read


class CappedReader(ObjectReader):
    """`key`'s bytes in order from `source(n)` (at most n bytes, b"" at the end; it raises the
    store's own errors), never more than `limit` in all: ObjectTooLargeError from the read
    that goes past it. `release()` frees the file or connection (at `close`, once)."""

    def __init__(self, key: str, size: int, limit: int | None, url: str, source: Callable[[int], bytes],
                 release: Callable[[], None] | None = None):
        self.key, self.size, self.url = key, size, url
        self._limit = sys.maxsize if limit is None else limit
        self._source, self._release, self._read = source, release, 0

    def read(self, n: int) -> bytes:
        if self._source is None:
            raise ValueError(f"reader of {self.key!r} is closed")
        # One byte past the cap is asked for when the cap is reached: it shows an object larger than it.
        data = self._source(max(1, min(n, self._limit + 1 - self._read)))
        self._read += len(data)
        if self._read > self._limit:
            raise ObjectTooLargeError(self.key, self._limit, self.url)
        return data

    def close(self) -> None:
        release, self._source, self._release = self._release, None, None
        if release is not None:
            release()


def read_all(reader: ObjectReader) -> bytes:
    """Every byte `reader` gives (its cap applies). The first read asks for the stated size plus
    one byte: a file fills it in one call, so the object is not joined from pieces into a
    second copy; whatever else arrives is read in 1 MiB pieces."""
    pieces, want = [], reader.size + 1
    while True:
        data = reader.read(want)
        if not data:
            break
        pieces.append(data)
        want = _PIECE
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
