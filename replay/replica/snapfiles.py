"""Snapshot files as the replica ships and restores them: byte for byte, checked both ways.

Built on snapshots' public transfer API (snapshots.transfer): the shipper reads a
journal's snapshot store as files, never through its locks (`LocalStore`, a
`snapshots.StoreFiles` that adds replay's meta to each manifest: the log index and
checksum it sits at); restore puts a downloaded snapshot back with `snapshots.StoreImport`
(chunks staged and checked, the manifest written last). This module adds only what is
replay's: `SNAPSHOT_META_KEY`'s fields, and the replica's names for the errors.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import snapshots

from .. import layout
from ..recovery import SNAPSHOT_META_KEY

MAX_MANIFEST_BYTES = snapshots.MAX_MANIFEST_BYTES


class LocalFileError(Exception):
    """A local snapshot file is missing, unreadable or not what its name says (the message says which)."""


@dataclass(frozen=True)
class ManifestFile:
    """A checked manifest (`manifest`: a snapshots.ManifestFile, with its chunks) and its exact
    bytes; `log_index`/`log_checksum` from replay's meta (None when the snapshot was not
    written by a Journal or predates the checksum)."""

    name: str
    index: int
    term: int
    data: bytes
    manifest: snapshots.ManifestFile
    log_index: int | None
    log_checksum: int | None


def decode_manifest(name: str, data: bytes) -> ManifestFile:
    """ManifestFile of manifest bytes named `name`; snapshots.CorruptFileError when they do not decode."""
    return _with_meta(snapshots.decode_manifest(name, data))


def _with_meta(manifest: snapshots.ManifestFile) -> ManifestFile:
    meta = manifest.meta.get(SNAPSHOT_META_KEY) if isinstance(manifest.meta, dict) else None
    meta = meta if isinstance(meta, dict) else {}

    def as_int(value):
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return ManifestFile(manifest.name, manifest.index, manifest.term, manifest.data, manifest,
                        as_int(meta.get("index")), as_int(meta.get("log_checksum")))


class LocalStore:
    """Read-only access to a journal's snapshot directory (DIR/snapshots) as files."""

    def __init__(self, root):
        self._files = snapshots.StoreFiles(root)
        self.root = self._files.root

    def manifest_names(self) -> list[str]:
        """Committed manifest names, oldest first by (index, term); [] without a store."""
        return self._files.manifest_names()

    def read_manifest(self, name: str) -> ManifestFile:
        """The manifest `name`; FileNotFoundError when it is gone (pruned), LocalFileError when damaged."""
        try:
            return _with_meta(self._files.read_manifest(name))
        except snapshots.CorruptFileError as exc:
            raise LocalFileError(f"manifest {name}: {exc.reason}") from None

    def has_manifest(self, name: str) -> bool:
        """Whether the manifest `name` is (still) committed."""
        return os.path.exists(os.path.join(self.root, layout.MANIFESTS_DIR, name))

    def read_chunk(self, cid: str, raw_len: int, stored_len: int) -> bytes:
        """The bytes of chunk file `cid`, after checking it decodes to raw bytes hashing to `cid`.
        FileNotFoundError when it is gone; LocalFileError when it is damaged."""
        try:
            return self._files.read_chunk(cid, raw_len, stored_len)
        except snapshots.CorruptFileError as exc:
            raise LocalFileError(f"chunk {cid}: {exc.reason}") from None


def check_chunk_file(codec, path: str, cid: str, raw_len: int, stored_len: int) -> None:
    """snapshots.check_chunk_file (`codec` is ignored: kept for replay.forking, which calls
    this with one; snapshots.CorruptFileError is also the ChunkDecodeError it catches)."""
    snapshots.check_chunk_file(path, cid, raw_len, stored_len)


def read_small_file(path, limit: int) -> bytes | None:
    """The bytes of the regular file at `path`; None when it is missing, a symlink (never
    followed), not a regular file (never blocked on) or larger than `limit`. Other OSErrors
    (EACCES, EIO) propagate."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = b""
        while len(data) <= limit:
            piece = os.read(fd, limit + 1 - len(data))
            if not piece:
                break
            data += piece
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def fsync_dir(path) -> None:
    """Make the names in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
