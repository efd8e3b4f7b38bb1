"""Retention and garbage collection of a replica (FORMAT.md beside this file, "Retention and
garbage collection").

Mark-and-sweep, run by the shipper's own thread right after a head write of its own. The
marks: every replica manifest the local snapshot store still retains, the newest manifest
on the head's path a restore would use, `keep_extra` more of the newest on that path, every
chunk those manifests name, and the segments of the head's path from the oldest kept
manifest's index up. Everything else under `manifests/`, `segments/` and `chunks/` that a
key of ours names is deleted, in that order (manifests, segments, chunks), so that a sweep
cut short at any point leaves a replica whose every manifest still has its chunks and whose
head still has its path (the argument is in FORMAT.md).

`plan` is the pure part (listings in, what to keep and delete out); `Collector` does the I/O
around it: listing, reading the manifests it does not know (size-capped), checking that the
replica's head.json is still the one this writer wrote before and between the deletions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from snapshots import MAX_MANIFEST_BYTES, CorruptFileError

from .chain import (CHUNKS, MANIFESTS, SEGMENTS, SegmentKey, parse_manifest_key, parse_segment_key,
                    walk_back)
from .errors import ObjectNotFoundError, ObjectTooLargeError, ReplicaDamageError, ReplicaFencedError
from .head import read_head
from .snapfiles import decode_manifest

_CHUNK = re.compile(r"^chunks/([0-9a-f]{32})$")


@dataclass(frozen=True)
class ManifestInfo:
    """What the collector needs of a replica manifest: its index and log checksum (None when its
    meta records none), and the ids of the chunks it names. `damaged` when it does not decode."""

    index: int
    log_checksum: int | None
    chunks: frozenset[str]
    damaged: bool = False


@dataclass(frozen=True)
class Collected:
    """Garbage-collection counters of one shipper: `sweeps` completed, `attempts` started
    (a sweep cut short by an error or a fence counts only here), `skipped` sweeps that found
    nothing restorable to anchor on and deleted nothing, and objects deleted per prefix."""

    attempts: int = 0
    sweeps: int = 0
    skipped: int = 0
    manifests: int = 0
    segments: int = 0
    chunks: int = 0


@dataclass
class Plan:
    """The outcome of marking: the manifests kept (names), the floor (the oldest kept manifest
    index on the head's path: path segments ending below it go), the keys to delete per phase,
    the kept segments (the head's path from the floor up, oldest first), and the kept manifests
    whose chunks are not all on the replica (to be shipped again). `anchor` is None when no
    manifest on the head's path is complete: then nothing is deleted."""

    anchor: str | None
    kept: set[str] = field(default_factory=set)
    floor: int | None = None
    manifests: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)
    kept_segments: list[SegmentKey] = field(default_factory=list)
    incomplete: set[str] = field(default_factory=set)


def plan(head: tuple[int, int], manifest_keys: Iterable[str], segment_keys: Iterable[str],
         chunk_keys: Iterable[str], infos: dict[str, ManifestInfo], local: set[str], *,
         keep_extra: int = 0, checksum_at: Callable[[int], int | None] = lambda index: None) -> Plan:
    """What to keep and delete for the head at `head` = (index, checksum).

    Edge cases first: keys that are not ours (no manifest, segment or chunk key of
    FORMAT.md) are neither kept nor deleted. No segment ends at the head, or no manifest on
    its path is complete (decodes, sits on the head's history, every chunk listed): an
    anchorless plan that deletes nothing. A manifest is on the head's path when its index
    lies within the path and its log checksum equals the history's at that index, as the
    path's keys state it at their boundaries or, elsewhere, as `checksum_at` (the local
    log) says; one whose checksum nobody can state is not on it. `infos` maps manifest
    names (without the prefix) to what they hold; a name without info is treated as damaged.
    """
    index, checksum = head
    segments = {k: s for k in segment_keys if (s := parse_segment_key(k)) is not None}
    path = walk_back(list(segments.values()), index, checksum)
    chunks = {k[len(CHUNKS):] for k in chunk_keys if _CHUNK.match(k)}
    names = {k[len(MANIFESTS):]: p for k in manifest_keys if (p := parse_manifest_key(k)) is not None}
    if not path:
        return Plan(None)
    low = path[0].first - 1
    known = {index: checksum}
    for seg in path:
        known[seg.first - 1], known[seg.last] = seg.prev, seg.last_checksum

    def on_path(name: str) -> bool:
        info = infos.get(name)
        if info is None or info.damaged or info.log_checksum is None or not low <= info.index <= index:
            return False
        if info.index != names[name][0]:
            return False  # the name says another index than the manifest: not one a restore takes
        expected = known.get(info.index)
        if expected is None:
            expected = checksum_at(info.index)
        return expected is not None and expected == info.log_checksum

    candidates = sorted((p, n) for n, p in names.items() if on_path(n))  # oldest first, as restore orders them
    complete = [n for _, n in candidates if infos[n].chunks <= chunks]
    if not complete:
        return Plan(None)
    anchor = complete[-1]
    kept = {n for n in names if n in local and n in infos and not infos[n].damaged} | {anchor}
    extra = [n for n in reversed(complete) if n not in kept][:max(0, keep_extra)]
    kept.update(extra)
    floor = min(infos[n].index for _, n in candidates if n in kept)
    kept_segments = [s for s in path if s.last >= floor]  # what restore reads from the floor's manifest
    kept_keys = {s.key for s in kept_segments}
    marked = set().union(*(infos[n].chunks for n in kept))
    return Plan(anchor, kept, floor,
                manifests=sorted(MANIFESTS + n for n in names if n not in kept),
                segments=sorted(k for k in segments if k not in kept_keys),
                chunks=sorted(CHUNKS + c for c in chunks - marked),
                kept_segments=kept_segments,
                incomplete={n for n in kept if not infos[n].chunks <= chunks})


class Collector:
    """One shipper's garbage collector over `store` (see the module docstring).

    `note` records a manifest the shipper shipped or confirmed (so it is never read back);
    `sweep` runs one mark-and-sweep for the head this writer just wrote. Counters in
    `collected`. Used only from the shipper's thread."""

    def __init__(self, store, *, keep_extra: int = 0):
        if isinstance(keep_extra, bool) or not isinstance(keep_extra, int) or keep_extra < 0:
            raise ValueError(f"keep_extra must be an int >= 0, got {keep_extra!r}")
        self._store = store
        self._keep_extra = keep_extra
        self._infos: dict[str, ManifestInfo] = {}
        self._counts = Collected()

    @property
    def collected(self) -> Collected:
        return self._counts

    def note(self, name: str, index: int, log_checksum: int | None, chunks: Iterable[str]) -> None:
        self._infos[name] = ManifestInfo(index, log_checksum, frozenset(chunks))

    def sweep(self, head: tuple[int, int], etag: str, local: set[str],
              checksum_at: Callable[[int], int | None], forget: Callable[[Plan, set[str]], None]) -> Plan:
        """One mark-and-sweep for the head (index, checksum) this writer wrote with etag `etag`.

        Edge cases first: head.json no longer carrying `etag` (checked after the listing and
        again before each phase): ReplicaFencedError, and nothing more is deleted. An
        anchorless plan (nothing restorable on the head's path): nothing is deleted
        (`skipped`). `forget(plan, listed_chunks)` is called before the first deletion so
        the shipper drops what it believed was on the replica (a deleted chunk must be
        uploaded again by the next manifest naming it). Store errors propagate; a sweep cut
        short leaves only garbage (the next one finishes it: deletes are idempotent)."""
        self._bump(attempts=1)
        manifest_keys = self._store.list(MANIFESTS)
        segment_keys = self._store.list(SEGMENTS)
        chunk_keys = self._store.list(CHUNKS)
        # Everything listed existed before this check: a writer that took the replica over
        # after it uploads only objects this sweep never saw.
        self._check_owner(etag)
        self._learn(manifest_keys, head, local)
        result = plan(head, manifest_keys, segment_keys, chunk_keys, self._infos, local,
                      keep_extra=self._keep_extra, checksum_at=checksum_at)
        if result.anchor is None:
            self._bump(skipped=1, sweeps=1)
            return result
        forget(result, {k[len(CHUNKS):] for k in chunk_keys})
        for phase, keys in (("manifests", result.manifests), ("segments", result.segments),
                            ("chunks", result.chunks)):
            if keys:
                self._check_owner(etag)
            for key in keys:
                self._store.delete(key)
                if phase == "manifests":
                    self._infos.pop(key[len(MANIFESTS):], None)
                self._bump(**{phase: 1})
        self._bump(sweeps=1)
        return result

    def _bump(self, **delta) -> None:
        c = self._counts
        self._counts = Collected(**{k: getattr(c, k) + delta.get(k, 0) for k in c.__dataclass_fields__})

    def _check_owner(self, etag: str) -> None:
        current = read_head(self._store)
        if current is None or current[1] != etag:
            raise ReplicaFencedError(self._store.url, "head.json changed since this writer's last write (found "
                                                      "before a garbage collection: nothing was deleted after it)")

    def _learn(self, manifest_keys: list[str], head: tuple[int, int], local: set[str]) -> None:
        """Read (size-capped) the manifests a plan may keep and this collector does not know:
        those within the head's index range or retained locally."""
        listed = set()
        for key in manifest_keys:
            parsed = parse_manifest_key(key)
            if parsed is None:
                continue
            name = key[len(MANIFESTS):]
            listed.add(name)
            if name in self._infos or not (parsed[0] <= head[0] or name in local):
                continue
            try:
                data, _ = self._store.get(key, MAX_MANIFEST_BYTES)
                mf = decode_manifest(name, data)
            except ObjectNotFoundError:
                continue  # gone meanwhile: nothing to keep
            except (ObjectTooLargeError, CorruptFileError, ReplicaDamageError):
                self._infos[name] = ManifestInfo(parsed[0], None, frozenset(), damaged=True)
                continue
            checksum = mf.log_checksum if mf.log_index == mf.index else None
            self.note(name, mf.index, checksum, (ref.id for ref in mf.manifest.chunks))
        for name in set(self._infos) - listed:
            del self._infos[name]  # deleted by someone else, or never uploaded: read again if it appears
