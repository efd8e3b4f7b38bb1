"""SnapshotStore: the public face of a snapshot directory (save, load, verify, prune).

The work is done by modules with one job each: `saving` (checking, staging and
queueing saves and prunes, one at a time), `commit` (the write pipeline),
`reading` (checked reads and the newest-good walks), `pruning` (retention and the
sweep), `paths`, `durable` and `locks` (the directory, durable writes, flocks).

Processes: one process at a time may write a store directory (`LOCK`, taken by the first
save or prune, held until close; a second writer gets LockedError). Any number of
processes may read while it writes: loads and verifies hold a shared flock on `READERS`,
and prune deletes files only while holding it exclusively, so a reader never sees a
snapshot's chunks vanish under it. A store must not be used across fork().
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Iterable

import torch

from . import inplace, selection, tree
from .chunkfile import ChunkCodec
from .commit import ChunkWriter
from .errors import CorruptSnapshotError, SnapshotNotFoundError, UnsupportedPlatformError
from .known import KnownFiles
from .manifest import Manifest, parse_manifest_name
from .paths import StoreLayout
from .pool import WorkerPool
from .pruning import discard_after, Retention, prune
from .reading import Accept, StoreReader
from .reports import ManifestEntry, PruneReport, SnapshotInfo, VerifyReport
from .saving import PendingSnapshot, SaveQueue
from .staging import Stager

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4 << 20


class SnapshotStore:
    """Content-addressed, compressed, verified snapshots of nested state in one directory.

    Args:
        path: the store directory, created by the first save (a missing one reads as
            empty).
        keep_last, keep_every, keep_oldest: the retention `prune()` applies
            (`retention.to_delete`); keep_oldest also keeps the oldest snapshot, the base
            of a log that still holds its whole history.
        chunk_size: how tensors are cut, a positive multiple of 64 bytes.
        level: the zstd level.
        workers: threads that hash, compress, write and read chunks (default: twice the
            CPU count, at least 4, as workers also wait on fsync).
        failpoint: crash testing only (below); None calls nothing.
        compression: what new chunks are. "none" (the default) stores every chunk raw:
            a load is a read and a hash per chunk, 0.9-1.2x safetensors `load_file` +
            `copy_` on 2 busy cores, and a save writes the bytes as they are
            (bench/results/snapload.json, saves.json). "zstd" byte-groups floating point
            data and zstd-compresses each stream where that saves at least 1/32 of it
            (FORMAT.md, "Raw flag"): 24% fewer bytes on the benchmark's bf16+fp32 state
            (43-53% on optimizer-heavy states), at the price of decompressing and
            un-grouping on load (about 3x safetensors' time). Chosen by measurement:
            the time a job waits on a save or a load is what a checkpoint costs it, disk
            is cheaper. Either store reads both kinds, and chunk names are the same (the
            hash of the raw bytes), so a chunk already written with the other setting is
            reused as it is.
        packs: where a save puts its new chunks. True (the default): into one pack
            file per save (FORMAT.md, "Pack file"): one fsync per save whatever its
            number of chunks, and no fan-out directory (bench/results/saves.json). False:
            one loose file per chunk, each fsynced and renamed into chunks/ab/, as every
            store before packs was written. Either store reads both forms, and a chunk
            already stored in either is reused as it is; prune reclaims both (a pack
            goes once none of its chunks is named, and is rewritten once less than half
            of its bytes is: FORMAT.md, "Reclaiming space").

    Example::

        store = SnapshotStore("runs/exp1/snapshots", keep_last=3)
        info = store.save({"w": torch.ones(4)}, index=1200, term=3)  # durable on return
        info, state, skipped = store.load_latest()                  # newest that loads
        store.close()

    Lifecycle, and which thread does what:

    1. `save` / `save_async`, on the caller's thread: index, term, meta and every leaf
       are checked (TypeError names the key path; nothing is written), the first write
       takes the writer lock (LockedError) and creates the directories, and the tensors
       are staged into host buffers (`staging`): `save_async` copies every tensor,
       `save` only those it cannot read in place; CUDA copies go on a side stream.
    2. The staged job is queued for the store's one commit thread, which runs saves and
       prunes one at a time in submission order: a prune never runs beside a save of
       this process, and two saves never race on a chunk. A blocking `save` with nothing
       queued runs the next step on its caller's thread instead (under the same lock, so
       still one at a time: a save_async or prune submitted meanwhile waits for it).
    3. The commit thread runs the write pipeline (`commit`): it waits for the staging
       copies, the worker pool hashes, compresses and writes the new chunks (into the
       save's pack, at offsets reserved per chunk (or one loose file each, packs=False); the commit thread
       itself for a small state), and the manifest is committed last (FORMAT.md,
       "Commit protocol").
    4. `save` returns the SnapshotInfo once the manifest is durable. `save_async`
       returned a PendingSnapshot after step 1; its `result()` gives the info or raises
       the write's error, and the caller may mutate its tensors at once.
    5. `prune`, queued like a save and run on the commit thread (`pruning`), verifies the
       newest snapshot, then deletes under the exclusive READERS lock.
    6. Reads (`list`, `manifests`, `latest_verified`, `load_latest`, `load`, `load_into`,
       `verify`) run on the caller's thread, their chunk reads on the worker pool, under
       the shared READERS lock; they never wait for the commit thread.
    7. `close`, on the caller's thread, waits for queued saves and prunes, stops both
       thread pools and releases the writer lock; every later call but `list` and
       `manifests` raises ClosedError.

    `failpoint` is called with a point's name at each step of the commit protocol and of
    prune, on whichever thread reaches it: ``snapshot.before_chunk_fsync``,
    ``snapshot.before_chunk_rename`` (every new loose chunk), ``snapshot.before_pack_fsync``,
    ``snapshot.before_pack_rename`` (a save's pack), ``snapshot.before_manifest_fsync``,
    ``snapshot.before_manifest_rename``, ``snapshot.after_manifest_rename`` (before
    manifests/ is fsynced), ``snapshot.prune.before_delete`` (retention decided, nothing
    deleted) and ``snapshot.prune.before_sweep`` (old manifests deleted, chunks not yet
    swept). It may kill the process or raise (a raise fails that save or prune like an
    I/O error would). replay's Journal passes `replay.failpoints.hit`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        keep_last: int = 3,
        keep_every: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        keep_oldest: bool = False,
        level: int = 1,
        workers: int | None = None,
        failpoint: Callable[[str], None] | None = None,
        compression: str = "none",
        packs: bool = True,
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
        self.keep_oldest = keep_oldest
        self.chunk_size = chunk_size
        self.workers = workers or max(4, 2 * (os.cpu_count() or 2))
        self._layout = StoreLayout(self.path)
        self._failpoint = failpoint or _no_failpoint
        self._known = KnownFiles()
        self._pool = WorkerPool(self.workers)
        codec = ChunkCodec(level, compression)
        self._reader = StoreReader(self._layout, codec, self._pool, self._known)
        self._chunks = ChunkWriter(self._layout, codec, self._pool, self._known, self._reader, chunk_size,
                                   self._failpoint, packs)
        self._stager = Stager()
        self._saving = SaveQueue(self.path, self._layout, self._chunks, self._stager)

    # -- writing ---------------------------------------------------------------------

    def save(self, state: Any, *, index: int, term: int, meta: Any = None) -> SnapshotInfo:
        """Snapshot `state` at (index, term) and return once it is durable.

        `state` is a tensor, a msgpack scalar, or mappings/lists/tuples of them (FORMAT.md,
        "Tree nodes"); TypeError names the key path of anything else, before anything is
        written. `meta` is any msgpack value, returned in SnapshotInfo.meta. The state must
        not be mutated until this returns. Re-saving an existing (index, term) replaces it.
        """
        return self._saving.save(state, index, term, meta)

    def save_async(self, state: Any, *, index: int, term: int, meta: Any = None) -> PendingSnapshot:
        """Like `save`, but return as soon as the state is staged into host buffers: the
        caller may mutate its tensors at once, and no later change reaches the snapshot.
        Bad input still raises here; write errors are raised by `result()`.

        GPU tensors are copied on a side stream that first waits for the caller's current
        stream on their device, and that stream then waits for the copies: so the snapshot
        holds every update queued on that stream before the call and none queued after.
        Updates queued on other streams are not waited for; synchronize them first."""
        return self._saving.save_async(state, index, term, meta)

    # -- reading ---------------------------------------------------------------------

    def list(self) -> list[SnapshotInfo]:
        """Every committed snapshot whose manifest reads back, oldest to newest by (index,
        term). Chunks are not checked (use `verify`); a manifest that fails its own
        checksum or schema is left out with a logged warning (`manifests` lists it with
        the reason). [] for a missing store. Works after `close`."""
        infos = []
        for entry in self.manifests():
            if entry.info is None:
                log.warning("manifest of snapshot %s is corrupt: %s", entry.name, entry.unreadable)
            else:
                infos.append(entry.info)
        return infos

    def manifests(self) -> list[ManifestEntry]:
        """Every committed manifest name, oldest to newest by (index, term), each with its
        info or, when it does not read back, why (`list` leaves those out). Chunks are not
        checked (use `verify`). Names that are not manifest names (temp files, strangers)
        are not listed; a manifest pruned while this runs is left out. [] for a missing
        store. Taken under the shared reader lock, so a prune cannot delete in between.
        Like `list`, it reads the directory only and works after `close`."""
        entries = []
        with self._reader.shared_lock():
            for name in self._reader.manifest_names():
                index, term = parse_manifest_name(name)
                try:
                    info, why = SnapshotInfo.from_manifest(self._reader.read_manifest(name)), None
                except SnapshotNotFoundError:
                    continue
                except CorruptSnapshotError as e:
                    info, why = None, e.reason
                entries.append(ManifestEntry(name, index, term, info, why))
        return entries

    def latest_verified(self) -> tuple[SnapshotInfo | None, list[VerifyReport]]:
        """(newest snapshot whose manifest and every chunk verify, reports of the newer
        damaged snapshots skipped on the way, newest first); (None, reports) when none
        verifies, (None, []) for an empty or missing store. Every chunk of the returned
        snapshot is read and hash-checked but nothing is loaded: to load it in the same
        pass, use `load_latest`."""
        self._check_open()
        return self._reader.newest_verified()

    def load_latest(
        self,
        map_location: str | torch.device = "cpu",
        *,
        accept: Accept | None = None,
        like: Any = None,
        strict: bool = True,
    ) -> tuple[SnapshotInfo | None, Any, list[VerifyReport]]:
        """(info, state, skipped): `load` of the newest snapshot that loads, reading each
        chunk once; (None, None, skipped) when none loads (or the store is empty).

        Skipped snapshots (newest first) are reported as VerifyReports with `ok` false:
        damaged ones, and those `accept` refuses. `accept(info)` is called for each
        candidate, newest first, once its manifest has been read and before any chunk is:
        a returned string is the reason to skip it (the report's damage, on the
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
        manifest, tensors, skipped = self._reader.load_newest(accept, like, strict)
        if manifest is None:
            return None, None, skipped
        return SnapshotInfo.from_manifest(manifest), _build(manifest.tree, tensors, map_location), skipped

    def load(self, info: SnapshotInfo | str, map_location: str | torch.device = "cpu", *, like: Any = None,
             strict: bool = True, only: Iterable[str] | str | None = None) -> Any:
        """The saved state with fresh tensors on `map_location` (a device), containers and
        values as FORMAT.md's tree table says. Every chunk read is hash-checked before any
        of it is returned. Raises SnapshotNotFoundError or CorruptSnapshotError. With
        `like`, the tensor layout is checked against it first, as in `load_latest`
        (`strict` as there; StateMismatchError, nothing allocated).

        `only` (selectors, `selection`: top-level component names such as ``"model"`` or
        dotted prefixes such as ``"model.encoder"``; None for everything): the state holds
        only the chosen subtrees under their own key paths, and only the chunks their
        tensors use are read and decompressed (small tensors of neighbouring components
        may share a pack, which is then read too), so damage elsewhere in the snapshot
        does not stop it. ComponentNotFoundError names a selector that matches nothing;
        `like` is then compared only inside the selection.
        """
        self._check_open()
        with self._reader.shared_lock():
            manifest = self._reader.read_manifest(_name_of(info))
            chosen = _selection(manifest, only)
            if like is not None:
                inplace.check_layout(chosen.node, manifest.tensors, like, strict=strict,
                                     within=chosen.covers if only is not None else None)
            tensors = self._reader.read_tensors(manifest, chosen.tensors if only is not None else None)
        return _build(chosen.node, tensors, map_location)

    def load_into(self, info: SnapshotInfo | str, live: Any, *, strict: bool = True,
                  only: Iterable[str] | str | None = None) -> SnapshotInfo:
        """Restore the snapshot into `live` in place, by the rules in `inplace` (tensors
        copied with copy_, so references stay valid; plain values assigned). Everything is
        checked first: on StateMismatchError (naming the key path) or CorruptSnapshotError
        the live state is untouched. Returns the snapshot's info.

        Which part is restored, edge cases first:

        - `only` (selectors, as in `load`): exactly the chosen subtrees, each of which the
          live state must be able to take; everything else in `live` is untouched.
          ComponentNotFoundError names a selector the snapshot lacks.
        - strict=False (and no `only`): the top-level components that both the snapshot
          and the live mapping have; components on one side only are left alone (not
          read, not touched). Inside a restored component the rules stay strict: a
          dtype or shape difference is StateMismatchError naming the path. No component
          in common is StateMismatchError too.
        - strict=True (the default): the whole snapshot; the live state must match it.

        Only the chunks of the restored tensors are read and decompressed. When every
        one of them is a chunk this store wrote or hash-checked before (a reload in the
        same process), they decode straight into the contiguous live tensors (a GPU's
        through a pinned buffer per worker), with no fresh host memory and no second
        copy (`StoreReader.read_tensors`); each is still hash-checked, but a chunk
        damaged on disk since that earlier check is then caught after the tensors
        decoded before it were overwritten.

        GPU tensors are written on the caller's current stream for their device, so the
        copies are ordered after the work already queued there, and are complete when
        this returns (called inside ``torch.cuda.stream(s)``, that stream is s).
        """
        self._check_open()
        with self._reader.shared_lock():
            manifest = self._reader.read_manifest(_name_of(info))
            chosen = _selection(manifest, only, live=None if strict else live)
            plan = inplace.plan_restore(chosen.node, live, manifest.tensors, chosen.partial)
            tensors = self._reader.read_tensors(manifest, chosen.tensors, into=plan.targets())
        plan.apply(tensors.__getitem__)
        return SnapshotInfo.from_manifest(manifest)

    def verify(self, info: SnapshotInfo | str) -> VerifyReport:
        """Read and check the manifest and every chunk of a snapshot (hash after bounded
        decompression). Never raises on damage or absence: the report says what is wrong
        (a name that is not a manifest name, a missing manifest, each damaged chunk)."""
        self._check_open()
        name = info.manifest_id if isinstance(info, SnapshotInfo) else str(info)
        if parse_manifest_name(name) is None:
            return VerifyReport.of_manifest(name, "not a manifest name")
        try:
            return self._reader.verify(name)[0]
        except SnapshotNotFoundError:
            return VerifyReport.of_manifest(name, "manifest is missing")

    # -- retention -------------------------------------------------------------------

    def prune(self, *, protect: Iterable[int] = ()) -> PruneReport:
        """Apply retention (snapshots at the indexes in `protect` are kept too): find the newest snapshot that verifies, delete the snapshots
        `retention.to_delete` allows (never that one or anything newer), then delete every
        chunk no remaining manifest names and every temp file a crashed writer left.

        Runs on the commit thread, so it waits for saves in flight and never sweeps their
        chunks. The verification reads every chunk of the newest snapshot back (damage
        after a write is what it is for); deletion waits for readers in other processes to
        finish their current load or verify."""
        self._check_open()
        self._saving.ensure_writer()
        keep = Retention(self.keep_last, self.keep_every, self.keep_oldest, frozenset(protect))
        return self._saving.serially(prune, self._reader, self._known, keep, self._failpoint).result()

    def discard_after(self, index: int) -> list[str]:
        """Delete every snapshot whose index is greater than `index`; return their manifest ids.

        [] when there are none. For a log rolled back below them (a multi-rank journal's
        recovery truncates each rank to the common cut): such a snapshot holds effects of
        entries that no longer exist. The manifests are removed durably; their chunks go
        at the next `prune`. Waits for saves in flight and for readers in other processes."""
        self._check_open()
        self._saving.ensure_writer()
        return self._saving.serially(discard_after, self._reader, index).result()

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Wait for saves in flight, stop the threads, release the writer lock. Idempotent;
        every later call raises ClosedError."""
        if not self._saving.stop():
            return
        self._pool.shutdown()
        self._stager.clear()
        self._chunks.staging.release()  # a large save's direct-write windows (48 MiB)
        self._saving.release_writer()

    def __enter__(self) -> "SnapshotStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        self._saving.check_open()

    def __repr__(self) -> str:
        return (f"SnapshotStore({self.path!r}, keep_last={self.keep_last}, keep_every={self.keep_every}, "
                f"keep_oldest={self.keep_oldest})")


def _no_failpoint(name: str) -> None:
    return None


def _name_of(info: SnapshotInfo | str) -> str:
    name = info.manifest_id if isinstance(info, SnapshotInfo) else str(info)
    if parse_manifest_name(name) is None:
        raise SnapshotNotFoundError(f"{name!r} is not a snapshot id (expected '<index>-<term>')")
    return name


def _selection(manifest: Manifest, only, live: Any = None) -> selection.Selected:
    """What a load reads: the `only` selectors' subtrees, else (given a live state, for a
    non-strict load_into) the top-level components both have, else everything."""
    if only is not None:
        return selection.select(manifest.tree, only)
    if live is not None:
        return selection.common(manifest.tree, live)
    return selection.everything(manifest.tree, len(manifest.tensors))


def _build(node: list, tensors: list[torch.Tensor | None], map_location) -> Any:
    device = torch.device(map_location)
    if device.type != "cpu":
        tensors = [t.to(device) if t is not None else None for t in tensors]
    return tree.build(node, tensors.__getitem__)
