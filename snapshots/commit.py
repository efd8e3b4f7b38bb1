"""The write pipeline: one function per step of a save's commit (FORMAT.md, "Commit protocol").

`commit` runs the steps in order on the store's commit thread; steps 2, 3 and 5 fan out
to the worker pool:

1. `wait_for_staging`: the host copies of the tensors are complete (CUDA events).
2. `store_chunks`: cut the bytes into chunks, hash them, and write each chunk this store
   lacks to a temp file (not yet durable nor named); the staging arena is released after.
3. `fsync_chunks`: fsync every new chunk and rename it to its name.
4. `build_tables`: the manifest's chunk table and tensor records.
5. `fsync_dirs`: make every chunk name the manifest will point at durable.
6. `commit_manifest`: write the manifest durably (temp, fsync, rename, fsync manifests/).

Every name a manifest points at is durable before the manifest's own name exists.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, replace
from threading import Lock
from typing import Any, Callable

import torch

from . import chunking, tree
from .chunkfile import ChunkCodec, chunk_id
from .durable import PendingWrite, fsync_dir, start_durable_write, write_durably
from .known import KnownFiles
from .manifest import MAX_MANIFEST_BYTES, ChunkRef, Manifest, TensorRecord
from .paths import StoreLayout
from .pool import WorkerPool
from .reading import StoreReader
from .reports import SnapshotInfo
from .staging import Staged
from .tensorbytes import DTYPE_NAMES, group_width


@dataclass
class SaveJob:
    """One save, validated and staged by the caller's thread, waiting for the commit thread."""

    index: int
    term: int
    meta: Any
    node: list
    dtypes: list[torch.dtype]
    shapes: list[tuple[int, ...]]
    staged: Staged


@dataclass(frozen=True)
class StoredChunk:
    """A planned chunk once step 2 has seen to it."""

    id: str
    raw_len: int
    stored_len: int | None  # None: the same bytes appear earlier in this save
    written: int
    new_in: str | None  # the directory that gets a new name
    pending: PendingWrite | None = None  # written, not yet fsynced and renamed


@dataclass(frozen=True)
class ChunkWriter:
    """What the steps work with: one store's files, codec, threads and knowledge."""

    layout: StoreLayout
    codec: ChunkCodec
    pool: WorkerPool
    known: KnownFiles
    reader: StoreReader
    chunk_size: int
    failpoint: Callable[[str], None]


def commit(w: ChunkWriter, job: SaveJob) -> SnapshotInfo:
    """Steps 1 to 6 for `job`; the snapshot's info once its manifest is durable."""
    try:
        views = wait_for_staging(job)
        stored, segments = store_chunks(w, views, job.dtypes, component_groups(job.node))
        logical = sum(v.numel() for v in views)
    finally:
        job.staged.release()
    fsync_chunks(w, stored)
    chunks, records = build_tables(stored, segments, job)
    fsync_dirs(w, stored, chunks)
    manifest = Manifest(
        index=job.index, term=job.term, created=time.time(), meta=job.meta, tree=job.node,
        tensors=records, chunks=chunks, bytes_logical=logical,
        chunk_bytes_written=sum(s.written for s in stored), chunk_bytes_stored=sum(c.stored_len for c in chunks),
    )
    return commit_manifest(w, manifest)


def wait_for_staging(job: SaveJob) -> list[torch.Tensor]:
    """Step 1: the staged host bytes, in leaf order, once every copy has landed."""
    job.staged.wait()
    return job.staged.views


def component_groups(node: list) -> list:
    """Each tensor's pack group (`chunking`): the position of its top-level component when
    that is a container under a mapping root, else None (bare tensors pack together)."""
    groups: list = []
    tag, payload = node
    if tag not in ("d", "o"):
        return [None] * sum(1 for _ in tree.tensor_paths(node))
    for position, (_, child) in enumerate(payload):
        group = position if child[0] != "x" else None
        groups.extend(group for _ in tree.tensor_paths(child))
    return groups


def store_chunks(w: ChunkWriter, views: list[torch.Tensor], dtypes: list[torch.dtype], groups: list | None = None
                 ) -> tuple[list[StoredChunk], list]:
    """Step 2: (a StoredChunk per planned chunk, each tensor's segments over them)."""
    planned, segments = chunking.plan(views, [group_width(d) for d in dtypes], w.chunk_size, groups)
    claims = _Claims()
    return w.pool.map_all(lambda pc: _store_chunk(w, pc, claims), planned), segments


def _store_chunk(w: ChunkWriter, pc: chunking.PlannedChunk, claims: "_Claims") -> StoredChunk:
    raw = pc.materialize()
    cid = chunk_id(raw)
    n = raw.numel()
    if not claims.first(cid):
        return StoredChunk(cid, n, None, 0, None)
    size = _file_size(w.layout.chunk_path(cid))
    if size is not None and (w.known.is_good(cid) or w.reader.chunk_is_intact(cid, n, size)):
        return StoredChunk(cid, n, size, 0, None)
    # New, or an existing file that fails its check: (re)write it; the rename replaces it.
    directory = w.layout.chunk_dir(cid)
    pending = start_durable_write(directory, cid, w.codec.encode(raw, pc.width), w.failpoint, "chunk")
    return StoredChunk(cid, n, pending.written, pending.written, directory, pending)


class _Claims:
    """The chunk ids of one save: the first worker to claim an id stores it, so two
    workers never write the same chunk."""

    def __init__(self) -> None:
        self._lock = Lock()
        self._ids: set[str] = set()

    def first(self, cid: str) -> bool:
        with self._lock:
            if cid in self._ids:
                return False
            self._ids.add(cid)
            return True


def fsync_chunks(w: ChunkWriter, stored: list[StoredChunk]) -> None:
    """Step 3: fsync and name every new chunk; on failure no temp file is left behind."""
    new = [s for s in stored if s.pending is not None]
    try:
        w.pool.map_all(lambda s: s.pending.finish(), new)
    except BaseException:
        for s in new:
            s.pending.discard()
        raise
    w.known.add_good(s.id for s in new)


def build_tables(stored: list[StoredChunk], segments: list, job: SaveJob
                 ) -> tuple[tuple[ChunkRef, ...], tuple[TensorRecord, ...]]:
    """Step 4: (each chunk once, in first-use order; each tensor's record over them)."""
    table: dict[str, int] = {}
    sizes = {s.id: s.stored_len for s in stored if s.stored_len is not None}
    chunks: list[ChunkRef] = []
    for s in stored:
        if s.id not in table:
            table[s.id] = len(chunks)
            chunks.append(ChunkRef(s.id, s.raw_len, sizes[s.id]))
    records = tuple(
        TensorRecord(DTYPE_NAMES[dtype], shape, tuple((table[stored[c].id], off, n) for c, off, n in segs))
        for dtype, shape, segs in zip(job.dtypes, job.shapes, segments)
    )
    return tuple(chunks), records


def fsync_dirs(w: ChunkWriter, stored: list[StoredChunk], chunks: tuple[ChunkRef, ...]) -> None:
    """Step 5: fsync every chunk directory that got a new name, and every one holding a
    reused chunk that this process has not fsynced (a crashed writer may have renamed
    without syncing the directory)."""
    dirs = {s.new_in for s in stored if s.new_in}
    dirs |= w.known.unsynced(w.layout.chunk_dir(c.id) for c in chunks)
    w.pool.map_all(fsync_dir, sorted(dirs))
    w.known.mark_synced(dirs)


def commit_manifest(w: ChunkWriter, manifest: Manifest) -> SnapshotInfo:
    """Step 6: write the manifest durably; its name appears by the atomic rename."""
    data = manifest.encode()
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest of {len(data)} bytes exceeds the format's {MAX_MANIFEST_BYTES} "
                         f"({len(manifest.chunks)} chunks): save with a larger chunk_size")
    write_durably(w.layout.manifests, manifest.name, [data], w.failpoint, "manifest")
    w.failpoint("snapshot.after_manifest_rename")
    fsync_dir(w.layout.manifests)
    return SnapshotInfo.from_manifest(replace(manifest, file_size=len(data)))


def _file_size(path: str) -> int | None:
    """The size of the regular file at `path`; None if there is none (a symlink or FIFO in
    its place is then replaced by the rename of a freshly written chunk)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
