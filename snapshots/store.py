"""SnapshotStore: save, verify, load and prune snapshots of nested state.

Threads: each store has one commit thread, on which every save's write phase and every
prune run, one at a time and in submission order, and a pool of worker threads that
hash, compress, write and read chunks in parallel. So within a process a prune never
runs while a save is in flight, and two saves never race on a chunk.

Processes: one process at a time may write a store directory (`LOCK`, taken by the first
save or prune, held until close; a second writer gets LockedError). Any number of
processes may read while it writes: loads and verifies hold a shared flock on `READERS`,
and prune deletes files only while holding it exclusively, so a reader never sees a
snapshot's chunks vanish under it. A store must not be used across fork().
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from threading import Lock
from typing import Any, Callable, Iterable

import msgpack
import torch

from . import chunking, inplace, retention, tree
from .chunkfile import ChunkCodec, ChunkDecodeError, chunk_id
from .errors import (
    CorruptSnapshotError,
    SnapshotNotFoundError,
    ClosedError,
    UnsupportedPlatformError,
)
from .durable import TMP_PREFIX, PendingWrite, fsync_dir, start_durable_write, write_durably
from .locks import FileLock, acquire_writer_lock
from .paths import StoreLayout
from .manifest import MAX_MANIFEST_BYTES, ChunkRef, Manifest, ManifestDecodeError, TensorRecord, is_chunk_id, manifest_name, parse_manifest_name
from .safefile import UnsafeFileError, read_regular
from .staging import Staged, Stager
from .tensorbytes import DTYPE_NAMES, DTYPES, byte_view, group_width

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4 << 20
_MAX_INDEX = 2**63 - 1


@dataclass(frozen=True)
class SnapshotInfo:
    """One committed snapshot, as its manifest describes it.

    `bytes_logical` is the total size of its tensors; `bytes_written` what the save that
    made it wrote (new chunk files plus the manifest; an unchanged state costs only the
    manifest); `bytes_stored` the on-disk size of every chunk it uses plus the manifest
    (chunks shared with other snapshots count in each)."""

    index: int
    term: int
    created: float
    bytes_logical: int
    bytes_written: int
    bytes_stored: int
    manifest_id: str
    meta: Any
    tensors: int
    chunks: int

    @classmethod
    def _from_manifest(cls, m: Manifest) -> "SnapshotInfo":
        return cls(
            index=m.index, term=m.term, created=m.created, bytes_logical=m.bytes_logical,
            bytes_written=m.bytes_written, bytes_stored=m.bytes_stored, manifest_id=m.name,
            meta=m.meta, tensors=len(m.tensors), chunks=len(m.chunks),
        )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a snapshot: `chunk` is None when the manifest itself is bad."""

    chunk: str | None
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of checking one snapshot; true when `ok`."""

    manifest_id: str
    ok: bool
    chunks_checked: int
    bytes_checked: int
    problems: tuple[Problem, ...]

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"snapshot {self.manifest_id}: ok ({self.chunks_checked} chunks, {self.bytes_checked} bytes)"
        detail = "; ".join(f"{p.chunk or 'manifest'}: {p.reason}" for p in self.problems)
        return f"snapshot {self.manifest_id}: damaged: {detail}"


@dataclass(frozen=True)
class ManifestEntry:
    """One committed manifest name in a store, whether or not the file reads back.

    `index` and `term` are parsed from the name (FORMAT.md, "Directory layout");
    `info` is the snapshot's info when the manifest passes its own checks, else None and
    `unreadable` says why (checksum, schema, a symlink or FIFO in its place, ...)."""

    name: str
    index: int
    term: int
    info: SnapshotInfo | None
    unreadable: str | None

    @property
    def key(self) -> tuple[int, int]:
        """(index, term): the order snapshots sort in."""
        return (self.index, self.term)


@dataclass(frozen=True)
class PruneReport:
    """What `prune` did. `skipped` holds the reports of damaged snapshots it passed over
    while looking for the newest verified one; `sweep_skipped` says why no chunk was
    deleted, if none could safely be (a retained manifest was unreadable); `damage` names
    what the sweep refused to enter or delete (a chunk directory that is a symbolic link,
    an entry that is not a regular file), each left untouched."""

    deleted: tuple[str, ...]
    kept: tuple[str, ...]
    chunks_deleted: int
    bytes_freed: int
    temp_files_deleted: int
    skipped: tuple[VerifyReport, ...]
    sweep_skipped: str | None = None
    damage: tuple[str, ...] = ()


class PendingSnapshot:
    """A save in flight, returned by `save_async`; like a concurrent.futures.Future."""

    def __init__(self, future: Future, index: int, term: int):
        self._future = future
        self.index = index
        self.term = term

    def result(self, timeout: float | None = None) -> SnapshotInfo:
        """Block until the snapshot commits and return its info, or raise the save's error
        (TimeoutError if `timeout` seconds pass first)."""
        return self._future.result(timeout)

    def done(self) -> bool:
        """True once the save has committed or failed."""
        return self._future.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The save's error, None if it committed (blocks like `result`)."""
        return self._future.exception(timeout)


@dataclass
class _SaveJob:
    index: int
    term: int
    meta: Any
    node: list
    dtypes: list[torch.dtype]
    shapes: list[tuple[int, ...]]
    staged: Staged


@dataclass(frozen=True)
class _StoredChunk:
    id: str
    raw_len: int
    stored_len: int | None  # None: the same bytes appear earlier in this save
    written: int
    new_in: str | None  # directory that got a new name
    pending: PendingWrite | None = None  # written, not yet fsynced and renamed


class SnapshotStore:
    """Content-addressed, compressed, verified snapshots of nested state in one directory.

    `keep_last` and `keep_every` are the retention `prune()` applies (see
    `retention.to_delete`); `chunk_size` (a multiple of 64 bytes) is how tensors are cut;
    `level` the zstd level; `workers` the size of the worker pool (default: twice the
    CPU count, at least 4, as workers also wait on fsync). The store directory is created
    by the first save; reading a missing directory finds no snapshots.

    `failpoint` (crash testing only): a callable the store calls with a point's name at
    each step of the commit protocol and of prune, on whichever thread reaches it:
    ``snapshot.before_chunk_fsync``, ``snapshot.before_chunk_rename`` (every new chunk),
    ``snapshot.before_manifest_fsync``, ``snapshot.before_manifest_rename``,
    ``snapshot.after_manifest_rename`` (before manifests/ is fsynced),
    ``snapshot.prune.before_delete`` (retention decided, nothing deleted) and
    ``snapshot.prune.before_sweep`` (old manifests deleted, chunks not yet swept). It may
    kill the process or raise (a raise fails that save or prune like an I/O error would).
    None (the default) calls nothing. replay's Journal passes `replay.failpoints.hit`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        keep_last: int = 3,
        keep_every: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        level: int = 1,
        workers: int | None = None,
        failpoint: Callable[[str], None] | None = None,
    ):
        if sys.byteorder != "little":
            raise UnsupportedPlatformError("snapshot stores need a little-endian host")
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        if keep_every is not None and keep_every < 1:
            raise ValueError("keep_every must be at least 1 (or None)")
        if chunk_size < 64 or chunk_size % 64:
            raise ValueError("chunk_size must be a positive multiple of 64 bytes")
        self.path = os.fspath(path)
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.chunk_size = chunk_size
        self.workers = workers or max(4, 2 * (os.cpu_count() or 2))
        self._layout = StoreLayout(self.path)
        self._codec = ChunkCodec(level)
        self._stager = Stager()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="snapshots-io")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="snapshots-commit")
        self._lock = Lock()  # guards the fields below
        self._writer_lock: FileLock | None = None
        self._known_good: set[str] = set()  # chunk ids written or verified by this process
        self._synced_dirs: set[str] = set()
        self._closed = False
        self._failpoint = failpoint or _no_failpoint

    # -- writing ---------------------------------------------------------------------

    def save(self, state: Any, *, index: int, term: int, meta: Any = None) -> SnapshotInfo:
        """Snapshot `state` at (index, term) and return once it is durable.

        `state` is a tensor, a msgpack scalar, or mappings/lists/tuples of them (FORMAT.md,
        "Tree nodes"); TypeError names the key path of anything else, before anything is
        written. `meta` is any msgpack value, returned in SnapshotInfo.meta. The state must
        not be mutated until this returns. Re-saving an existing (index, term) replaces it.
        """
        job = self._prepare(state, index, term, meta, copy_all=False)
        return self._committer.submit(self._commit, job).result()

    def save_async(self, state: Any, *, index: int, term: int, meta: Any = None) -> PendingSnapshot:
        """Like `save`, but return as soon as the state is staged into host buffers: the
        caller may mutate its tensors at once, and no later change reaches the snapshot.
        Bad input still raises here; write errors are raised by `result()`."""
        job = self._prepare(state, index, term, meta, copy_all=True)
        return PendingSnapshot(self._committer.submit(self._commit, job), index, term)

    def _prepare(self, state: Any, index: int, term: int, meta: Any, copy_all: bool) -> _SaveJob:
        self._check_open()
        for name, value in (("index", index), ("term", term)):
            if type(value) is not int or not 0 <= value <= _MAX_INDEX:
                raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")
        try:
            msgpack.packb(meta, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"meta must be a msgpack value: {e}") from None
        node, leaves = tree.flatten(state)
        for path, t in leaves:
            _check_leaf(path, t)
        self._ensure_writer()
        tensors = [t for _, t in leaves]
        staged = self._stager.stage(tensors, copy_all=copy_all)
        return _SaveJob(index, term, meta, node, [t.dtype for t in tensors], [tuple(t.shape) for t in tensors], staged)

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._writer_lock is None:
                os.makedirs(self.path, exist_ok=True)
                self._writer_lock = acquire_writer_lock(self._layout.lock_file, self._layout.root)
                self._layout.create()

    def _commit(self, job: _SaveJob) -> SnapshotInfo:
        try:
            job.staged.wait()
            views = job.staged.views
            planned, planned_segments = chunking.plan(views, [group_width(d) for d in job.dtypes], self.chunk_size)
            claims: set[str] = set()
            stored = self._parallel(lambda pc: self._store_chunk(pc, claims), planned)
        finally:
            job.staged.release()
        # Every new chunk is written (and on its way to the disk): fsync and name them all.
        new = [s for s in stored if s.pending is not None]
        try:
            self._parallel(lambda s: s.pending.finish(), new)
        except BaseException:
            for s in new:
                s.pending.discard()
            raise
        with self._lock:
            self._known_good.update(s.id for s in new)

        table: dict[str, int] = {}
        sizes = {s.id: s.stored_len for s in stored if s.stored_len is not None}
        chunks: list[ChunkRef] = []
        for s in stored:
            if s.id not in table:
                table[s.id] = len(chunks)
                chunks.append(ChunkRef(s.id, s.raw_len, sizes[s.id]))
        records = tuple(
            TensorRecord(DTYPE_NAMES[dtype], shape, tuple((table[stored[c].id], off, n) for c, off, n in segs))
            for dtype, shape, segs in zip(job.dtypes, job.shapes, planned_segments)
        )

        # Every name the manifest will point at must be durable before the manifest is.
        with self._lock:
            dirs = {s.new_in for s in stored if s.new_in}
            dirs |= {self._layout.chunk_dir(c.id) for c in chunks} - self._synced_dirs
        self._parallel(fsync_dir, sorted(dirs))
        with self._lock:
            self._synced_dirs |= dirs

        chunk_bytes_written = sum(s.written for s in stored)
        chunk_bytes_stored = sum(c.stored_len for c in chunks)
        manifest = Manifest(
            index=job.index, term=job.term, created=time.time(), meta=job.meta, tree=job.node,
            tensors=records, chunks=tuple(chunks), bytes_logical=sum(v.numel() for v in views),
            bytes_written=chunk_bytes_written, bytes_stored=chunk_bytes_stored,
        )
        data = manifest.encode()
        for _ in range(8):  # the byte counts include the manifest's own size: iterate to a fixed point
            sized = replace(manifest, bytes_written=chunk_bytes_written + len(data), bytes_stored=chunk_bytes_stored + len(data))
            if sized == manifest:
                break
            manifest, data = sized, sized.encode()
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValueError(f"manifest of {len(data)} bytes exceeds the format's {MAX_MANIFEST_BYTES} "
                             f"({len(chunks)} chunks): save with a larger chunk_size")
        write_durably(self._layout.manifests, manifest.name, [data], self._failpoint, "manifest")
        self._failpoint("snapshot.after_manifest_rename")
        fsync_dir(self._layout.manifests)
        return SnapshotInfo._from_manifest(manifest)

    def _store_chunk(self, pc: chunking.PlannedChunk, claims: set[str]) -> _StoredChunk:
        raw = pc.materialize()
        cid = chunk_id(raw)
        n = raw.numel()
        with self._lock:
            if cid in claims:
                return _StoredChunk(cid, n, None, 0, None)
            claims.add(cid)
            trusted = cid in self._known_good
        path = self._layout.chunk_path(cid)
        size = _file_size(path)
        if size is not None and (trusted or self._chunk_is_intact(cid, n, size)):
            return _StoredChunk(cid, n, size, 0, None)
        # New, or an existing file that fails its check: (re)write it; rename replaces it.
        pending = start_durable_write(self._layout.chunk_dir(cid), cid, self._codec.encode(raw, pc.width), self._failpoint, "chunk")
        return _StoredChunk(cid, n, pending.written, pending.written, self._layout.chunk_dir(cid), pending)

    def _chunk_is_intact(self, cid: str, raw_len: int, size: int) -> bool:
        try:
            self._read_chunk("<dedup check>", ChunkRef(cid, raw_len, size), torch.empty(raw_len, dtype=torch.uint8))
            return True
        except (CorruptSnapshotError, OSError):
            log.warning("chunk %s exists but is damaged; rewriting it", cid)
            return False

    def _parallel(self, fn: Callable, items: Iterable) -> list:
        """fn over items on the worker pool, in order; the first error cancels the rest and
        is raised once every started task has finished."""
        futures = [self._pool.submit(fn, item) for item in items]
        results, error = [], None
        for f in futures:
            if error is not None:
                f.cancel()
                continue
            try:
                results.append(f.result())
            except BaseException as e:  # noqa: BLE001 - re-raised below, after cleanup
                error = e
                for g in futures:
                    g.cancel()
        if error is not None:
            for f in futures:
                if not f.cancelled():
                    f.exception()  # wait: no task may touch the store after we return
            raise error
        return results

    # -- reading ---------------------------------------------------------------------

    def list(self) -> list[SnapshotInfo]:
        """Every committed snapshot whose manifest reads back, oldest to newest by (index,
        term). Chunks are not checked (use `verify`); a manifest that fails its own
        checksum or schema is left out with a logged warning. [] for a missing store."""
        infos = []
        for name in self._manifest_names():
            try:
                infos.append(SnapshotInfo._from_manifest(self._read_manifest(name)))
            except SnapshotNotFoundError:
                continue  # pruned since the directory listing
            except CorruptSnapshotError as e:
                log.warning("%s", e)
        return infos

    def manifests(self) -> list[ManifestEntry]:
        """Every committed manifest name, oldest to newest by (index, term), each with its
        info or, when it does not read back, why (`list` leaves those out). Chunks are not
        checked (use `verify`). Names that are not manifest names (temp files, strangers)
        are not listed; a manifest pruned while this runs is left out. [] for a missing
        store. Taken under the shared reader lock, so a prune cannot delete in between."""
        self._check_open()
        entries = []
        with self._reading():
            for name in self._manifest_names():
                index, term = parse_manifest_name(name)
                try:
                    info, why = SnapshotInfo._from_manifest(self._read_manifest(name)), None
                except SnapshotNotFoundError:
                    continue
                except CorruptSnapshotError as e:
                    info, why = None, e.reason
                entries.append(ManifestEntry(name, index, term, info, why))
        return entries

    def latest(self) -> SnapshotInfo | None:
        """The newest snapshot that verifies, None if none does. Damaged ones are skipped
        and logged; use `latest_verified` to get their reports."""
        info, skipped = self.latest_verified()
        for report in skipped:
            log.warning("skipping damaged %s", report)
        return info

    def latest_verified(self) -> tuple[SnapshotInfo | None, list[VerifyReport]]:
        """(newest snapshot that verifies or None, reports of the newer damaged snapshots
        skipped on the way, newest first). Every chunk of the returned snapshot is read
        and hash-checked; to load it too in one pass, use `load_latest`."""
        self._check_open()
        return self._latest_verified()

    def _latest_verified(self):
        skipped = []
        with self._reading():
            for name in self._newest_first():
                report, manifest = self._verify(name)
                if report.ok:
                    return SnapshotInfo._from_manifest(manifest), skipped
                if manifest is None and report.problems[0].reason == _MISSING:
                    continue  # renamed over meanwhile: _newest_first lists again
                skipped.append(report)
        return None, skipped

    def _newest_first(self):
        """Manifest names, newest first, for a caller holding the shared reader lock.

        A prune deletes manifests only under the exclusive lock, so none listed here can
        vanish before the caller is done with it; the listing must be taken under the
        lock, though, or a prune between the listing and the lock could delete every
        listed name while a newer one exists ("no snapshot" with snapshots present). As
        a second line, a name that vanishes anyway (a store written without the lock)
        makes the walk list again, skipping names already seen, until a listing has no
        name that vanished."""
        seen: set[str] = set()
        while True:
            fresh = [n for n in reversed(self._manifest_names()) if n not in seen]
            if not fresh:
                return
            for name in fresh:
                seen.add(name)
                yield name
            if all(os.path.lexists(self._layout.manifest_path(n)) for n in fresh):
                return

    def load_latest(
        self,
        map_location: str | torch.device = "cpu",
        *,
        accept: Callable[[SnapshotInfo], str | None] | None = None,
        like: Any = None,
        strict: bool = True,
    ) -> tuple[SnapshotInfo | None, Any, list[VerifyReport]]:
        """(info, state, skipped): `load` of the newest snapshot that loads, reading each
        chunk once; (None, None, skipped) when none loads (or the store is empty).

        Skipped snapshots (newest first) are reported as VerifyReports with `ok` false:
        damaged ones, and those `accept` refuses. `accept(info)` is called for each
        candidate, newest first, once its manifest has been read and before any chunk is:
        a returned string is the reason to skip it (the report's problem, on the
        manifest), None accepts it. It runs while this reader holds the store's shared
        lock (a prune waits to delete), so it should be quick; what it raises propagates.

        `like` (a live state: mappings, lists, tuples of tensors and plain values, e.g. the
        state `load_into` would restore into) makes the layout checked before any tensor
        is allocated: the snapshot must have a tensor of the same dtype and shape at every
        key path where `like` has one and nowhere else (devices may differ), else
        StateMismatchError names the key path and both layouts. A mismatch is not damage:
        it raises at the first accepted snapshot instead of falling back to an older one.
        strict=False compares only the key paths where both hold a tensor (a live
        optimizer before its first step has no moments yet; the snapshot's are fine).
        """
        self._check_open()
        skipped: list[VerifyReport] = []
        with self._reading():
            for name in self._newest_first():
                try:
                    manifest = self._read_manifest(name)
                    info = SnapshotInfo._from_manifest(manifest)
                    reason = accept(info) if accept is not None else None
                    if reason is not None:
                        skipped.append(VerifyReport(name, False, 0, 0, (Problem(None, str(reason)),)))
                        continue
                    if like is not None:
                        inplace.check_layout(manifest.tree, manifest.tensors, like, strict=strict)
                    tensors = self._read_tensors(manifest)
                except SnapshotNotFoundError:
                    continue  # re-saved under the same name meanwhile; _newest_first relists
                except CorruptSnapshotError as e:
                    report = self._verify(name)[0]
                    skipped.append(report if not report.ok else _report_of(e))
                    continue
                return info, _build(manifest, tensors, map_location), skipped
        return None, None, skipped

    def load(self, info: SnapshotInfo | str, map_location: str | torch.device = "cpu", *, like: Any = None,
             strict: bool = True) -> Any:
        """The saved state with fresh tensors on `map_location` (a device), containers and
        values as FORMAT.md's tree table says. Every chunk is hash-checked before any of it
        is returned. Raises SnapshotNotFoundError or CorruptSnapshotError. With `like`,
        the tensor layout is checked against it first, as in `load_latest` (`strict` as
        there; StateMismatchError, nothing allocated)."""
        self._check_open()
        with self._reading():
            manifest = self._read_manifest(self._name_of(info))
            if like is not None:
                inplace.check_layout(manifest.tree, manifest.tensors, like, strict=strict)
            tensors = self._read_tensors(manifest)
        return _build(manifest, tensors, map_location)

    def load_into(self, info: SnapshotInfo | str, live: Any) -> SnapshotInfo:
        """Restore the snapshot into `live` in place, by the rules in `inplace` (tensors
        copied with copy_, so references stay valid; plain values assigned). Everything is
        checked first: on StateMismatchError (naming the key path) or CorruptSnapshotError
        the live state is untouched. Returns the snapshot's info."""
        self._check_open()
        with self._reading():
            manifest = self._read_manifest(self._name_of(info))
            plan = inplace.plan_restore(manifest.tree, live, manifest.tensors)
            tensors = self._read_tensors(manifest)
        plan.apply(tensors.__getitem__)
        return SnapshotInfo._from_manifest(manifest)

    def verify(self, info: SnapshotInfo | str) -> VerifyReport:
        """Read and check the manifest and every chunk of a snapshot (hash after bounded
        decompression). Never raises on damage or absence: the report says what is wrong."""
        self._check_open()
        name = info.manifest_id if isinstance(info, SnapshotInfo) else str(info)
        if parse_manifest_name(name) is None:
            return VerifyReport(name, False, 0, 0, (Problem(None, "not a manifest name"),))
        return self._verify(name)[0]

    def _verify(self, name: str) -> tuple[VerifyReport, Manifest | None]:
        with self._reading():
            try:
                manifest = self._read_manifest(name)
            except SnapshotNotFoundError:
                return VerifyReport(name, False, 0, 0, (Problem(None, _MISSING),)), None
            except CorruptSnapshotError as e:
                return VerifyReport(name, False, 0, 0, (Problem(None, e.reason),)), None

            def check(ref: ChunkRef) -> Problem | None:
                try:
                    self._read_chunk(name, ref, torch.empty(ref.raw_len, dtype=torch.uint8))
                    return None
                except CorruptSnapshotError as e:
                    return Problem(ref.id, e.reason)
                except (MemoryError, RuntimeError) as e:  # a 1 GiB scratch under a memory cap
                    return Problem(ref.id, f"cannot allocate {ref.raw_len} bytes to check it: {e}")

            problems = tuple(p for p in self._parallel(check, manifest.chunks) if p is not None)
        report = VerifyReport(name, not problems, len(manifest.chunks), sum(c.raw_len for c in manifest.chunks), problems)
        return report, manifest

    def _reading(self) -> FileLock:
        lock = FileLock(self._layout.readers_file)
        lock.acquire(exclusive=False)
        return lock

    def _name_of(self, info: SnapshotInfo | str) -> str:
        name = info.manifest_id if isinstance(info, SnapshotInfo) else str(info)
        if parse_manifest_name(name) is None:
            raise SnapshotNotFoundError(f"{name!r} is not a snapshot id (expected '<index>-<term>')")
        return name

    def _manifest_names(self) -> list[str]:
        try:
            names = os.listdir(self._layout.manifests)
        except FileNotFoundError:
            return []
        keyed = [(key, n) for n in names if (key := parse_manifest_name(n)) is not None]
        return [n for _, n in sorted(keyed)]

    def _read_manifest(self, name: str) -> Manifest:
        try:
            data = read_regular(self._layout.manifest_path(name), MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise SnapshotNotFoundError(f"no snapshot {name} in {self.path}") from None
        except UnsafeFileError as e:
            raise CorruptSnapshotError(name, None, f"manifest file {e}") from None
        except OSError as e:
            raise CorruptSnapshotError(name, None, f"manifest file unreadable: {e}") from None
        try:
            return Manifest.decode(name, data)
        except ManifestDecodeError as e:
            raise CorruptSnapshotError(name, None, str(e)) from None

    def _read_chunk(self, name: str, ref: ChunkRef, out: torch.Tensor) -> None:
        try:
            self._codec.read(self._layout.chunk_path(ref.id), ref.raw_len, ref.stored_len, out)
        except FileNotFoundError:
            raise CorruptSnapshotError(name, ref.id, "chunk file is missing") from None
        except ChunkDecodeError as e:
            raise CorruptSnapshotError(name, ref.id, str(e)) from None
        except OSError as e:
            raise CorruptSnapshotError(name, ref.id, f"chunk file unreadable: {e}") from None
        if chunk_id(out) != ref.id:
            raise CorruptSnapshotError(name, ref.id, "content hash mismatch")
        with self._lock:
            self._known_good.add(ref.id)

    def _read_tensors(self, manifest: Manifest) -> list[torch.Tensor]:
        """Fresh CPU tensors for every tensor record, each chunk read once, in parallel.

        The manifest's sizes are consistent (decode checked them), but they may still
        describe more memory than this process can have: a chunk may be referenced by
        many segments (equal content is stored once, so a 64 GiB zero tensor is a few KB
        on disk, honestly). A failed allocation (MemoryError, or torch's RuntimeError)
        is reported as CorruptSnapshotError, so `load_latest` skips the snapshot like
        damage; callers that know the state's layout pass `like` to refuse it earlier."""
        try:
            return self._read_tensors_into(manifest)
        except (MemoryError, RuntimeError) as e:
            raise CorruptSnapshotError(
                manifest.name, None, f"cannot allocate its {manifest.bytes_logical} bytes of tensors: {e}"[:500]) from None

    def _read_tensors_into(self, manifest: Manifest) -> list[torch.Tensor]:
        outs = [torch.empty(r.shape, dtype=DTYPES[r.dtype]) for r in manifest.tensors]
        raws = [byte_view(o) for o in outs]
        uses: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
        for t, record in enumerate(manifest.tensors):
            at = 0
            for c, off, n in record.segments:
                uses[c].append((off, n, t, at))
                at += n

        def fill(c: int) -> None:
            ref, targets = manifest.chunks[c], uses[c]
            off, n, t, at = targets[0]
            if len(targets) == 1 and off == 0 and n == ref.raw_len:
                self._read_chunk(manifest.name, ref, raws[t][at:at + n])  # straight into the tensor
                return
            scratch = torch.empty(ref.raw_len, dtype=torch.uint8)
            self._read_chunk(manifest.name, ref, scratch)
            for off, n, t, at in targets:
                raws[t][at:at + n].copy_(scratch[off:off + n])

        self._parallel(fill, sorted(uses))
        return outs

    # -- retention -------------------------------------------------------------------

    def prune(self) -> PruneReport:
        """Apply retention: find the newest snapshot that verifies, delete the snapshots
        `retention.to_delete` allows (never that one or anything newer), then delete every
        chunk no remaining manifest names and every temp file a crashed writer left.

        Runs on the commit thread, so it waits for saves in flight and never sweeps their
        chunks. The verification reads every chunk of the newest snapshot back (damage
        after a write is what it is for); deletion waits for readers in other processes to
        finish their current load or verify."""
        self._check_open()
        self._ensure_writer()
        return self._committer.submit(self._prune).result()

    def _prune(self) -> PruneReport:
        names = self._manifest_names()
        newest, skipped = self._latest_verified()
        newest_key = (newest.index, newest.term) if newest else None
        doomed = {manifest_name(*k) for k in retention.to_delete(
            [parse_manifest_name(n) for n in names], newest_key, self.keep_last, self.keep_every)}
        damage = _not_a_directory(self._layout.manifests, "manifests/")
        if damage:  # a link to elsewhere: deleting "old manifests" there would delete others' files
            doomed = set()
        kept = [n for n in names if n not in doomed]
        lock = FileLock(self._layout.readers_file)
        lock.acquire(exclusive=True)
        try:
            self._failpoint("snapshot.prune.before_delete")
            for name in sorted(doomed):
                _unlink(self._layout.manifest_path(name))
            temps = [] if damage else [n for n in os.listdir(self._layout.manifests) if n.startswith(TMP_PREFIX)]
            for name in temps:
                _unlink(self._layout.manifest_path(name))
            if doomed or temps:
                fsync_dir(self._layout.manifests)
            self._failpoint("snapshot.prune.before_sweep")
            marked, unreadable = set(), None
            for name in kept:
                try:
                    marked.update(c.id for c in self._read_manifest(name).chunks)
                except _UNREADABLE as e:
                    unreadable = f"manifest {name} is unreadable ({e}); no chunk was deleted"
            swept = self._sweep_chunks(marked, sweep_chunks=unreadable is None and not damage)
            damage += swept[3]
        finally:
            lock.release()
        if unreadable:
            log.warning("prune: %s", unreadable)
        for problem in damage:
            log.warning("prune: %s", problem)
        return PruneReport(
            deleted=tuple(n for n in names if n in doomed), kept=tuple(kept), chunks_deleted=swept[0],
            bytes_freed=swept[1], temp_files_deleted=len(temps) + swept[2], skipped=tuple(skipped),
            sweep_skipped=unreadable, damage=tuple(damage),
        )

    def _sweep_chunks(self, marked: set[str], sweep_chunks: bool) -> tuple[int, int, int, list[str]]:
        """Delete unmarked chunks (if `sweep_chunks`) and temp files under chunks/:
        (chunks deleted, bytes freed, temp files deleted, damage found).

        Never follows a symbolic link: chunks/ and each fan-out directory are opened with
        O_NOFOLLOW and everything below is addressed relative to those descriptors, so a
        link (or a directory renamed into a link meanwhile) cannot lead a deletion out of
        the store. A fan-out directory that is a link or not a directory is reported, not
        entered; an entry that would be deleted but is not a regular file is reported
        and left alone."""
        deleted = freed = temps = 0
        damage: list[str] = []
        try:
            top = os.open(self._layout.chunks, _DIR_FLAGS)
        except FileNotFoundError:
            return 0, 0, 0, damage
        except OSError as e:
            return 0, 0, 0, [f"chunks/ is not a directory of this store ({e.strerror}); nothing swept there"]
        try:
            with os.scandir(top) as listing:
                subs = sorted((e for e in listing if _FANOUT.match(e.name)), key=lambda e: e.name)
            for sub in subs:
                if not sub.is_dir(follow_symlinks=False):
                    kind = "a symbolic link" if sub.is_symlink() else "not a directory"
                    damage.append(f"chunks/{sub.name} is {kind}; not entered")
                    continue
                try:
                    fd = os.open(sub.name, _DIR_FLAGS, dir_fd=top)
                except OSError as e:
                    damage.append(f"chunks/{sub.name} cannot be opened as a directory ({e.strerror}); not entered")
                    continue
                try:
                    changed = False
                    with os.scandir(fd) as listing:
                        entries = list(listing)
                    for entry in entries:
                        name = entry.name
                        temp = name.startswith(TMP_PREFIX)
                        if not (temp or (sweep_chunks and is_chunk_id(name) and name not in marked)):
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            damage.append(f"chunks/{sub.name}/{name} is not a regular file; left alone")
                            continue
                        size = _unlink(name, dir_fd=fd)
                        if size is None:
                            continue
                        changed = True
                        if temp:
                            temps += 1
                        else:
                            deleted, freed = deleted + 1, freed + size
                            with self._lock:
                                self._known_good.discard(name)
                    if changed:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            os.close(top)
        return deleted, freed, temps, damage

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Wait for saves in flight, stop the threads, release the writer lock. Idempotent;
        every later call raises ClosedError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._committer.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self._stager.clear()
        with self._lock:
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    def __enter__(self) -> "SnapshotStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"snapshot store {self.path} is closed")

    def __repr__(self) -> str:
        return f"SnapshotStore({self.path!r}, keep_last={self.keep_last}, keep_every={self.keep_every})"


_MISSING = "manifest is missing"


def _report_of(error: CorruptSnapshotError) -> VerifyReport:
    return VerifyReport(error.manifest, False, 0, 0, (Problem(error.chunk, error.reason),))


def _no_failpoint(name: str) -> None:
    return None
_UNREADABLE = (CorruptSnapshotError, SnapshotNotFoundError)


def _build(manifest: Manifest, tensors: list[torch.Tensor], map_location) -> Any:
    device = torch.device(map_location)
    if device.type != "cpu":
        tensors = [t.to(device) for t in tensors]
    return tree.build(manifest.tree, tensors.__getitem__)


def _check_leaf(path: tree.KeyPath, t: torch.Tensor) -> None:
    where = tree.format_path(path)
    if t.layout != torch.strided:
        raise TypeError(f"unsupported tensor layout {t.layout} at {where}")
    if t.dtype not in DTYPE_NAMES:
        raise TypeError(f"unsupported tensor dtype {t.dtype} at {where}")
    if t.device.type == "meta":
        raise TypeError(f"meta tensor (no data) at {where}")
    if t.is_nested or t.is_quantized:
        raise TypeError(f"unsupported nested or quantized tensor at {where}")


def _file_size(path: str) -> int | None:
    """The size of the regular file at `path`; None if there is none (a symlink or FIFO in
    its place is then replaced by the rename of a freshly written chunk)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _unlink(path: str, dir_fd: int | None = None) -> int | None:
    """Delete a directory entry (a link is deleted, not followed); its size, or None if it
    was already gone."""
    try:
        size = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_size
        os.unlink(path, dir_fd=dir_fd)
        return size
    except FileNotFoundError:
        return None


def _not_a_directory(path: str, what: str) -> list[str]:
    """[a damage report] if `path` exists but is a symbolic link or not a directory."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return []
    if stat.S_ISDIR(mode):
        return []
    return [f"{what} is {'a symbolic link' if stat.S_ISLNK(mode) else 'not a directory'}; nothing deleted there"]


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FANOUT = re.compile(r"^[0-9a-f]{2}$")
