"""Small JSON files a journal writes once and reads back defensively.

Written durably: temp file, fsync, rename, directory fsync, so a crash leaves the old
file or the new one, never a torn one. Read back as untrusted input: a regular file (no
symlink, FIFO or device is followed or blocked on), at most a given size, strict UTF-8
JSON (no NaN, no duplicate keys). Used for ``environment.json`` (replay.environment) and
the multi-rank records (replay.ranks.layout).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A small JSON file could not be read as one: the message says why (callers prefix the path)."""


def write_durably(path: str | os.PathLike, document: Any) -> None:
    """Write `document` as JSON to `path`: temp file, fsync, rename, directory fsync."""
    replace_durably(Path(path), json.dumps(document, sort_keys=True, allow_nan=False).encode())


def write_all_and_sync(fd: int, data) -> None:
    """Write every byte of `data` to `fd` (os.write may write less than asked), then fsync it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Make `data` the contents of `path` so a crash leaves the old file or the new one:
    temp file, fsync, rename, directory fsync."""
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        write_all_and_sync(fd, data)
    finally:
        os.close(fd)
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_small(path: str | os.PathLike, limit: int) -> Any:
    """The JSON document in `path`; None when the file does not exist.

    JsonFileError when it is not a regular file, is larger than `limit` bytes, cannot be
    read, or is not strict UTF-8 JSON (NaN/Infinity and duplicate keys are refused).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JsonFileError(f"cannot be opened as a file: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JsonFileError("is not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise JsonFileError(f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise JsonFileError(f"larger than {limit} bytes")
    return parse(data)


def parse(data: bytes) -> Any:
    """Strict JSON of `data` (JsonFileError naming what is wrong)."""
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("a key appears twice")
        return dict(pairs)

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JsonFileError(f"not JSON ({exc})") from None
