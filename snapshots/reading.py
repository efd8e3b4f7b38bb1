"""Reading a store: manifests, chunks, tensors, verification and the newest good snapshot.

Everything read is checked (FORMAT.md, "What readers check" and "Hostile files"): a
manifest or chunk that fails is CorruptSnapshotError naming the snapshot and chunk,
never a traceback, a hang or an unbounded allocation. Absence is a different outcome,
SnapshotNotFoundError: the walks below skip a name that vanished, and report one that
is damaged.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import replace
from typing import Any, Callable, Iterator

import torch

from . import inplace, loading
from .chunkfile import ChunkCodec, ChunkDecodeError
from .decoded import DecodedManifests
from .errors import CorruptSnapshotError, SnapshotNotFoundError
from .known import KnownFiles
from .lastcopy import LastGoodCopies
from .locating import ChunkLocator, Copy
from .locks import FileLock
from .manifest import MAX_MANIFEST_BYTES, ChunkRef, Manifest, ManifestDecodeError, parse_manifest_name
from .paths import StoreLayout
from .pool import WorkerPool
from .reports import Damage, SnapshotInfo, VerifyReport
from .safefile import UnsafeFileError, read_regular
from .tensorbytes import DTYPES

log = logging.getLogger(__name__)

# A snapshot `accept` refuses, and why (None accepts it): see `StoreReader.load_newest`.
Accept = Callable[[SnapshotInfo], "str | None"]


class StoreReader:
    """The read side of one store directory. Callers hold `shared_lock()` around anything
    that must not see files deleted under it (prune deletes only under the exclusive lock).
    """

    def __init__(self, layout: StoreLayout, codec: ChunkCodec, pool: WorkerPool, known: KnownFiles):
        self.layout = layout
        self.locator = ChunkLocator(layout)
        self._codec = codec
        self._pool = pool
        self._known = known
        self._decoded = DecodedManifests()
        self._last_good = LastGoodCopies()

    def shared_lock(self) -> FileLock:
        """The store's READERS lock, held shared; release it (or use `with`) when done.

        Not taken (and nothing fails) when this process can neither create READERS nor
        open it (a read-only store, see locks.FileLock.acquire): a pruner then does not
        wait for this reader, and a snapshot pruned under it is SnapshotNotFoundError
        (`read_chunk`), which the walks below treat as absence and list again."""
        lock = FileLock(self.layout.readers_file)
        lock.acquire(exclusive=False)
        return lock

    # -- names -----------------------------------------------------------------------

    def manifest_names(self) -> list[str]:
        """Valid manifest names, oldest to newest by (index, term); [] for a missing store."""
        try:
            names = os.listdir(self.layout.manifests)
        except FileNotFoundError:
            return []
        keyed = [(key, n) for n in names if (key := parse_manifest_name(n)) is not None]
        return [n for _, n in sorted(keyed)]

    def newest_first(self) -> Iterator[str]:
        """Manifest names, newest first, for a caller holding the shared lock.

        A prune deletes manifests only under the exclusive lock, so none listed here can
        vanish before the caller is done with it; the listing must be taken under the
        lock, though, or a prune between the listing and the lock could delete every
        listed name while a newer one exists ("no snapshot" with snapshots present). As
        a second line, a name that vanishes anyway (a store written without the lock)
        makes the walk list again, skipping names already seen, until a listing has no
        name that vanished."""
        seen: set[str] = set()
        while True:
            fresh = [n for n in reversed(self.manifest_names()) if n not in seen]
            if not fresh:
                return
            for name in fresh:
                seen.add(name)
                yield name
            if all(os.path.lexists(self.layout.manifest_path(n)) for n in fresh):
                return

    # -- files -----------------------------------------------------------------------

    def read_manifest(self, name: str) -> Manifest:
        """The checked manifest `name`. SnapshotNotFoundError if there is none;
        CorruptSnapshotError if it is not a regular file, too large, unreadable or fails
        a check (the reason names the field). The file is read every time; bytes this
        reader decoded before are not decoded again (`decoded.DecodedManifests`)."""
        try:
            data = read_regular(self.layout.manifest_path(name), MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise SnapshotNotFoundError(f"no snapshot {name} in {self.layout.root}") from None
        except UnsafeFileError as e:
            raise CorruptSnapshotError(name, None, f"manifest file {e}") from None
        except OSError as e:
            raise CorruptSnapshotError(name, None, f"manifest file unreadable: {e}") from None
        manifest = self._decoded.get(name, data)
        if manifest is not None:
            return manifest
        try:
            manifest = Manifest.decode(name, data)
        except ManifestDecodeError as e:
            raise CorruptSnapshotError(name, None, str(e)) from None
        self._decoded.put(name, data, manifest)
        return manifest

    def read_chunk(self, name: str, ref: ChunkRef, out: "torch.Tensor | memoryview") -> None:
        """Decode chunk `ref` of snapshot `name` into `out` (ref.raw_len bytes: a flat
        uint8 tensor or a writable memoryview) and check its hash; CorruptSnapshotError
        names what failed, even a missing file.

        The chunk may be in several files (packs, and a loose file): the copy that last
        passed every check in this process is tried first, then each copy, newest pack
        first, until one passes; the error is the first failing copy's damage, or
        "missing" (naming any pack whose index does not read) when no file holds it. When
        no copy was where the cached pack indexes said, `packs/` is listed again once
        (another process's new pack, one a prune rewrote, or a damaged pack's file replaced
        since: `ChunkLocator.refresh`). `out` holds the last copy's bytes when it raises."""
        last = self._last_good.get(ref.id)
        if last is not None:
            if self._read_copy(last, ref, out) is None:
                self._known.add_good([ref.id])
                return  # the usual reload: no walk over the copies
            self._last_good.forget(ref.id)
        damage: list[str] = []
        for attempt in (0, 1):
            if attempt:
                self.locator.refresh()
            for copy in self.locator.copies(ref.id):
                why = self._read_copy(copy, ref, out)
                if why is None:
                    self._known.add_good([ref.id])
                    self._last_good.put(ref.id, copy)
                    return
                if why:
                    damage.append(why)
            if damage:
                break
        # No longer trusted: the next save rewrites it, and no load decodes it in place.
        self._known.forget(ref.id)
        self._last_good.forget(ref.id)
        if damage:
            raise CorruptSnapshotError(name, ref.id, damage[0])
        if parse_manifest_name(name) is not None and not os.path.lexists(self.layout.manifest_path(name)):
            # A prune deletes a snapshot's manifest before its chunks, so this one was
            # pruned while it was read: absence, not damage. Only a reader that could not
            # take the READERS lock (a read-only store) can see it; the walks list again.
            raise SnapshotNotFoundError(
                f"snapshot {name} in {self.layout.root} was pruned while it was being read (this reader "
                "could not take the store's READERS lock, which makes a pruner wait)")
        bad_packs = self.locator.damaged()
        also = "; damaged pack(s): " + "; ".join(f"{p}: {why}" for p, why in sorted(bad_packs.items())) if bad_packs else ""
        raise CorruptSnapshotError(name, ref.id, f"chunk file is missing{also}"[:1000])

    def _read_copy(self, copy: Copy, ref: ChunkRef, out: "torch.Tensor | memoryview") -> str | None:
        """Decode `copy` of chunk `ref` into `out`: None if it passed every check, "" if
        the file is not there, else why it is damage (for the report)."""
        if copy.stored_len is not None and copy.stored_len != ref.stored_len:
            # Another encoding of the same bytes, or a lying index: damage only if no copy reads.
            return f"holds the chunk as {copy.stored_len} bytes, the manifest says {ref.stored_len}{copy.where()}"
        try:
            digest = self._codec.read(copy.path, ref.raw_len, ref.stored_len, out, copy.offset)
        except FileNotFoundError:
            return ""
        except ChunkDecodeError as e:
            return f"{e}{copy.where()}"
        except OSError as e:
            return f"chunk file unreadable: {e}{copy.where()}"
        if digest != ref.id:
            return f"content hash mismatch{copy.where()}"
        return None

    def trusted_copy(self, cid: str, raw_len: int) -> Copy | None:
        """A copy of chunk `cid` a writer may reuse: one this process wrote or checked, or
        one that decodes to its id now (a damaged copy is passed over, and the chunk is
        written again). None when the store has no good copy. The copy's stored_len is set."""
        for copy in self.locator.copies(cid):
            size = copy.stored_len if copy.pack else _file_size(copy.path)
            if size is None:
                continue
            copy = replace(copy, stored_len=size)
            if self._known.is_good(cid):
                return copy
            scratch = self._codec.scratch(raw_len, "chunk")
            try:
                if self._codec.read(copy.path, raw_len, size, scratch, copy.offset) == cid:
                    self._known.add_good([cid])
                    return copy
            except (ChunkDecodeError, OSError):
                pass
            log.warning("chunk %s exists but is damaged%s; writing it again", cid, copy.where())
        return None

    def read_tensors(self, manifest: Manifest, only: frozenset[int] | None = None,
                     into: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor | None]:
        """Fresh CPU tensors for every tensor record (or only the positions in `only`, the
        others None), each chunk those need read once, in parallel; no other chunk is read.

        `into` (load_into's plan: tensor position -> live tensor of that record's dtype and
        shape) lets chunks decode straight into the live tensors, with no fresh memory and
        no second copy: position i's result is then the live tensor itself, already
        holding the snapshot's bytes. This happens only when every chunk the load needs is
        one this process wrote or hash-checked (`KnownFiles`), and only for live tensors
        that are contiguous, on the CPU or a CUDA GPU, and overlap no other destination;
        otherwise the result is a fresh CPU tensor as without `into`. A GPU tensor is
        filled chunk by chunk from a reusable page-locked buffer per worker thread (no
        host copy of the whole state; the threads' copies overlap), each chunk checked
        before it is copied. Every chunk's hash is still checked after decoding; what
        in-place decoding gives up is atomicity in one case only: a chunk damaged on disk
        after this process checked it is caught, but the live tensors decoded before it
        already hold the snapshot's bytes. A chunk that fails a check is forgotten as
        known, so the next load of it decodes into fresh memory and leaves the live
        state untouched on failure.

        The manifest's sizes are consistent (decode checked them), but they may still
        describe more memory than this process can have: a chunk may be referenced by
        many segments (equal content is stored once, so a 64 GiB zero tensor is a few KB
        on disk, honestly). A failed allocation (MemoryError, or torch's RuntimeError)
        is reported as CorruptSnapshotError, so `load_newest` skips the snapshot like
        damage; callers that know the state's layout pass `like` to refuse it earlier."""
        try:
            return self._read_tensors(manifest, only, into or {})
        except (MemoryError, RuntimeError) as e:
            wanted = range(len(manifest.tensors)) if only is None else only
            size = sum(manifest.tensors[i].nbytes for i in wanted)
            raise CorruptSnapshotError(
                manifest.name, None, f"cannot allocate its {size} bytes of tensors: {e}"[:500]) from None

    def _read_tensors(self, manifest: Manifest, only: frozenset[int] | None,
                      into: dict[int, torch.Tensor]) -> list[torch.Tensor | None]:
        wanted = [t for t in range(len(manifest.tensors)) if only is None or t in only]
        uses = loading.chunk_uses(manifest, wanted)
        live = inplace.decodable_into(into, wanted)
        if live and not all(self._known.is_good(manifest.chunks[c].id) for c in uses):
            live = {}  # untrusted chunks: decode into fresh memory, the live state untouched on failure
        outs: list[torch.Tensor | None] = [None] * len(manifest.tensors)
        for t in wanted:
            r = manifest.tensors[t]
            outs[t] = live[t] if t in live else torch.empty(r.shape, dtype=DTYPES[r.dtype])
        loading.fill(manifest, uses, outs, self.read_chunk, self._codec, self._pool)
        return outs

    # -- checks and walks ------------------------------------------------------------

    def verify(self, name: str) -> tuple[VerifyReport, Manifest | None]:
        """(report, the manifest if every check passed, else None) for snapshot `name`.
        Damage is reported, never raised; SnapshotNotFoundError if no manifest has that
        name (absence is not damage: the walks skip it)."""
        with self.shared_lock():
            try:
                manifest = self.read_manifest(name)
            except CorruptSnapshotError as e:
                return VerifyReport.of_manifest(name, e.reason), None

            found: dict[int, Damage] = {}  # chunk number -> its damage

            def check(k: int, _) -> None:
                ref = manifest.chunks[k]
                try:
                    self.read_chunk(name, ref, self._codec.scratch(ref.raw_len, "chunk"))
                except CorruptSnapshotError as e:
                    found[k] = Damage(ref.id, e.reason)
                except (MemoryError, RuntimeError) as e:  # a 1 GiB scratch under a memory cap
                    found[k] = Damage(ref.id, f"cannot allocate {ref.raw_len} bytes to check it: {e}")

            # As a load: a few threads, each keeping its packs open (loading.fill).
            self._pool.drain(range(len(manifest.chunks)), check, self._pool.workers, self._codec.packs_kept_open)
            damage = tuple(found[k] for k in sorted(found))
        report = VerifyReport(name, len(manifest.chunks), sum(c.raw_len for c in manifest.chunks), damage,
                              SnapshotInfo.from_manifest(manifest))
        return report, (None if damage else manifest)

    def newest_verified(self) -> tuple[SnapshotInfo | None, list[VerifyReport]]:
        """(newest snapshot whose every chunk verifies or None, reports of the newer
        damaged ones passed over, newest first)."""
        skipped = []
        with self.shared_lock():
            for name in self.newest_first():
                try:
                    report, manifest = self.verify(name)
                except SnapshotNotFoundError:
                    continue  # renamed over meanwhile: newest_first lists again
                if manifest is not None:
                    return SnapshotInfo.from_manifest(manifest), skipped
                skipped.append(report)
        return None, skipped

    def load_newest(self, accept: Accept | None, like: Any, strict: bool
                    ) -> tuple[Manifest | None, list[torch.Tensor], list[VerifyReport]]:
        """(manifest, its tensors, skipped) of the newest snapshot that `accept` takes and
        that loads; (None, [], skipped) when none does. See SnapshotStore.load_latest."""
        skipped: list[VerifyReport] = []
        with self.shared_lock():
            for name in self.newest_first():
                try:
                    manifest = self.read_manifest(name)
                    reason = accept(SnapshotInfo.from_manifest(manifest)) if accept is not None else None
                    if reason is not None:
                        skipped.append(VerifyReport.of_manifest(name, str(reason)))
                        continue
                    if like is not None:
                        inplace.check_layout(manifest.tree, manifest.tensors, like, strict=strict)
                    return manifest, self.read_tensors(manifest), skipped
                except SnapshotNotFoundError:
                    continue  # re-saved under the same name meanwhile; newest_first relists
                except CorruptSnapshotError as e:
                    skipped.append(self._damage_report(name, e))
        return None, [], skipped

    def _damage_report(self, name: str, error: CorruptSnapshotError) -> VerifyReport:
        """The full report of a snapshot that failed to load (every damaged chunk, not only
        the first one hit); the error itself where a re-check does not see it."""
        try:
            report = self.verify(name)[0]
        except SnapshotNotFoundError:
            report = None
        if report is not None and not report.ok:
            return report
        return VerifyReport(error.manifest, 0, 0, (Damage(error.chunk, error.reason),))


def _file_size(path: str) -> int | None:
    """The size of the regular file at `path`; None if there is none (a symlink or FIFO in
    its place is passed over, and the chunk written again)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
