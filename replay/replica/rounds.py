"""Shipping rounds: what one round of a shipper uploads, in order (FORMAT.md beside this file).

A round ships the snapshot manifests the local store committed (their chunks first, then
the manifest, create-only), then the settled log range as sealed segments continuing the
replica's chain, merging the chain's newest small segments as it goes (merging.py). The
local log is read only through its public read API (`checksum_at`, `segment_ranges`,
`sealed_range`) and the snapshot store only as files (snapfiles.LocalStore). Head writes,
the claim and garbage collection are the shipper's other parts (claim.py, collecting.py).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from eventlog import CompactedError, CorruptEntryError, SegmentDamage

from .. import layout
from .chain import ENVIRONMENT_KEY, SEGMENTS, SegmentKey, chunk_key, manifest_key, parse_segment_key, walk_back
from .errors import ObjectNotFoundError, ReplicaError
from .head import Head
from .merging import merge_tail
from .retention import CHUNKS, Plan
from .snapfiles import LocalFileError, LocalStore, read_small_file
from .prepared import Prepared
from .sources import Verified, plan
from .status import Progress
from .uploads import Uploads

HEAD_EVERY = 16  # segments uploaded between two head writes while catching up a backlog
MAX_ENVIRONMENT_BYTES = 1 << 20


class Shipping:
    """The shipping state of one shipper, and the steps of a round. Shipper's thread only.

    State: `chain` (the current chain's segments on the replica, oldest first), `end`
    ((index, checksum) where the chain ends; None: no chain yet), and what is known to be
    on the replica (chunk ids; manifest name -> (index, log checksum)) or never to ship
    (local manifests damaged or off the log's history). Uploads are counted in `progress`;
    `note(name, index, log_checksum, chunk_ids)` is told of every manifest on the replica."""

    def __init__(self, store, root: Path, log, progress: Progress, note: Callable):
        self._store = store
        self._root = Path(root)
        self._log = log
        self._local = LocalStore(layout.snapshots_dir(self._root))
        self._progress = progress
        self._note = note
        self.chain: list[SegmentKey] = []
        self.end: tuple[int, int] | None = None
        self._chunks: set[str] = set()
        self._manifests: dict[str, tuple[int, int]] = {}
        self._refused: set[str] = set()
        self._sizes: dict[str, int] = {}  # segment key -> bytes, of the segments this shipper stored
        self._verified = Verified()

    # ------------------------------------------------------------------ after the claim

    def adopt(self, head: Head) -> bool:
        """Take up the chain head.json names, from the segment keys on the replica; whether
        the local log agrees with its end (then the replica index is head.index)."""
        segments = [s for s in map(parse_segment_key, self._store.list(SEGMENTS)) if s is not None]
        self.chain = walk_back(segments, head.index, head.checksum)
        self.end = (head.index, head.checksum) if self.chain else None
        return bool(self.chain) and self.agrees(*self.end)

    def load_environment(self) -> None:
        """Upload DIR/environment.json (create-only) when it is a regular file of at most 1 MiB."""
        data = read_small_file(layout.environment_file(self._root), MAX_ENVIRONMENT_BYTES)
        if data is not None:
            self.put(ENVIRONMENT_KEY, data)

    def list_chunks(self) -> None:
        """Learn which chunks the replica holds (one listing)."""
        self._chunks = {k[len(CHUNKS):] for k in self._store.list(CHUNKS)}

    # ------------------------------------------------------------------ the log

    def agrees(self, index: int, checksum: int) -> bool:
        """Whether the local log has `checksum` at `index` (False when it cannot say)."""
        return self.local_checksum(index) == checksum

    def local_checksum(self, index: int) -> int | None:
        """The local log's checksum at `index`, None when it cannot say (compacted, past its end).
        Just before a local archive file it is that file's seed, from its header (sources.py)."""
        try:
            if index > self._log.last_index:
                return None
            if index < self._log.live_first_index - 1:
                known = self._verified.archive_checksum(self._log, index)
                if known is not None:
                    return known
            return self._log.checksum_at(index)
        except (CompactedError, IndexError, CorruptEntryError, SegmentDamage):
            return None

    def check_chain(self) -> None:
        """Re-ship from the last agreeing segment boundary when the local log was truncated."""
        if self.end is None or self.agrees(*self.end):
            return
        while self.chain:
            seg = self.chain.pop()
            if self.agrees(seg.first - 1, seg.prev):
                self.end = (seg.first - 1, seg.prev)
                if not self.chain and not self._on_path_manifest(*self.end):
                    break
                return
        self.chain, self.end = [], None  # no agreeing boundary: a new chain

    def _on_path_manifest(self, index: int, checksum: int) -> bool:
        return any(v == (index, checksum) for v in self._manifests.values())

    def start_chain(self, settled: int) -> None:
        """Begin a chain at the oldest uploaded manifest on the local log's history."""
        first = self._log.first_index
        for index, checksum in sorted(set(self._manifests.values())):
            if first - 1 <= index <= settled and self.agrees(index, checksum):
                self.chain, self.end = [], (index, checksum)
                return

    def ship_segments(self, settled: int) -> int:
        """Up to HEAD_EVERY segments of entries after the chain's end, through `settled`; how many
        were stored (the chain and `end` advance over them, a contiguous prefix, in order).

        Each segment's bytes (an archive file as it is, or sealed from the log: sources.py)
        are verified once (`segment_bounds`, remembered by `Verified`: the framing, the
        checksum, every entry's chain) and checked against both neighbours before they
        count: they chain from the segment before, and what follows chains from them (the
        next segment's verified seed, or the local log's checksum at their last entry).
        A segment is uploaded as soon as its own check and its link to the one before pass
        (its key names its verified range and end: the object is what its key says), and
        counts (joins the chain a head may name) once its upload and every earlier one
        succeeded and what follows it is known to chain from it; one that turns out not to
        be followed (an archive file of another history) stays an object nothing names,
        which retention removes. Up to IN_FLIGHT uploads run while the next segments are
        read and verified on worker threads (uploads.py, prepared.py). A failed upload
        raises once the ones in flight have ended; the chain then ends before it."""
        expected = self.end[1]
        count, followed, done = [0], [0], []  # segments counted; submitted ones known followed; uploads done

        def count_ready() -> None:
            while count[0] < min(followed[0], len(done)):
                seg, size, created = done[count[0]]
                self.chain.append(seg)
                self.end = (seg.last, seg.last_checksum)
                self._sizes[seg.key] = size
                if created:
                    self._progress.uploaded(size)
                count[0] += 1

        def stored(seg: SegmentKey, size: int, created: bool) -> None:
            done.append((seg, size, created))
            count_ready()

        submitted, waiting = 0, None  # waiting: the plan's last piece, shipped only when followed
        # One piece more than is shipped: the last one shipped is checked against it.
        pieces = plan(self._log, self.end[0] + 1, settled, HEAD_EVERY + 1)
        with Uploads(self._store) as uploads, Prepared(self._log, self._verified, pieces) as prepared:
            for position, (piece, data, (got_first, got_last, prev, last_checksum)) in enumerate(prepared):
                if (got_first, got_last) != (piece.first, piece.last):
                    raise ReplicaError(f"the segment of entries {piece.first}..{piece.last} holds entries "
                                       f"{got_first}..{got_last}")
                if prev != expected:
                    break  # the log changed under this round (a truncation), or the one before is not of
                    # this history: it stays uncounted, and the next round re-checks
                followed[0] = submitted  # every segment submitted so far is followed by this one
                count_ready()
                seg = SegmentKey(piece.first, piece.last, prev, last_checksum)
                expected = last_checksum
                if position == len(pieces) - 1:
                    waiting = (seg, data)
                    break
                uploads.submit(seg.key, data, partial(stored, seg, len(data)))
                submitted += 1
            if waiting is not None and self._followed(waiting[0]):
                uploads.submit(waiting[0].key, waiting[1], partial(stored, waiting[0], len(waiting[1])))
                submitted += 1
                followed[0] = submitted
                count_ready()
        return count[0]

    def _followed(self, seg: SegmentKey) -> bool:
        """Whether the local log's checksum at `seg.last` is `seg.last_checksum` (what follows it
        chains from it), read where it is cheap: the live log's boundary or an entry in LMDB.
        An archive file's end is left to the next call (False), whose first piece is the next
        file, checked then against this one's end without decompressing this one again."""
        if seg.last < self._log.live_first_index - 1 and seg.last < self._log.last_index:
            return False
        return self.agrees(seg.last, seg.last_checksum)

    def merge(self) -> None:
        """Merge the chain's newest segments while eventlog's merge rule says so (merging.py)."""
        merge_tail(self._log, self.chain, self.put, self._sizes)

    # ------------------------------------------------------------------ snapshots

    def local_manifests(self) -> set[str]:
        """The manifest names the local store retains now."""
        return set(self._local.manifest_names())

    def ship_manifests(self, settled: int) -> None:
        """Every local manifest at or below `settled` on the log's history, its chunks first.

        Two batches of pipelined uploads (uploads.py): the chunks of every such manifest,
        then, once every one of them is stored, the manifests whose chunks all are: a
        manifest object never exists on the replica before its chunks (FORMAT.md), and a
        round with several new snapshots waits for two batches, not two per snapshot."""
        ready = []
        for name in self._local.manifest_names():
            if name in self._manifests or name in self._refused:
                continue
            try:
                mf = self._local.read_manifest(name)
            except FileNotFoundError:
                continue  # pruned meanwhile
            except LocalFileError as exc:
                self._refused.add(name)
                self._progress.last_error = str(exc)
                continue
            if mf.log_checksum is None or mf.index != mf.log_index:
                self._refused.add(name)  # not a journal snapshot a restore could check against a log
                continue
            if mf.index > settled:
                continue  # its entries are not settled yet: next round
            if not self.agrees(mf.index, mf.log_checksum):
                self._refused.add(name)  # of another history, or too old to start a chain from
                continue
            ready.append(mf)
        if not ready:
            return
        with Uploads(self._store) as uploads:
            queued: set[str] = set()
            ready = [mf for mf in ready if self._ship_chunks(uploads, mf, queued)]
        with Uploads(self._store) as uploads:
            for mf in ready:
                uploads.submit(manifest_key(mf.name), mf.data, partial(self._manifest_stored, mf))

    def _ship_chunks(self, uploads: Uploads, mf, queued: set[str]) -> bool:
        """Submit to `uploads` every chunk of `mf` not on the replica nor in `queued` (added to
        it); False when one is gone or damaged locally (the manifest is not shipped). A chunk
        counts as on the replica (skipped by later rounds) once its upload is done."""

        def stored(cid: str, size: int, created: bool) -> None:
            self._chunks.add(cid)
            if created:
                self._progress.uploaded(size)

        for ref in mf.manifest.chunks:
            if ref.id in self._chunks or ref.id in queued:
                continue
            try:
                data = self._local.read_chunk(ref.id, ref.raw_len, ref.stored_len)
            except FileNotFoundError:
                if not self._local.has_manifest(mf.name):
                    return False  # pruned while read: nothing to ship
                self._refused.add(mf.name)
                self._progress.last_error = f"local snapshot {mf.name}: chunk {ref.id} is missing"
                return False
            except LocalFileError as exc:
                self._refused.add(mf.name)
                self._progress.last_error = f"local snapshot {mf.name}: {exc}"
                return False
            queued.add(ref.id)
            uploads.submit(chunk_key(ref.id), data, partial(stored, ref.id, len(data)))
        return True

    def _manifest_stored(self, mf, created: bool) -> None:
        """After the create-only put of `mf`: recorded as on the replica, unless the key held
        other bytes (another history's snapshot under the same name: refused)."""
        key = manifest_key(mf.name)
        if created:
            self._progress.uploaded(len(mf.data))
        else:
            try:
                existing, _ = self._store.get(key, len(mf.data))
            except (ObjectNotFoundError, ReplicaError):
                existing = None
            if existing != mf.data:
                self._refused.add(mf.name)  # another history's snapshot under the same name
                self._progress.last_error = f"replica {key} holds other bytes than the local manifest"
                return
        self._manifests[mf.name] = (mf.index, mf.log_checksum)
        self._note(mf.name, mf.index, mf.log_checksum, (ref.id for ref in mf.manifest.chunks))

    def put(self, key: str, data: bytes) -> bool:
        """Upload `data` as `key` unless the key exists (create-only); whether it was created."""
        created = self._store.put_if_absent(key, data)
        if created:
            self._progress.uploaded(len(data))
        return created

    # ------------------------------------------------------------------ garbage collection

    def forget(self, plan: Plan, listed_chunks: set[str]) -> None:
        """Before a sweep deletes: drop what this shipper believed the replica holds and the
        sweep removes, so nothing is skipped as "already there" once it is gone."""
        self._chunks = listed_chunks - {key[len(CHUNKS):] for key in plan.chunks}
        for key in plan.manifests:
            name = key.split("/", 1)[1]
            self._manifests.pop(name, None)
            self._refused.discard(name)  # another history's manifest under a local name: ship ours again
        for name in plan.incomplete:
            self._manifests.pop(name, None)  # a kept manifest missing a chunk: its chunks ship again
        self.chain = list(plan.kept_segments)  # exactly the head's path from the floor
