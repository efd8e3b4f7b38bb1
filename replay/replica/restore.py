"""restore: a replica -> a new journal directory (FORMAT.md beside this file, "Restore").

The head's history is found by walking segment keys backwards from head.json; the newest
snapshot on it whose every object checks out is restored with the segments after it.
Everything is built in a staging directory beside the target and renamed into place at
the end, so an interrupted restore leaves no directory that opens as a journal.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from eventlog import (SEGMENT_HEADER_SIZE, SegmentDamage, SegmentRejectedError, check_segment_header,
                      create_from_segment_files, max_segment_size)
from snapshots import MAX_MANIFEST_BYTES, CorruptFileError, StoreImport

from .. import layout
from .chain import (ENVIRONMENT_KEY, SEGMENTS, MANIFESTS, chunk_key, parse_manifest_key, parse_segment_key,
                    walk_back)
from .errors import ObjectNotFoundError, ObjectTooLargeError, ReplicaDamageError, RestoreTargetError
from .head import HEAD_KEY, Record, read_head, write_record
from .snapfiles import decode_manifest, fsync_dir
from ..layout import SUPERVISOR_DIR

MAX_ENVIRONMENT_BYTES = 1 << 20
_FETCH = ".fetch"  # segment objects streamed to disk under the staging directory, mapped from there
_PIECE = 1 << 20
_LOG_STAGING = f".{layout.LOG_DIR}"  # the log is built here, then renamed to DIR/log with the rest


@dataclass
class RestoreReport:
    """What `restore` did: the head it restored (index, term), the snapshot used (its
    manifest name and index), the segments written into the log, the bytes read from the
    replica, and why newer snapshots were skipped (one line each, naming the object)."""

    url: str
    head_index: int
    head_term: int
    snapshot: str
    snapshot_index: int
    segments: int
    bytes: int
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        skipped = f", skipped {len(self.skipped)} snapshot(s)" if self.skipped else ""
        return (f"restored {self.url} at index {self.head_index} (term {self.head_term}) from snapshot "
                f"{self.snapshot} and {self.segments} segment(s), {self.bytes} bytes read{skipped}")


def restore(url_or_store, directory, options: dict | None = None) -> RestoreReport:
    """Restore the replica at `url_or_store` (a URL for `open_store(url, options)`, or an open
    ObjectStore, left open) into the journal directory `directory`; a RestoreReport.

    Edge cases first, checked before anything is read from the replica:
    RestoreTargetError (a FileExistsError) naming the path and the remedy when
    `directory` is the filesystem root, a file or symlink, or a non-empty directory (one
    holding only ``replay run``'s supervisor/ records counts as empty: they move into the
    restored journal), or
    when its staging name ``.<name>.restoring`` beside it is a file or a symlink (an
    interrupted restore leaves only a directory there, removed and redone; anything else
    is left alone). The current directory (restore renames its work into place, which it
    cannot do there): RestoreTargetError right after head.json is read, before any other
    object. A URL is opened read-only: a missing directory replica is
    ReplicaUnavailableError naming it, and nothing is created. No head.json: ObjectNotFoundError (nothing
    was ever shipped). A head.json that is not one, a path segment that is missing or
    fails its checks: ReplicaDamageError naming the key (restoring less would lose
    acknowledged entries). A snapshot whose manifest or chunk is missing, damaged or too
    large is skipped for the next older one (`skipped`); none left: ReplicaDamageError
    naming "manifests/". ReplicaUnavailableError when the store cannot be reached.
    On success `directory` holds snapshots/ (the one snapshot), log/ (the segments from
    the snapshot's to head, term = head.term), environment.json (when the replica has
    one) and replica.json (the head's etag: the journal's shipper claims the replica
    from that exact head, FORMAT.md "Fencing"); `Journal.open` there recovers the state
    at head.index. A crash during restore leaves `directory` as it was (the work is in a
    hidden sibling directory, replaced by the next restore).
    """
    started = time.monotonic()
    target, staging, into_cwd = _check_target(directory)
    if isinstance(url_or_store, str):
        from .objects import open_store
        store, owned = open_store(url_or_store, options, readonly=True), True
    else:
        store, owned = url_or_store, False
    try:
        if staging.exists():
            shutil.rmtree(staging)  # an interrupted restore's work (checked: a plain directory)
        staging.mkdir(parents=True)
        try:
            report = _Restore(store, staging, refuse=into_cwd).run()
            _finish(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        if owned:
            store.close()
    report.seconds = time.monotonic() - started
    return report


def staging_dir(target: Path) -> Path:
    """Where a restore into `target` (absolute) builds its work: ``.<name>.restoring`` beside it."""
    return target.parent / f".{target.name}.restoring"


def _check_target(directory) -> tuple[Path, Path, RestoreTargetError | None]:
    """(target, staging, into_cwd): both paths absolute, once both are usable; an error naming the
    path and the remedy otherwise. Checked before the replica is opened, so a bad target costs
    no download. `into_cwd` is the error for a target that is the current directory, raised
    once head.json shows there is something to restore (a new replica restores nothing, and
    ``Journal.open(".", replica=...)`` then starts a new journal there as before)."""
    given = str(directory)
    target = Path(os.path.abspath(directory))
    if target.parent == target:
        raise RestoreTargetError(target, f"cannot restore into {given!r}: it is the filesystem root; name a new "
                                         "directory")
    try:
        cwd = Path(os.getcwd())
    except FileNotFoundError:
        cwd = None
    into_cwd = None
    if target == cwd:
        into_cwd = RestoreTargetError(target, f"cannot restore into {given!r} ({target}), the current "
                                              "directory: restore builds the journal beside it and renames it into "
                                              f"place; name a new directory instead (e.g. {target / 'journal'}), or "
                                              f"run from {target.parent} and name {target.name}")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise RestoreTargetError(target, f"{target} exists and is not a directory: restore makes a new journal "
                                         "directory (name a missing or empty one)")
    # `replay run DIR` creates DIR/supervisor/ before its job's Journal.open restores DIR on a
    # new machine: its records alone do not make a journal, and they move into the restore.
    if target.is_dir() and any(p.name != SUPERVISOR_DIR for p in target.iterdir()):
        raise RestoreTargetError(target, f"{target} is not empty: restore makes a new journal directory (it never "
                                         "overwrites a journal; name a missing or empty one)")
    staging = staging_dir(target)
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        what = "a symbolic link" if staging.is_symlink() else "not a directory"
        raise RestoreTargetError(staging, f"{staging} is {what}: restore keeps its work in progress under that "
                                          "name, and an interrupted restore leaves only a directory there, so this "
                                          f"is not one of ours and is left alone; remove it (rm {staging}) or "
                                          "restore into another directory")
    return target, staging, into_cwd


def _read_exactly(reader, n: int) -> bytes:
    """The first `n` bytes of `reader` (fewer only when the object is shorter)."""
    parts, total = [], 0
    while total < n:
        part = reader.read(n - total)
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def _stream_to(path: Path, head: bytes, reader) -> int:
    """Write `head`, then the rest of `reader`, to the new file `path` in 1 MiB pieces; bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        total = 0
        piece = head
        while piece:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
            total += len(piece)
            piece = reader.read(_PIECE)
    finally:
        os.close(fd)
    return total


class _Side:
    """`job(*args)` on its own thread, started at once: `wait()` for it to end, `result()` for
    its return value (re-raising what it raised)."""

    def __init__(self, job, *args):
        self._outcome: list = []
        self._thread = threading.Thread(target=self._run, args=(job, args), name="replay-restore-chunks",
                                        daemon=True)
        self._thread.start()

    def _run(self, job, args) -> None:
        try:
            self._outcome.append((True, job(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the restoring thread by result()
            self._outcome.append((False, exc))

    def wait(self) -> None:
        self._thread.join()

    def result(self):
        self.wait()
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


def _needed(path: list, index: int) -> list:
    """The path's segments a log for a snapshot at `index` needs: those holding entries after it.

    When `index` ends a segment and others follow, that segment is not needed: the next one
    chains from it (its header's prev_checksum is the checksum at `index`, checked against
    the snapshot's). At the head itself, the last segment is kept: a log needs one segment
    to carry the boundary (the checksum and term at `index`)."""
    after = [seg for seg in path if seg.last > index]
    return after or [seg for seg in path if seg.last == index][-1:]


def _finish(staging: Path, target: Path) -> None:
    fsync_dir(str(staging))
    if target.is_dir():
        if (target / SUPERVISOR_DIR).is_dir():  # replay run's records (checked: nothing else is there)
            os.rename(target / SUPERVISOR_DIR, staging / SUPERVISOR_DIR)
        target.rmdir()  # empty (checked); a rename replaces an empty directory, but say so plainly
    os.rename(staging, target)
    fsync_dir(str(target.parent))


class _Restore:
    """One restore into `staging`: see `restore`."""

    def __init__(self, store, staging: Path, refuse: Exception | None = None):
        self.store = store
        self.refuse = refuse
        self.staging = staging
        self.bytes = 0
        self.skipped: list[str] = []
        self._segments: dict[str, Path] = {}  # segment key -> its fetched file under staging/.fetch

    def run(self) -> RestoreReport:
        found = read_head(self.store)
        if found is None:
            raise ObjectNotFoundError(HEAD_KEY, self.store.url)
        if self.refuse is not None:
            raise self.refuse  # there is something to restore, and it could not be put in place
        head, etag = found
        self.term = head.term
        keys = [s for s in map(parse_segment_key, self.store.list(SEGMENTS)) if s is not None]
        path = walk_back(keys, head.index, head.checksum)
        if head.index > 0 and not path:
            raise ReplicaDamageError(HEAD_KEY, f"no segment ends at its index {head.index} with checksum "
                                               f"{head.checksum:016x}", self.store.url)
        low = path[0].first - 1 if path else head.index
        known = {head.index: head.checksum}  # checksums the path's keys state at its boundaries
        for seg in path:
            known[seg.first - 1], known[seg.last] = seg.prev, seg.last_checksum
        candidates = sorted((parsed, key) for key in self.store.list(MANIFESTS)
                            if (parsed := parse_manifest_key(key)) is not None and low <= parsed[0] <= head.index)
        for (index, _term), key in reversed(candidates):
            needed = _needed(path, index)
            restored = self._try(key, index, needed, known)
            if restored is not None:
                break
        else:
            raise ReplicaDamageError(MANIFESTS, "no snapshot on the head's history (indexes "
                                                f"{low}..{head.index}) could be restored: "
                                                + ("; ".join(self.skipped) or "there is none"), self.store.url)
        name, data, segments = restored
        writer = self._writer
        writer.commit(name, data)
        os.rename(self.staging / _LOG_STAGING, layout.log_dir(self.staging))
        count, self._segments = len(segments), {}
        shutil.rmtree(self.staging / _FETCH, ignore_errors=True)  # the log's archive holds links to what it needs
        self._environment()
        write_record(self.staging, Record(self.store.url, None, etag))
        return RestoreReport(self.store.url, head.index, head.term, name, index, count, self.bytes,
                             self.skipped)

    def _get(self, key: str, limit: int) -> bytes:
        try:
            data, _ = self.store.get(key, limit)
        except ObjectTooLargeError:
            raise ReplicaDamageError(key, f"larger than the {limit} bytes allowed", self.store.url) from None
        self.bytes += len(data)
        return data

    def _try(self, key: str, index: int, needed, known: dict):
        """(manifest name, bytes, segments) once the snapshot `key` and the log from it are staged;
        None (the reason in `skipped`) when this snapshot cannot be used."""
        name = key[len(MANIFESTS):]
        try:
            try:
                mf = decode_manifest(name, self._get(key, MAX_MANIFEST_BYTES))
            except ObjectNotFoundError:
                raise ReplicaDamageError(key, "vanished while the restore read it", self.store.url) from None
            except CorruptFileError as exc:
                raise ReplicaDamageError(key, f"not a manifest: {exc.reason}", self.store.url) from None
            if mf.log_checksum is None or mf.log_index != mf.index:
                raise ReplicaDamageError(key, "its meta records no log index and checksum to place it on the "
                                              "log's history", self.store.url)
            if index in known and known[index] != mf.log_checksum:
                self.skipped.append(f"{key}: of another history (log checksum {mf.log_checksum:016x}, the head's "
                                    f"history has {known[index]:016x} at index {index})")
                return None
            # The snapshot's chunks are fetched and staged on a second thread while the segments
            # are fetched and the log is built: separate directories, and each side mostly waits
            # on the store and on fsync, so their waits overlap. A segment's failure wins (it
            # refuses the restore); the chunk side has always ended before anything returns.
            chunks = _Side(self._stage_chunks, mf)
            try:
                segments = [self._segment(seg) for seg in needed]
                built = self._build_log(needed, segments, mf)
            except BaseException:
                chunks.wait()
                raise
            self.bytes += chunks.result()
            if not built:
                self._writer.discard()
                return None
            return name, mf.data, segments
        except ReplicaDamageError as exc:
            if exc.key.startswith(SEGMENTS):
                raise  # every older snapshot needs this segment too
            if hasattr(self, "_writer_obj"):
                self._writer.discard()
            self.skipped.append(str(exc))
            return None

    @property
    def _writer(self) -> StoreImport:
        if not hasattr(self, "_writer_obj"):
            self._writer_obj = StoreImport(layout.snapshots_dir(self.staging))
        return self._writer_obj

    def _segment(self, seg) -> Path:
        """A file under staging/.fetch holding path segment `seg` as fetched, its header checked.

        Never more is fetched than the segment's key and header declare: the object is
        refused unread when larger than the most a segment of its range may be; its first
        80 bytes are checked as a segment header for that range, declaring exactly the
        object's size, before any of the body is read; the body is streamed to disk in
        1 MiB pieces, so no copy of the object is held in memory. The full check (checksum,
        decompression bounded by the header, the entry chain) is made once, streaming, when
        the log is built from these files (`_build_log`)."""
        if seg.key not in self._segments:
            limit = max_segment_size(seg.first, seg.last)
            fetch = self.staging / _FETCH
            if not self._segments:
                fetch.mkdir(exist_ok=True)
            path = fetch / f"{seg.first:020d}-{seg.last:020d}-{seg.prev:016x}.seg"
            try:
                with self.store.open_reader(seg.key, limit) as reader:
                    head = _read_exactly(reader, SEGMENT_HEADER_SIZE)
                    try:
                        check_segment_header(head, reader.size, seg.first, seg.last)
                    except SegmentDamage as exc:
                        raise ReplicaDamageError(seg.key, f"segment of entries {seg.first}..{seg.last}: {exc}",
                                                 self.store.url) from None
                    written = _stream_to(path, head, reader)
            except ObjectNotFoundError:
                raise ReplicaDamageError(seg.key, "vanished while the restore read it", self.store.url) from None
            except ObjectTooLargeError:
                raise ReplicaDamageError(seg.key, f"larger than the {limit} bytes a segment of entries "
                                                  f"{seg.first}..{seg.last} can hold", self.store.url) from None
            if written != reader.size:
                raise ReplicaDamageError(seg.key, f"{written} bytes arrived, the store stated {reader.size}",
                                         self.store.url)
            self.bytes += written
            self._segments[seg.key] = path
        return self._segments[seg.key]

    def _stage_chunks(self, mf) -> int:
        """Fetch and stage every chunk `mf` names (on `_Side`'s thread); the bytes read.
        ReplicaDamageError naming the chunk for one missing, too large or not what its name says."""
        total = 0
        for ref in mf.manifest.chunks:
            key = chunk_key(ref.id)
            try:
                data, _ = self.store.get(key, ref.stored_len)
                total += len(data)
                self._writer.add_chunk(ref.id, data, ref.raw_len, ref.stored_len)
            except ObjectTooLargeError:
                raise ReplicaDamageError(key, f"larger than the {ref.stored_len} bytes allowed",
                                         self.store.url) from None
            except ObjectNotFoundError:
                raise ReplicaDamageError(key, f"missing (named by manifest {mf.name})", self.store.url) from None
            except CorruptFileError as exc:
                raise ReplicaDamageError(key, f"not the chunk its name says: {exc.reason}", self.store.url) from None
        return total

    def _build_log(self, needed: list, files: list[Path], mf) -> bool:
        """Build the log from the fetched segment `files` (of path segments `needed`) under
        staging/.log and check the snapshot sits on it; False (the reason in `skipped`) when not.

        Each file is checked once, streaming (`create_from_segment_files`), and must hold
        what its key says; one that does not refuses the restore (ReplicaDamageError naming
        the key). The log's checksum at the snapshot's index comes from that check."""
        log_dir = self.staging / _LOG_STAGING
        if log_dir.exists():
            shutil.rmtree(log_dir)
        try:
            created = create_from_segment_files(log_dir, files, term=self.term, checksum_at=mf.index)
        except SegmentRejectedError as exc:
            key = needed[exc.position].key if 0 <= exc.position < len(needed) else SEGMENTS
            raise ReplicaDamageError(key, str(exc), self.store.url) from None
        for seg, checked in zip(needed, created.segments):
            if (checked.first, checked.last, checked.prev_checksum, checked.last_checksum) != tuple(seg):
                raise ReplicaDamageError(seg.key, f"holds entries {checked.first}..{checked.last} chained "
                                                  f"{checked.prev_checksum:016x}..{checked.last_checksum:016x}, "
                                                  "not what its name says", self.store.url)
        if created.checksum_at != mf.log_checksum:
            self.skipped.append(f"{MANIFESTS}{mf.name}: its log checksum {mf.log_checksum:016x} is not the "
                                f"head's history's at index {mf.index}")
            shutil.rmtree(log_dir)
            return False
        return True

    def _environment(self) -> None:
        try:
            data = self._get(ENVIRONMENT_KEY, MAX_ENVIRONMENT_BYTES)
        except (ObjectNotFoundError, ReplicaDamageError):
            return  # the journal then records this machine's on its first open
        fd = os.open(layout.environment_file(self.staging), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
