"""fork: a new journal whose history is a source journal's entries up to an index (the operator's rollback).

`replay.truncate` cannot go back past entries sealed in the archive, and with an archive
the log is compacted through the newest snapshot, so bad data found after a snapshot
could not be rolled back. `fork(src, at=I, dest=NEWDIR)` leaves the source as it is and
builds NEWDIR beside it:

- log/: the source's retained history first_index..I, byte for byte (checksums and the
  chain unchanged): whole archive segments are copied as they are, the rest (a segment
  cut at I, entries still in LMDB) is sealed with `EventLog.sealed_range`; the new log
  is made by `eventlog.create_from_segments`, so every segment is checked and must chain
  into the one before it. The copies of whole source segments are then replaced by hard
  links to the source's files where the filesystem allows (segments are immutable), so
  a long history costs no second copy on disk. Then one ``replay.fork`` audit record at I + 1 (the source's
  path and term, I, the source's last index, the reason), in a term above every term of
  the copied history. Replay skips it, so the state at I + 1 is the state at I.
- snapshots/: every snapshot of the source at or below I (and on the retained history)
  whose manifest decodes and whose chunks check out (decoded, hashed against their
  names); chunks are hard-linked when NEWDIR is on the source's filesystem (chunk files
  are immutable: nothing ever writes one after its name exists) and copied otherwise.
  A damaged snapshot is skipped (ForkReport.skipped), as recovery would skip it.
- environment.json, so `replay stats` and the environment check see where the history
  was written. Not replica.json: a fork must never ship into, or fence, its source's
  replica; open it with its own replica URL.

Crash safety: everything is built and fsynced in a hidden staging directory beside NEWDIR
(``.NEWDIR.forking``), renamed to NEWDIR last, and the parent directory fsynced. A fork
interrupted at any point leaves no NEWDIR (or the empty directory it was given) and a
staging directory that the next fork to NEWDIR removes. The source is only read: its
log through a readonly handle, its snapshot files under the store's shared READERS
lock (so a live writer's prune cannot delete them mid-copy). Readers work beside a live
writer in this project, so forking one is allowed; the fork takes the entries committed
when it starts, and refuses to finish if the source's entry I changed meanwhile.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import snapshots
from eventlog import EventLog, create_from_segments

from . import environment, failpoints, jsonfile, layout
from .envelope import FORK_OP, wrap
from .errors import ReplayError
from .replica.snapfiles import LocalFileError, LocalStore, fsync_dir, read_small_file

logger = logging.getLogger("replay")

CARRIED_FILES = (environment.FILE,)  # journal-level files a fork keeps (never replica.json)
_MAX_CARRIED_BYTES = environment.MAX_BYTES
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)  # a link is refused: copy


class ForkError(ReplayError):
    """A fork was refused (the source is not a single-rank journal, or cannot be forked at
    that index, or changed under the fork); the message says what and why. Nothing was made."""


class ForkIndexError(ForkError, IndexError):
    """The fork index is outside what the source can be forked at; the message names it and the valid range."""


@dataclass
class ForkReport:
    """What `fork` made: `dest` holds entries first_index..at of `source` (copied from
    `source_term`'s log), `segments` archive segments, and the ``replay.fork`` record at
    `fork_index` (= at + 1) in term `term`, `segments_linked` of the segments hard-linked to
    the source's files; `snapshots` the manifest names copied (oldest first), `skipped` one
    line per snapshot at or below `at` that was not (why); `linked`/`copied` how many chunk
    files were hard-linked or copied."""

    source: Path
    dest: Path
    at: int
    first_index: int
    source_last_index: int
    source_term: int
    term: int
    fork_index: int
    segments: int = 0
    segments_linked: int = 0
    snapshots: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    linked: int = 0
    copied: int = 0

    def __str__(self) -> str:
        skipped = f", skipped {len(self.skipped)} damaged snapshot(s)" if self.skipped else ""
        return (f"forked {self.source} at {self.at} into {self.dest}: entries {self.first_index}..{self.at} "
                f"in {self.segments} segment(s) ({self.segments_linked} linked), snapshots "
                f"{', '.join(self.snapshots) or 'none'} ({self.linked} chunk(s) linked, {self.copied} copied)"
                f"{skipped}; a replay.fork record at {self.fork_index} (term {self.term})")


def fork(source: str | os.PathLike, *, at: int, dest: str | os.PathLike, reason: str = "") -> ForkReport:
    """Make `dest` a new journal whose history is `source`'s entries up to and including `at`.

    Edge cases first (each refusal writes nothing, and the source is never written):
    - `at` not an int, `reason` not a str: TypeError. `source` not a journal directory (no log/data.mdb):
      ForkError. One rank's directory of a multi-rank journal, or a multi-rank journal's
      directory: ForkError (forking a group is not supported: its ranks must stay aligned).
    - `dest` exists and is not an empty directory (a file, a symlink, anything inside):
      FileExistsError. `dest` inside `source`, `source` itself, or the current directory: ForkError.
    - `at` outside first..last, where last is the source's last committed index and first
      the oldest index with both history and a snapshot to start from (first_index, or the
      oldest snapshot at or above first_index - 1 when the log no longer starts at 1):
      ForkIndexError naming `at` and that range. No verified snapshot usable for `at`
      when the history does not start at 1: ForkError naming the skipped snapshots.
    - A damaged entry in first..at: eventlog's CorruptEntryError / SegmentRejectedError
      (damage is never copied). The source's entry `at` rewritten while forking (a live
      writer truncated it): ForkError.
    On success `Journal.open(dest, ...)` with the source's ops recovers the state at `at`
    bit for bit (the newest copied snapshot, then the copied entries, then the
    ``replay.fork`` record, which changes nothing: journal.index is at + 1) and can go on
    applying; a warning on the ``replay`` logger says what was forked. A crash at any
    point leaves no `dest` (module doc). The caller must be the only process forking
    into `dest`.
    """
    if isinstance(at, bool) or not isinstance(at, int):
        raise TypeError(f"fork: at must be an int, got {type(at).__name__}")
    if not isinstance(reason, str):
        raise TypeError(f"fork: reason must be a str, got {type(reason).__name__}")
    # Normalised ("runs/new/" and "." have a name to put the staging directory beside).
    src, target = Path(source), Path(os.path.abspath(dest))
    _check_source(src)
    _check_target(src, target)
    staging = target.parent / f".{target.name}.forking"
    if staging.is_symlink() or staging.is_file():
        staging.unlink()
    elif staging.exists():
        shutil.rmtree(staging)  # an interrupted fork's work: never renamed, never a journal
    staging.mkdir(parents=True)
    try:
        with EventLog.open(layout.log_dir(src), readonly=True) as log, _SharedReaders(layout.snapshots_dir(src)):
            report = _Fork(src, target, staging, log, at, reason).run()
            failpoints.hit("fork.before_rename")
        _finish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.warning("replay.fork %s at %d into %s (term %d; reason: %s)", src, at, target, report.term,
                   reason or "not given")
    return report


def _check_source(src: Path) -> None:
    if layout.rank_file(src).exists():
        raise ForkError(f"{src} is one rank's directory of a multi-rank journal: forking one rank alone would "
                        "misalign the ranks' logs, and forking a multi-rank journal is not supported")
    if not layout.log_data_file(src).is_file():
        if layout.ranks_on_disk(src):
            raise ForkError(f"{src} is a multi-rank journal (rank-*/ directories): forking a multi-rank "
                            "journal is not supported")
        raise ForkError(f"{src} is not a journal directory (no log/data.mdb)")


def _check_target(src: Path, target: Path) -> None:
    if target == Path.cwd():
        raise ForkError(f"{target} is the current directory: name a new directory for the fork (replacing the "
                        "directory a process runs in would leave it in a deleted one)")
    real_src, real_target = src.resolve(), target.resolve()
    if real_target == real_src or real_src in real_target.parents:
        raise ForkError(f"{target} is inside the source journal {src}: fork into a directory beside it")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(f"{target} exists and is not a directory: fork makes a new journal directory")
    if target.is_dir() and any(target.iterdir()):
        raise FileExistsError(f"{target} is not empty: fork makes a new journal directory (it never "
                              "overwrites anything)")


def _finish(staging: Path, target: Path) -> None:
    """Rename the complete, durable staging directory to `target` and make the name durable."""
    fsync_dir(str(staging))
    if target.is_dir():
        target.rmdir()  # empty (checked); a crash right here leaves no target, which is no journal either
    os.rename(staging, target)
    failpoints.hit("fork.after_rename")
    fsync_dir(str(target.parent))


class _SharedReaders:
    """The snapshot store's READERS flock, shared: a live writer's prune (which deletes under
    it, exclusive) waits until the fork has copied what it needs. Opened read-only and never
    created, so the source is not written; no READERS file (no store yet) means nothing to hold."""

    def __init__(self, store: Path):
        self._path = store / "READERS"
        self._fd: int | None = None

    def __enter__(self) -> "_SharedReaders":
        try:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return self
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


class _Fork:
    """One fork of the open readonly `log` of `src` into `staging`: see `fork`."""

    def __init__(self, src: Path, target: Path, staging: Path, log: EventLog, at: int, reason: str):
        self.src, self.target, self.staging, self.log, self.at, self.reason = src, target, staging, log, at, reason
        self.store = LocalStore(layout.snapshots_dir(src))
        self.files = snapshots.StoreFiles(layout.snapshots_dir(src))
        self.damaged: list[str] = []  # manifests at or below `at` that do not decode

    def run(self) -> ForkReport:
        log, at = self.log, self.at
        first, last, term = log.first_index, log.durable_index, log.term
        candidates = self._snapshots_on_history(first, last)
        self._check_range(first, last, candidates)
        checksum = log.checksum_at(at)
        report = ForkReport(self.src, self.target, at, first, last, term, term + 1, at + 1, skipped=self.damaged)
        report.segments = self._build_log(first, term, report)
        failpoints.hit("fork.after_log")
        self._copy_snapshots([m for m in candidates if m.index <= at], first, report)
        self._carry_files()
        failpoints.hit("fork.after_snapshots")
        if log.checksum_at(at) != checksum:
            raise ForkError(f"the source's entry {at} was rewritten while forking (a live writer truncated it); "
                            "nothing was made")
        return report

    # ------------------------------------------------------------------ the range

    def _snapshots_on_history(self, first: int, last: int) -> list:
        """Decoded manifests of the source's snapshots at first - 1..last that sit on its history
        (term and, where recorded, log checksum at their index equal the log's), oldest first."""
        out = []
        for name in self.store.manifest_names():
            try:
                mf = self.store.read_manifest(name)
            except FileNotFoundError:
                continue  # pruned since the listing
            except LocalFileError as exc:
                index = (snapshots.parse_manifest_name(name) or (-1, 0))[0]
                if first - 1 <= index <= self.at:  # one the fork would have copied: say why it did not
                    self.damaged.append(f"snapshot {name}: {exc}")
                continue
            if not first - 1 <= mf.index <= last:
                continue
            if mf.index > 0 and (self.log.term_at(mf.index) != mf.term or (
                    mf.log_checksum is not None and self.log.checksum_at(mf.index) != mf.log_checksum)):
                continue  # of another history: recovery would skip it too
            out.append(mf)
        return out

    def _check_range(self, first: int, last: int, candidates: list) -> None:
        if first == 1:
            low = 1  # the initial state is a start without any snapshot
        else:
            usable = [m.index for m in candidates if m.index >= first - 1]
            if not usable:
                raise ForkError(f"fork at {self.at}: the source's history starts at {first} and no snapshot at or "
                                f"after {first - 1} is on it, so no state can be rebuilt from it (the source "
                                "cannot recover either)")
            low = max(first, min(usable))
        if not low <= self.at <= last:
            held = f"entries {first}..{last}" if first <= last else "no entries"
            raise ForkIndexError(f"fork at {self.at}: the source holds {held}, and a fork can be taken at "
                                 f"{low}..{last} (from the oldest index a retained snapshot can rebuild, to the "
                                 "last committed entry)")

    # ------------------------------------------------------------------ the log

    def _build_log(self, first: int, term: int, report: ForkReport) -> int:
        """The staged log: history first..at, then the replay.fork record; the number of segments."""
        parts, pos = [], first
        for seg in self.log.segments():  # whole archive segments below `at`: copied as they are
            if seg.first != pos or seg.last > self.at:
                break
            parts.append(seg.path)
            pos = seg.last + 1
        sealed_dir = self.staging / ".sealing"
        sealed_dir.mkdir()
        for lo, hi in self.log.segment_ranges(pos, self.at) if pos <= self.at else []:
            path = sealed_dir / f"{lo}-{hi}"
            path.write_bytes(self.log.sealed_range(lo, hi))  # one segment in memory at a time
            parts.append(path)
        with _MappedFiles(parts) as views:
            create_from_segments(layout.log_dir(self.staging), views, term=term)
        shutil.rmtree(sealed_dir)
        archive = layout.archive_dir(self.staging)
        copied = [path for path in parts if path.parent != sealed_dir]
        # The source's segment files were written byte for byte: share them instead (immutable files).
        report.segments_linked = sum(_share(path, archive / path.name) for path in copied)
        if report.segments_linked:
            fsync_dir(str(archive))
        record = wrap(1, {"source": str(self.src.resolve()), "source_term": term, "at": self.at,
                          "source_last_index": report.source_last_index, "reason": self.reason})
        with EventLog.open(layout.log_dir(self.staging), durability="sync") as new:
            report.term = new.term
            index = new.append(FORK_OP, record)
        if index != self.at + 1:
            raise ForkError(f"the fork record landed at {index}, not {self.at + 1}")  # a bug, never expected
        return len(parts)

    # ------------------------------------------------------------------ snapshots and files

    def _copy_snapshots(self, manifests: list, first: int, report: ForkReport) -> None:
        if not manifests:
            return  # a history from 1 rebuilds from the initial state (else _check_range refused)
        into = snapshots.StoreImport(layout.snapshots_dir(self.staging))
        done: set[str] = set()
        for mf in manifests:
            refs = [ref for ref in mf.manifest.chunks if ref.id not in done]
            linked = 0
            try:
                for ref in refs:  # each checked, then linked (loose file or whole pack) or copied
                    linked += self.files.link_into(ref.id, ref.raw_len, ref.stored_len, into)
            except (FileNotFoundError, snapshots.CorruptFileError, OSError) as exc:
                into.discard()
                report.skipped.append(f"snapshot {mf.name}: chunk {ref.id}: {exc}")
                continue
            into.commit(mf.name, mf.data)  # chunks named and durable, then the manifest
            report.linked += linked
            report.copied += len(refs) - linked
            done.update(ref.id for ref in refs)
            report.snapshots.append(mf.name)
        if first > 1 and not report.snapshots:
            raise ForkError(f"fork at {self.at}: every snapshot that could rebuild it is damaged, and the "
                            f"source's history starts at {first}: " + "; ".join(report.skipped))

    def _carry_files(self) -> None:
        for name in CARRIED_FILES:
            path = self.src / name
            data = read_small_file(path, _MAX_CARRIED_BYTES)
            if data is None:
                if os.path.lexists(path):
                    raise ForkError(f"{path}: not a regular file of at most {_MAX_CARRIED_BYTES} bytes")
                continue
            jsonfile.replace_durably(self.staging / name, data)


class _MappedFiles:
    """memoryviews of read-only maps of `paths` (the segments handed to create_from_segments):
    the kernel pages them in and out, so a long history is never all in memory."""

    def __init__(self, paths: list[Path]):
        self._paths = paths
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []

    def __enter__(self) -> list[memoryview]:
        try:
            for path in self._paths:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    info = os.fstat(fd)
                    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
                        raise ForkError(f"{path} is not a segment file (not a non-empty regular file)")
                    self._maps.append(mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ))
                finally:
                    os.close(fd)
                self._views.append(memoryview(self._maps[-1]))
        except FileNotFoundError as exc:
            self.__exit__()
            raise ForkError(f"{exc.filename} vanished while forking (a live writer's archive retention deleted "
                            "it); fork again") from None
        except BaseException:
            self.__exit__()
            raise
        return self._views

    def __exit__(self, *exc) -> None:
        try:
            for view in self._views:
                view.release()
            for mapped in self._maps:
                mapped.close()
        except BufferError:
            pass  # a traceback still holds a slice of one (an error is on its way): the GC unmaps it
        self._views, self._maps = [], []


def _share(source: Path, dest: Path) -> bool:
    """Replace `dest`, a copy of the immutable file `source`, with a hard link to `source`
    (True); leave the copy (False) where the filesystem refuses links. The rename is atomic:
    `dest` holds the same bytes throughout."""
    temp = dest.with_name(f".{dest.name}.link")
    try:
        os.link(source, temp, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        return False
    os.rename(temp, dest)
    return True
