"""Snapshot files as the replica ships and restores them: byte for byte, checked both ways.

The shipper reads a journal's snapshot store as files (never through its locks): a
manifest is read through snapshots' safe-read helper (no symlink, FIFO or device; size
capped) and decoded with `Manifest.decode`, which checks its whole schema; a chunk is
decoded by the store's own codec and its raw bytes hashed against its name before its
bytes are shipped. Restore writes a chunk it downloaded to a temp name in the new store,
checks it the same way, and only then names it (snapshots/FORMAT.md, "Commit protocol").
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch
from snapshots.chunkfile import ChunkCodec, ChunkDecodeError, chunk_id
from snapshots.durable import fsync_dir
from snapshots.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestDecodeError, parse_manifest_name
from snapshots.safefile import UnsafeFileError, read_regular

from ..recovery import SNAPSHOT_META_KEY


class LocalFileError(Exception):
    """A local snapshot file is missing, unreadable or not what its name says (the message says which)."""


@dataclass(frozen=True)
class ManifestFile:
    """A decoded manifest and its exact bytes; `log_index`/`log_checksum` from replay's meta
    (None when the snapshot was not written by a Journal or predates the checksum)."""

    name: str
    index: int
    term: int
    data: bytes
    manifest: Manifest
    log_index: int | None
    log_checksum: int | None


def decode_manifest(name: str, data: bytes) -> ManifestFile:
    """ManifestFile of manifest bytes named `name`; ManifestDecodeError when they do not decode."""
    manifest = Manifest.decode(name, data)
    meta = manifest.meta.get(SNAPSHOT_META_KEY) if isinstance(manifest.meta, dict) else None
    meta = meta if isinstance(meta, dict) else {}

    def as_int(value):
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return ManifestFile(name, manifest.index, manifest.term, data, manifest, as_int(meta.get("index")),
                        as_int(meta.get("log_checksum")))


class LocalStore:
    """Read-only access to a journal's snapshot directory (DIR/snapshots) as files."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._codec = ChunkCodec()

    def manifest_names(self) -> list[str]:
        """Committed manifest names, oldest first by (index, term); [] without a store."""
        try:
            names = os.listdir(self.root / "manifests")
        except FileNotFoundError:
            return []
        parsed = [(parse_manifest_name(n), n) for n in names]
        return [n for key, n in sorted(p for p in parsed if p[0] is not None)]

    def read_manifest(self, name: str) -> ManifestFile:
        """The manifest `name`; FileNotFoundError when it is gone (pruned), LocalFileError when damaged."""
        try:
            data = read_regular(str(self.root / "manifests" / name), MAX_MANIFEST_BYTES)
            return decode_manifest(name, data)
        except (UnsafeFileError, ManifestDecodeError) as exc:
            raise LocalFileError(f"manifest {name}: {exc}") from None

    def read_chunk(self, cid: str, raw_len: int, stored_len: int) -> bytes:
        """The bytes of chunk file `cid`, after checking it decodes to raw bytes hashing to `cid`.
        FileNotFoundError when it is gone; LocalFileError when it is damaged."""
        path = str(self.root / "chunks" / cid[:2] / cid)
        try:
            check_chunk_file(self._codec, path, cid, raw_len, stored_len)
            data = read_regular(path, stored_len)
        except (UnsafeFileError, ChunkDecodeError) as exc:
            raise LocalFileError(f"chunk {cid}: {exc}") from None
        if len(data) != stored_len:
            raise LocalFileError(f"chunk {cid}: {len(data)} bytes, its manifest says {stored_len}")
        return data


def check_chunk_file(codec: ChunkCodec, path: str, cid: str, raw_len: int, stored_len: int) -> None:
    """ChunkDecodeError unless the chunk file at `path` decodes (bounded by the manifest's
    sizes) to raw bytes whose xxh3-128 is `cid`."""
    out = torch.empty(raw_len, dtype=torch.uint8)
    codec.read(path, raw_len, stored_len, out)
    if chunk_id(out) != cid:
        raise ChunkDecodeError("content hash mismatch: the raw bytes do not hash to the chunk's name")


class StoreWriter:
    """Writes one restored snapshot into a new store directory (snapshots/FORMAT.md's protocol)."""

    def __init__(self, root: Path):
        from snapshots.paths import StoreLayout
        self.layout = StoreLayout(str(root))
        self.layout.create()
        self._codec = ChunkCodec()
        self._staged: list[tuple[str, str]] = []  # (temp path, final path)

    def stage_chunk(self, cid: str, data: bytes, raw_len: int, stored_len: int) -> None:
        """Write `data` to a temp name beside its final one, fsync it, check it; ChunkDecodeError
        (the temp file removed) when it is not the chunk `cid` of those sizes."""
        if len(data) != stored_len:
            raise ChunkDecodeError(f"{len(data)} bytes, the manifest says {stored_len}")
        directory = self.layout.chunk_dir(cid)
        temp = os.path.join(directory, f".tmp.{cid}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            check_chunk_file(self._codec, temp, cid, raw_len, stored_len)
        except BaseException:
            _unlink(temp)
            raise
        self._staged.append((temp, self.layout.chunk_path(cid)))

    def discard(self) -> None:
        """Remove every staged (not yet committed) chunk."""
        for temp, _ in self._staged:
            _unlink(temp)
        self._staged.clear()

    def commit(self, name: str, manifest_bytes: bytes) -> None:
        """Name the staged chunks, fsync their directories, then write the manifest durably."""
        directories = set()
        for temp, final in self._staged:
            os.rename(temp, final)
            directories.add(os.path.dirname(final))
        for directory in sorted(directories):
            fsync_dir(directory)
        self._staged.clear()
        temp = os.path.join(self.layout.manifests, f".tmp.{name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, manifest_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, self.layout.manifest_path(name))
        fsync_dir(self.layout.manifests)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
