"""Child-to-parent messages: frames in the log's own payload codec (msgpack plus tensors,
never pickle) with a 4-byte length prefix; a frame cut short by a kill is ignored."""

from __future__ import annotations

import os
import struct
from typing import Any

from eventlog.codec import decode_payload, encode_payload


def send(fd: int, message: Any) -> None:
    """One frame, written with one write (atomic for small frames; a cut frame is dropped by `frames`)."""
    data = encode_payload(message)
    os.write(fd, struct.pack("<I", len(data)) + data)


def frames(data: bytes) -> list:
    out, at = [], 0
    while at + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, at)
        if at + 4 + n > len(data):
            break
        out.append(tuple(decode_payload(data[at + 4:at + 4 + n])))  # arrays decode as lists
        at += 4 + n
    return out


def causes(exc: BaseException) -> str:
    """Every message in the exception's cause chain, for (d)."""
    parts, seen = [], exc
    while seen is not None:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)
