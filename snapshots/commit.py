"""The write pipeline: one function per step of a save's commit (FORMAT.md, "Commit protocol").

`commit` runs the steps in order on the store's commit thread; step 2 fans out to the
worker pool:

1. `wait_for_staging`: the host copies of the tensors are complete (CUDA events).
2. `store_chunks`: cut the bytes into chunks, hash them, and append each chunk this store
   lacks to the save's one pack (`PackWriter`: workers write at reserved offsets, so one
   chunk is written while the next is hashed and compressed); the staging arena is
   released after.
3. `name_pack`: the pack's index and trailer, and the rename to its name (not yet
   durable); meanwhile the manifest's bytes are encoded and written to a temp file.
4. `build_tables`: the manifest's chunk table and tensor records (before step 3).
5. `sync_all`: one round of fsyncs, issued together: the pack, packs/ when a pack was
   named, the directories of reused copies this process has not fsynced, and the
   manifest's temp file.
6. `commit_manifest`: name the manifest and fsync manifests/.

Every name a manifest points at is durable before the manifest's own name exists. A save
waits for two rounds of fsyncs (step 5's, then manifests/), whatever its number of chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from threading import Lock
from functools import partial
from typing import Any, Callable

import torch

from . import chunking, tree
from .chunkfile import ChunkCodec, chunk_id
from .directio import StagingBuffers
from .durable import PendingWrite, fsync_dir, start_durable_write
from .known import KnownFiles
from .manifest import MAX_MANIFEST_BYTES, ChunkRef, Manifest, TensorRecord
from .loose import LooseWriter
from .packfile import PackWriter
from .paths import StoreLayout
from .pool import WorkerPool
from .reading import StoreReader
from .reports import SnapshotInfo
from .staging import Staged
from .tensorbytes import DTYPE_NAMES, group_width


# States up to this many bytes are cut, hashed, encoded and written on the commit thread
# alone: handing small chunks to worker threads costs more than the work (each hand-off
# waits for a core on a busy machine). Measured on 2 busy cores, a 2.3 MiB MLP+AdamW
# save without compression: 2 ms inline, 5 ms on the pool; with zstd the pool wins
# (11 vs 22 ms: compression is real work, and two threads get two cores' share).
INLINE_BYTES = {"none": 8 << 20, "zstd": 256 << 10}
# States of at least this many bytes, saved raw (compression "none", the default),
# write their pack with O_DIRECT (`directio`; PackWriter's `direct`): no copy into the
# page cache, so about half the CPU (0.49-0.76x, interleaved A/B in one process), a
# narrower spread, and no gigabyte of dirty pages left to compete with the log's
# fdatasync. What it costs: the disk then sees at most WINDOWS * WINDOW bytes in flight,
# where writeback from the page cache goes deeper, so on an idle machine buffered saves
# were faster up to a few hundred MiB (direct/buffered wall at load 2-3: 54 MiB 1.29-1.50,
# 128 MiB 1.18-1.61, 256 MiB 0.89-1.33, 1 GiB 0.41-1.03). Hence the threshold, above the
# sizes where buffered won or tied: small and mid-sized saves keep the buffered path
# they had (a 256 MiB save through it was 0.57-0.68x torch.save + fsync in the same runs,
# direct 0.61-0.81x; at 1 GiB buffered was 1.3-1.5x, direct 0.66-0.79x). zstd saves keep it too: compressing
# is their cost, and the inline writeback hints already overlap it with the disk
# (direct/buffered 1.03 at 54 MiB, 1.21 at 256 MiB).
# The state's size decides, not the pack's: a large state whose save writes a small pack
# (a frozen base whose chunks are all reused, 32 MiB of adapters changed) is as fast
# direct as buffered (800 MiB state, 15 interleaved rounds: wall 0.97, CPU 0.87), since
# hashing the reused chunks overlaps the writes; a pack that switched to direct only
# past its first 64 MiB measured the same at 1 GiB (0.77 of buffered either way) and
# was not kept.
DIRECT_AFTER = 512 << 20


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
    written: int  # bytes this save wrote for it (0: an existing copy is reused)
    home: str | None = None  # a reused copy's directory, whose entry must be durable


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
    packs: bool = True  # new chunks go into one pack per save (else one loose file each)
    # The direct path's staging memory, kept from one large save to the next.
    staging: StagingBuffers = field(default_factory=StagingBuffers)


def commit(w: ChunkWriter, job: SaveJob) -> SnapshotInfo:
    """Steps 1 to 6 for `job`; the snapshot's info once its manifest is durable.

    The manifest's bytes depend only on step 2, so its temp file is written before the
    pack is named (step 3), and then every fsync the manifest's name waits for (the pack,
    its directory, the manifest's temp file: step 5) runs at once; the manifest's name
    still appears only after all of them have returned (step 6)."""
    # Raw chunks cost no CPU to make, so an inline writeback hint would make a worker
    # wait on the device queue; a pack's own thread gives the hints instead (PackWriter).
    writeback = "inline" if w.codec.compression != "none" else "background"
    # A large state's raw pack is written around the page cache (PackWriter's `direct`).
    direct = w.codec.compression == "none" and sum(v.numel() for v in job.staged.views) >= DIRECT_AFTER
    pack = (PackWriter(w.layout.packs, w.failpoint, writeback=writeback, direct=direct,
                       staging=w.staging) if w.packs
            else LooseWriter(w.layout, w.pool, w.failpoint))
    try:
        try:
            views = wait_for_staging(job)
            stored, segments = store_chunks(w, views, job.dtypes, component_groups(job.node), pack)
            logical = sum(v.numel() for v in views)
        finally:
            job.staged.release()
        chunks, records = build_tables(stored, segments, job)
        manifest = Manifest(
            index=job.index, term=job.term, created=time.time(), meta=job.meta, tree=job.node,
            tensors=records, chunks=chunks, bytes_logical=logical,
            chunk_bytes_written=sum(s.written for s in stored), chunk_bytes_stored=sum(c.stored_len for c in chunks),
        )
        data = encode_manifest(manifest)
        pending = start_durable_write(w.layout.manifests, manifest.name, [data], w.failpoint, "manifest",
                                      keep_open=True)
        try:
            name_pack(w, pack)
            sync_all(w, stored, pack, pending)
        except BaseException:
            pending.discard()
            raise
    except BaseException:
        pack.discard()
        raise
    return commit_manifest(w, manifest, pending)


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


def store_chunks(w: ChunkWriter, views: list[torch.Tensor], dtypes: list[torch.dtype], groups: list | None,
                 pack: PackWriter | LooseWriter) -> tuple[list[StoredChunk], list]:
    """Step 2: (a StoredChunk per planned chunk, each tensor's segments over them); new
    chunks are appended to `pack`."""
    planned, segments = chunking.plan(views, [group_width(d) for d in dtypes], w.chunk_size, groups)
    claims = _Claims()
    if sum(pc.nbytes for pc in planned) <= INLINE_BYTES[w.codec.compression]:
        # A small state: handing each chunk to a worker thread costs more than the work
        # (each hand-off waits for a core on a busy machine), so this thread does it.
        return [_store_chunk(w, pc, claims, pack) for pc in planned], segments
    return w.pool.map_all(lambda pc: _store_chunk(w, pc, claims, pack), planned), segments


def _store_chunk(w: ChunkWriter, pc: chunking.PlannedChunk, claims: "_Claims", pack: PackWriter | LooseWriter) -> StoredChunk:
    raw = pc.materialize()
    cid = chunk_id(raw)
    n = raw.numel()
    if not claims.first(cid):
        return StoredChunk(cid, n, None, 0)
    copy = w.reader.trusted_copy(cid, n)
    if copy is not None:
        return StoredChunk(cid, n, copy.stored_len, 0, copy.directory)
    # New, or every existing copy fails its check: the pack gets a fresh one, which
    # readers try first (the newest pack) and prune keeps while a manifest names it.
    if w.packs and pack.empty:
        w.layout.ensure_dir(w.layout.packs)
    size = pack.append(cid, n, w.codec.encode(raw, pc.width))
    return StoredChunk(cid, n, size, size)


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


def name_pack(w: ChunkWriter, pack: PackWriter | LooseWriter) -> None:
    """Step 3: the pack's index and trailer, and its name (not yet durable: step 5);
    nothing when no chunk was new. Loose chunk files are fsynced and named in step 5."""
    if isinstance(pack, PackWriter):
        pack.seal()


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


def sync_all(w: ChunkWriter, stored: list[StoredChunk], pack: PackWriter | LooseWriter,
             pending: PendingWrite) -> None:
    """Step 5, the one round of fsyncs the manifest's name waits for, issued together:
    the pack named in step 3, packs/ when a pack was named, every directory holding a
    reused copy that this process has not fsynced (a crashed writer may have renamed
    without syncing the directory), and the manifest's temp file. Returns once every one
    has returned; the first error is raised after all have (the pack is deleted then,
    the caller deletes the manifest's temp file). The pack's chunks are known to this
    process's readers (and trusted by its writer) from here on.

    Why concurrently: each fsync waits for the disk; issued one after another they wait
    in turn (three rounds on a journaling filesystem), issued together they share the
    journal's commits. This thread fsyncs the pack (or the manifest when there is no
    pack), the pool the rest. Loose chunk files (``packs=False``) keep the older order
    (each fsynced, then named, then its directory fsynced): two rounds before the
    manifest's rename, the manifest's temp file fsynced during the first."""
    dirs = w.known.unsynced({s.home for s in stored if s.home})
    if pack.name is not None:
        dirs.add(w.layout.packs)
    if isinstance(pack, LooseWriter):
        dirs |= pack.directories
        # The older form (FORMAT.md): each chunk file is fsynced before its rename and its
        # directory after it, so the manifest's fsync overlaps the first round only.
        _together(w.pool, lambda: w.known.add_good(pack.finish()), [pending.sync])
        _together(w.pool, None, [partial(fsync_dir, d) for d in sorted(dirs)])
    elif pack.name is None:
        _together(w.pool, pending.sync, [partial(fsync_dir, d) for d in sorted(dirs)])
    else:
        _together(w.pool, pack.sync, [pending.sync, *(partial(fsync_dir, d) for d in sorted(dirs))])
        entries = pack.entries
        w.reader.locator.add(pack.name, entries)
        w.known.add_good(e.id for e in entries)
    w.known.mark_synced(dirs)


def _together(pool: WorkerPool, here: Callable[[], None] | None, others: list[Callable[[], None]]) -> None:
    """`here()` on this thread (when None: the first of `others`) while the pool runs the
    rest; returns once all have returned, else raises the first error once all have."""
    if here is None:
        if not others:
            return
        here, others = others[0], others[1:]
    futures = [pool.submit(fn) for fn in others]
    error: BaseException | None = None
    try:
        here()
    except BaseException as e:  # noqa: BLE001 - raised below, once the workers are done
        error = e
    for f in futures:
        e = f.exception()  # wait for every one: the files are the workers' until then
        error = error or e
    if error is not None:
        raise error


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest file's bytes; ValueError when they exceed the format's bound."""
    data = manifest.encode()
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest of {len(data)} bytes exceeds the format's {MAX_MANIFEST_BYTES} "
                         f"({len(manifest.chunks)} chunks): save with a larger chunk_size")
    return data


def commit_manifest(w: ChunkWriter, manifest: Manifest, pending: PendingWrite) -> SnapshotInfo:
    """Step 6: name the fsynced manifest (its name appears by the atomic rename), then
    fsync manifests/."""
    pending.publish()
    w.failpoint("snapshot.after_manifest_rename")
    fsync_dir(w.layout.manifests)
    return SnapshotInfo.from_manifest(replace(manifest, file_size=pending.written))
