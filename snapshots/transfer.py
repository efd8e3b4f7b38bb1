"""Shipping and restoring a store's files, byte for byte (FORMAT.md, "Commit protocol").

The snapshot side of what eventlog's segment API is for the log (``log.sealed_range``,
``eventlog.segment_bounds``, ``eventlog.create_from_segments``): a replica or a fork
copies a store's committed files elsewhere and back without knowing their format.

- Reading (`StoreFiles`): the committed manifests and chunks of a store directory, read
  as files, without its lock (a live writer may be saving and pruning meanwhile), each
  checked before its bytes are handed out: a manifest is read through a size-capped,
  symlink-refusing open and decoded with its whole schema (`decode_manifest`); a chunk
  is decoded (bounded by the sizes its manifest declares) and its raw bytes hashed
  against its name. So a caller never ships damage.
- Checking bytes from elsewhere: `decode_manifest(name, data)` (the counterpart of
  ``segment_bounds``), `check_chunk_file(path, ...)` for a chunk written to a file.
- Chunks are addressed by id wherever they live (a loose file, or a range of a pack:
  FORMAT.md, "Finding a chunk"); `read_chunk` hands out the chunk file's bytes either way.
- Putting back (`StoreImport`): chunks downloaded are staged under temp names in the new
  store, fsynced and checked (or hard-linked from another store, `StoreFiles.link_into`:
  a loose file or a whole pack), and named only at `commit`, which writes the manifest last
  (temp name, fsync, rename, directory fsync): the store's own commit protocol, so a
  crash anywhere leaves no manifest naming a chunk that is not durable.

Damage is `CorruptFileError` (a `CorruptSnapshotError`) naming the file and the check
that failed; a file that is simply gone (pruned meanwhile) is FileNotFoundError; other
OSErrors (EIO, EACCES) propagate. Nothing here changes a format.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

import torch

from .chunkfile import MAX_PACK_BYTES, ChunkCodec, ChunkDecodeError, pread_upto
from .durable import fsync_dir, temp_name
from .locating import ChunkLocator, Copy
from .errors import CorruptFileError
from .manifest import MAX_MANIFEST_BYTES, ChunkRef, Manifest, ManifestDecodeError, parse_manifest_name
from .paths import StoreLayout
from .safefile import UnsafeFileError, open_regular, read_regular

__all__ = ["MAX_MANIFEST_BYTES", "ChunkRef", "ManifestFile", "StoreFiles", "StoreImport", "check_chunk_file",
           "decode_manifest", "parse_manifest_name"]


class _ChunkFileError(CorruptFileError, ChunkDecodeError):
    """A damaged chunk. Also a ChunkDecodeError, so callers of replay.replica.snapfiles'
    older helper (replay.forking) keep catching it until they move to this module."""


@dataclass(frozen=True)
class ManifestFile:
    """One committed manifest: its file `name` (``<index>-<term>``), what it declares
    (`index`, `term`, the caller's `meta`, the `chunks` it names, each once: id, raw and
    stored length), and its exact bytes `data` (what ships; never re-encoded)."""

    name: str
    index: int
    term: int
    meta: Any
    chunks: tuple[ChunkRef, ...]
    data: bytes


def decode_manifest(name: str, data: bytes) -> ManifestFile:
    """The ManifestFile of manifest bytes `data` read as the file `name`, after checking all of them.

    Edge cases first: more than MAX_MANIFEST_BYTES, shorter than a header, a wrong magic,
    version or checksum, an undecodable body, any schema violation (a field of the wrong
    type or out of range, a chunk id that is not 32 hex digits, a tensor pointing past
    its chunk): CorruptFileError naming `name` and the check. A `name` that is not a
    manifest name is CorruptFileError too. The name is not required to match the
    declared index and term (as the store's own reader: the file name is only a key)."""
    if parse_manifest_name(name) is None:
        raise CorruptFileError(name, None, "not a manifest name (<index>-<term>)")
    if len(data) > MAX_MANIFEST_BYTES:
        raise CorruptFileError(name, None, f"{len(data)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
    try:
        manifest = Manifest.decode(name, bytes(data))
    except ManifestDecodeError as exc:
        raise CorruptFileError(name, None, str(exc)) from None
    return ManifestFile(name, manifest.index, manifest.term, manifest.meta, manifest.chunks, bytes(data))


def check_chunk_file(path: str, cid: str, raw_len: int, stored_len: int) -> None:
    """Check that the file at `path` is chunk `cid` of those sizes (as a manifest names it).

    Edge cases first: nothing at `path`: FileNotFoundError. A symlink, FIFO, device or
    directory (never followed, blocked on or read), a size other than `stored_len`, a bad
    header, a stream that decompresses past `raw_len`, raw bytes whose xxh3-128 is not
    `cid`: CorruptFileError naming the chunk. Reads at most `stored_len` bytes."""
    _check_chunk(ChunkCodec(), path, cid, raw_len, stored_len)


def _check_chunk(codec: ChunkCodec, path: str, cid: str, raw_len: int, stored_len: int,
                 offset: int | None = None) -> None:
    _check_decoded(cid, raw_len, lambda out: codec.read(path, raw_len, stored_len, out, offset))


def _check_chunk_bytes(codec: ChunkCodec, data: bytes, cid: str, raw_len: int) -> None:
    """`_check_chunk` of a chunk file's bytes held in memory."""
    _check_decoded(cid, raw_len, lambda out: codec.read_bytes(data, raw_len, out))


def _check_decoded(cid: str, raw_len: int, decode) -> None:
    """CorruptFileError naming chunk `cid` unless `decode(out)` (a ChunkCodec read into `out`,
    returning the xxh3-128 of what it decoded) decodes without error to bytes hashing to `cid`."""
    out = torch.empty(raw_len, dtype=torch.uint8)
    try:
        digest = decode(out)
    except ChunkDecodeError as exc:
        raise _ChunkFileError(None, cid, str(exc)) from None
    if digest != cid:
        raise _ChunkFileError(None, cid, "content hash mismatch: the raw bytes do not hash to the chunk's name")


def _read_range(copy: Copy, cid: str, stored_len: int) -> bytes:
    """The `stored_len` bytes of `copy` (a loose file of exactly that size, or its range
    of a pack). FileNotFoundError when it is gone; CorruptFileError when it is not a
    regular file, of another size, or ends early."""
    try:
        fd, size = open_regular(copy.path, MAX_PACK_BYTES if copy.pack else stored_len)
    except UnsafeFileError as exc:
        raise _ChunkFileError(None, cid, f"{'pack' if copy.pack else 'chunk'} file {exc}") from None
    try:
        start = copy.offset or 0
        if (size != stored_len) if copy.pack is None else (start + stored_len > size):
            raise _ChunkFileError(None, cid, f"file is {size} bytes, its range is [{start}, {start + stored_len})")
        data = pread_upto(fd, stored_len, start)
        if len(data) < stored_len:
            raise _ChunkFileError(None, cid, f"{len(data)} bytes, its manifest says {stored_len}")
        return data
    finally:
        os.close(fd)


class StoreFiles:
    """Read-only, lock-free access to the committed files of the store directory `path`.

    Safe beside a live writer in this or another process: nothing is locked or written;
    a manifest or chunk pruned between a listing and a read is FileNotFoundError. Each
    object may be used from one thread at a time (it holds a decoder)."""

    def __init__(self, path: str | os.PathLike):
        self.root = os.path.abspath(path)
        self._layout = StoreLayout(self.root)
        self._codec = ChunkCodec()
        self._locator = ChunkLocator(self._layout)

    def manifest_names(self) -> list[str]:
        """Every committed manifest's name, oldest first by (index, term); [] when the
        directory or its manifests/ does not exist. Temp files and other names are skipped."""
        try:
            names = os.listdir(self._layout.manifests)
        except FileNotFoundError:
            return []
        parsed = [(parse_manifest_name(n), n) for n in names]
        return [n for _, n in sorted(p for p in parsed if p[0] is not None)]

    def read_manifest(self, name: str) -> ManifestFile:
        """The manifest `name`, checked (`decode_manifest`). FileNotFoundError when it is not
        there (never saved, or pruned); CorruptFileError when it is damaged or not a regular file."""
        if parse_manifest_name(name) is None:
            raise CorruptFileError(name, None, "not a manifest name (<index>-<term>)")
        try:
            data = read_regular(self._layout.manifest_path(name), MAX_MANIFEST_BYTES)
        except UnsafeFileError as exc:
            raise CorruptFileError(name, None, str(exc)) from None
        return decode_manifest(name, data)

    def chunk_path(self, cid: str) -> str:
        """Where chunk `cid` lives in this store as a loose file (ValueError unless 32
        lowercase hex digits). A chunk written by a save since packs lives in a pack
        instead (`check_chunk`, `read_chunk` find either)."""
        return self._layout.chunk_path(cid)

    def check_chunk(self, cid: str, raw_len: int, stored_len: int) -> None:
        """Check this store's chunk `cid` of those sizes, loose or packed (FileNotFoundError
        when no file holds it, CorruptFileError when every copy of it is damaged)."""
        self._checked_copy(cid, raw_len, stored_len)

    def read_chunk(self, cid: str, raw_len: int, stored_len: int) -> bytes:
        """The stored bytes of chunk `cid` (exactly `stored_len` of them: a chunk file, as
        `add_chunk` takes it, whether it is loose or packed here), after checking it
        (`check_chunk`): the bytes returned are the very bytes checked (read once, then
        decoded and hashed in memory), so a file changed after the check is never handed
        out. FileNotFoundError when it is gone; CorruptFileError when damaged."""
        return self._checked_copy(cid, raw_len, stored_len, read=True)[1]

    def link_into(self, cid: str, raw_len: int, stored_len: int, into: "StoreImport") -> bool:
        """Give the store `into` chunk `cid` (checked here first, as `check_chunk`): a hard
        link to this store's immutable file that holds it (its loose file, or its whole
        pack) where the filesystem allows, True; else its bytes staged by `add_chunk`, False.
        Nothing is named in `into` before its `commit`. FileNotFoundError, CorruptFileError
        as `check_chunk`."""
        if into.can_link:  # else the copy below is checked where it is read, once
            copy, _ = self._checked_copy(cid, raw_len, stored_len)
            if into.stage_link(copy.path, copy.pack, cid):
                return True
        into.add_chunk(cid, self.read_chunk(cid, raw_len, stored_len), raw_len, stored_len)
        return False

    def _checked_copy(self, cid: str, raw_len: int, stored_len: int, read: bool = False) -> tuple[Copy, bytes]:
        """(the first copy of chunk `cid` that passes every check, its bytes if `read` else
        b""). FileNotFoundError when no file holds it; CorruptFileError (the first copy's
        damage) when none passes."""
        self._layout.chunk_path(cid)  # ValueError for a malformed id, before any path is built
        damage = []
        for attempt in (0, 1):
            if attempt:
                self._locator.refresh()  # damaged packs too, where replaced: a torn pack's name may hold a good one now
            for copy in self._locator.copies(cid):
                if copy.stored_len is not None and copy.stored_len != stored_len:
                    damage.append(f"holds the chunk as {copy.stored_len} bytes, the manifest says "
                                  f"{stored_len}{copy.where()}")
                    continue
                try:
                    if not read:
                        _check_chunk(self._codec, copy.path, cid, raw_len, stored_len, copy.offset)
                        return copy, b""
                    data = _read_range(copy, cid, stored_len)
                    _check_chunk_bytes(self._codec, data, cid, raw_len)
                    return copy, data
                except FileNotFoundError:
                    continue
                except CorruptFileError as exc:
                    damage.append(f"{exc.reason}{copy.where()}")
            if damage:
                break
        if damage:
            raise _ChunkFileError(None, cid, damage[0])
        raise FileNotFoundError(errno.ENOENT, f"chunk {cid} is in no file of {self.root}")


class StoreImport:
    """Puts snapshots copied from elsewhere into the store directory `path` (created if
    missing; its chunk directories as chunks arrive), by the store's commit protocol.

    Call sequence: `add_chunk` (bytes) or `StoreFiles.link_into` (a hard link to another
    store's file) for every chunk a manifest names that the store lacks, each staged
    under a temp name and durable, then `commit(name, data)`, or `discard()` to drop what
    was staged. Used by one thread; the store must not be open for writing meanwhile (a
    writer's prune would delete chunks no manifest names yet)."""

    def __init__(self, path: str | os.PathLike):
        self._layout = StoreLayout(os.fspath(path))
        self._layout.create()
        self._codec = ChunkCodec()
        self._locator = ChunkLocator(self._layout)
        self._staged: list[tuple[str, str]] = []  # (temp path, final path)
        self._new_dirs: set[str] = set()  # parents of directories made, fsynced at commit
        # False once a link was refused for every file (another filesystem, none with links):
        # StoreFiles.link_into then copies at once instead of checking a file it cannot link
        self.can_link = True

    def add_chunk(self, cid: str, data: bytes, raw_len: int, stored_len: int) -> None:
        """Stage `data` as chunk `cid`: written beside its final name, fsynced, then checked.

        Edge cases first: `cid` not a chunk id: ValueError. `data` not `stored_len` bytes, or
        not decoding to `raw_len` bytes hashing to `cid`: CorruptFileError, and nothing is
        left behind. Nothing is named (visible to readers) before `commit`."""
        final = self._layout.chunk_path(cid)
        if len(data) != stored_len:
            raise _ChunkFileError(None, cid, f"{len(data)} bytes, the manifest says {stored_len}")
        self._new_dirs |= self._layout.ensure_dir(self._layout.chunk_dir(cid), sync=False)
        temp = os.path.join(self._layout.chunk_dir(cid), temp_name(cid))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            _check_chunk(self._codec, temp, cid, raw_len, stored_len)
        except BaseException:
            _unlink(temp)
            raise
        self._staged.append((temp, final))

    def stage_link(self, source: str, pack: str | None, cid: str) -> bool:
        """Stage a hard link to `source`, an immutable store file elsewhere: the pack named
        `pack`, or else the loose file of chunk `cid`; named at `commit`. True when staged
        or already here; False when the filesystem refuses the link (another device, no
        links): the caller copies the bytes instead (`add_chunk`). Called by
        `StoreFiles.link_into`, which checks the chunk first."""
        if pack is not None:
            directory, final = self._layout.packs, self._layout.pack_path(pack)
        else:
            directory, final = self._layout.chunk_dir(cid), self._layout.chunk_path(cid)
        if os.path.lexists(final) or any(f == final for _, f in self._staged):
            return True
        self._new_dirs |= self._layout.ensure_dir(directory, sync=False)
        temp = os.path.join(directory, temp_name(os.path.basename(final)))
        try:
            os.link(source, temp, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_LINK:
                if exc.errno in _NEVER_LINKS:
                    self.can_link = False
                return False
            raise
        self._staged.append((temp, final))
        return True

    def discard(self) -> None:
        """Remove every staged chunk (none is named yet). Idempotent."""
        for temp, _ in self._staged:
            _unlink(temp)
        self._staged.clear()

    def commit(self, name: str, data: bytes) -> ManifestFile:
        """Name the staged chunks and make their names durable, then write the manifest `name`
        (bytes `data`, exactly) durably: temp name, fsync, rename, directory fsync; its ManifestFile.

        Edge cases first: `data` not a manifest (`decode_manifest`): CorruptFileError, and
        nothing is named. A chunk the manifest names that is neither staged nor already in
        the store (loose or in a pack): CorruptFileError naming it, and the manifest is not
        written (the staged chunks are named: harmless, a prune removes what no manifest names)."""
        manifest = decode_manifest(name, data)
        directories = set()
        for temp, final in self._staged:
            os.rename(temp, final)
            directories.add(os.path.dirname(final))
        directories |= self._new_dirs
        self._new_dirs = set()
        for directory in sorted(directories):
            fsync_dir(directory)
        if any(os.path.dirname(final) == self._layout.packs for _, final in self._staged):
            self._locator.refresh()
        self._staged.clear()
        for ref in manifest.chunks:
            copies = self._locator.copies(ref.id)
            if not any(c.pack for c in copies) and not os.path.exists(copies[-1].path):
                raise CorruptFileError(name, None, f"names chunk {ref.id}, which is neither staged nor in the store")
        temp = os.path.join(self._layout.manifests, temp_name(name))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, manifest.data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, self._layout.manifest_path(name))
        fsync_dir(self._layout.manifests)
        return manifest


# A hard link is refused (another filesystem, no links, a link count limit): copy instead.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)
# Of those, the refusals that hold for every file of this store (the others may be one file's)
_NEVER_LINKS = (errno.EXDEV, errno.ENOTSUP)


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
