"""Read-only questions about a journal directory, safe beside a live writer.

- `verify_journal(path)`: every log checksum and the chain, every snapshot's chunks, and
  whether snapshots and log still meet (invariant 4 of replay/INVARIANTS.md).
- `state_at(path, ops, state, index)`: the state right after entry `index`, rebuilt in
  place by recovery (`Replayer.recover(at=index)`).
- `locate(path)` and `is_damage(exc)`: what a path holds, and which failures are damage
  to the files rather than bad input or a bug.

Nothing here writes: the log is opened readonly (no lock, no term bump, short read
transactions), the store only reads.

Verification beside a live writer reports only real damage. The writer commits
snapshots, prunes old ones and then compacts the log through the oldest it kept, so a
listing taken before a verification can name snapshots that are gone by the time they
are read. Hence snapshots are listed again until every listed one has been verified (a
few rounds at most), one whose manifest vanished was pruned (said so, not damage), one
committed after the last round is unchecked, and whether snapshots and log meet is
judged with the log's first index read *before* the listing and its last index read
*after* it, counting unchecked snapshots as possibly sound. The writer's invariant then
holds between the two reads, so a journal is called unrecoverable only when every
snapshot that could cover its compaction boundary was verified and found damaged.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import lmdb
import snapshots
from eventlog import EventLog, LogError

from . import layout
from .errors import DamageError
from .ops import Ops
from .progress import ReplayProgress
from .recovery import RecoveryReport, Replayer, journal_index

# Rounds of "list again, verify what is new" before giving up on a writer that commits
# snapshots faster than they can be verified (what is left is said to be unchecked).
LISTING_ROUNDS = 3

# Not the vocabulary: what a library failed to translate into it. LMDB's own words for a
# damaged file (eventlog turns them into DamagedLogError / CorruptEntryError on its read
# paths; a raw one that still escapes is damage, not a bug), and struct.error (only
# eventlog unpacks stored bytes with struct: a short record is damage).
_UNTRANSLATED = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.PanicError,
                 lmdb.IncompatibleError, lmdb.BadChecksumError, lmdb.BadValsizeError, lmdb.ProblemError,
                 lmdb.DiskError, struct.error)


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` reports damage to a journal's files (or a replica's objects) rather
    than bad input or a bug: ``isinstance(exc, DamageError)``, the one marker every package's
    damage errors share (the table: replay/INVARIANTS.md, "One error vocabulary").

    FormatError is damage by design: once a path holds a ``data.mdb``, a damaged
    ``format`` or ``term`` record reads exactly like a file that is not a log. Beyond the
    vocabulary, what a library let escape untranslated is damage too: a raw LMDB
    structural error or struct.error, EIO (the disk could not return what the file holds),
    and eventlog's LogError("cannot open ...") raised from an LMDB damage error.
    """
    if isinstance(exc, DamageError):
        return True
    return (isinstance(exc, _UNTRANSLATED) or (isinstance(exc, OSError) and exc.errno == errno.EIO)
            or (isinstance(exc, LogError) and isinstance(exc.__cause__, _UNTRANSLATED)))


def locate(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(log directory, snapshot store directory or None) of a journal or a bare event log.

    A journal is ``path/log/data.mdb`` beside ``path/snapshots``; a bare log is
    ``path/data.mdb``. FileNotFoundError naming `path` when it is neither.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if layout.log_data_file(root).is_file():
        return layout.log_dir(root), layout.snapshots_dir(root)
    if layout.lmdb_file(root).is_file():
        return root, None
    raise FileNotFoundError(f"{root} is not a journal (no log/data.mdb) or an event log (no data.mdb)")


def state_at(path: str | os.PathLike, ops: Ops, state: Mapping[str, Any], index: int, *,
             progress: bool | None = None) -> RecoveryReport:
    """Bring `state` (fresh, of the journal's layout) to exactly entry `index`, in place; return how.

    The newest usable snapshot at or before `index`, then replay (invariant 3); nothing is
    written. RecoveryError when `index` is past the end or the log was compacted past
    every loadable snapshot at or before it; replay errors name the failing index.
    """
    log_dir, store_dir = locate(path)
    with EventLog.open(log_dir, readonly=True) as log:
        store = snapshots.SnapshotStore(store_dir) if store_dir is not None else None
        try:
            return Replayer(ops, state).recover(log, store, at=index, progress=progress)
        finally:
            if store is not None:
                store.close()


@dataclass(frozen=True)
class Finding:
    """One result of `verify_journal`: a JSON-able `record` (its "check" says what was
    checked), the `lines` that say it to a person, and whether it is `damage`."""

    record: Mapping[str, Any]
    lines: tuple[str, ...]
    damage: bool = False


@dataclass(frozen=True)
class JournalReport:
    """Everything `verify_journal` found, in order; `ok` iff none of it is damage."""

    path: Path
    findings: tuple[Finding, ...]

    @property
    def damage(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.damage)

    @property
    def ok(self) -> bool:
        return not self.damage

    def __str__(self) -> str:
        return f"journal {self.path}: " + ("sound" if self.ok else f"DAMAGED: {len(self.damage)} problem(s)")


def verify_journal(path: str | os.PathLike, *, progress: bool | None = None) -> JournalReport:
    """Check the journal (or bare event log) at `path`; never raises on damage.

    The log through eventlog's `verify` (an unreadable log is one finding naming its
    data.mdb; the snapshots are still verified), every snapshot through
    `SnapshotStore.verify`, then whether they meet: a sound snapshot covers the
    compaction boundary, none is ahead of the log, each carries the log's term at its
    index and was written by a Journal. See the module doc for a live writer.
    FileNotFoundError when `path` is neither (`locate`); bugs propagate.
    """
    log_dir, store_dir = locate(path)
    found = _Findings(layout.lmdb_file(log_dir))
    log = found.guard(lambda: EventLog.open(log_dir, readonly=True))
    try:
        first = _verify_log(log, found) if log is not None else None
        if store_dir is not None:
            store = snapshots.SnapshotStore(store_dir, workers=4)
            try:
                sound, unchecked = _verify_snapshots(store, found, progress)
            finally:
                store.close()
            if first is not None:
                found.guard(lambda: _check_meeting(log, first, sound, unchecked, found))
    finally:
        if log is not None:
            log.close()
    return JournalReport(Path(path), tuple(found.items))


@dataclass
class _Findings:
    data_file: Path
    items: list[Finding] = field(default_factory=list)

    def add(self, record: dict, *lines: str, damage: bool = False, ok: bool | None = None) -> None:
        if ok is not None or damage:
            record = {**record, "ok": not damage}
        self.items.append(Finding(record, lines, damage))

    def guard(self, read: Callable):
        """read(); damage it raises becomes one finding naming the log file (None returned)."""
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_damage(exc):
                raise
            reason = " ".join(str(exc).split()) or type(exc).__name__
            self.add({"check": "log", "path": str(self.data_file), "reason": reason},
                     f"log {self.data_file}: DAMAGED: {reason}", damage=True)
            return None


def _verify_log(log: EventLog, found: _Findings) -> int | None:
    """Record the log's verification; return its first index as read now (None on damage)."""
    report = found.guard(log.verify)
    if report is None:
        return None
    path = log.path
    found.add({"check": "log", "path": str(path), "first_index": report.first_index,
               "last_index": report.last_index, "entries_checked": report.checked,
               "payload_bytes": report.payload_bytes, "current_term": report.current_term},
              f"log {path}: entries {report.first_index}..{report.last_index}, {report.checked} checked "
              f"({human_bytes(report.payload_bytes)} of payload), current term {report.current_term}")
    terms = ", ".join(f"{t} from {i}" for t, i in report.terms) or "none"
    found.add({"check": "terms", "terms": [{"term": t, "first_index": i} for t, i in report.terms]},
              f"  terms: {terms}")
    # Two boundaries since the tiered log: entries below first_index were deleted (by a
    # compaction without an archive, or the archive's retention) and cannot be read;
    # first_index..live_first_index - 1 are sealed in the archive and read like the rest.
    live = max(report.live_first_index, report.first_index)
    if report.first_index > 1:
        boundary = (f"  compaction boundary: entries through {report.first_index - 1} deleted "
                    f"(boundary term {report.boundary_term}, its checksum seeds entry {report.first_index})")
    else:
        boundary = "  compaction boundary: none deleted (the log starts at entry 1)"
    if live > report.first_index:
        held = f"LMDB holds {live}..{report.last_index}" if live <= report.last_index else "LMDB holds none"
        boundary += (f"; entries {report.first_index}..{live - 1} archived in {report.segments} sealed "
                     f"segment(s), {held}")
    found.add({"check": "boundary", "compacted_through": report.first_index - 1, "archived_through": live - 1,
               "boundary_term": report.boundary_term}, boundary)
    for damage in report.damage:
        found.add({"check": "entry", "index": damage.index, "reason": damage.reason},
                  f"  DAMAGED entry {damage.index}: {damage.reason}", damage=True)
    if report.ok:
        found.add({"check": "chain", "entries": report.checked},
                  f"  checksums and chain: ok ({report.checked} entries)", ok=True)
    # Read before the snapshots are listed: see the module doc.
    return found.guard(lambda: log.first_index)


def _verify_snapshots(store, found: _Findings, progress: bool | None) -> tuple[list, list]:
    """Verify every snapshot; return ([(name, index, term, meta) of the sound ones still
    in the store], [(name, index) committed too late to be checked])."""
    reports: dict[str, Any] = {}
    keys: dict[str, tuple[int, int]] = {}
    listing = store.manifests()
    present: dict[str, Any] = {}
    with ReplayProgress(len(listing), progress, "verifying snapshots") as bar:
        for _ in range(LISTING_ROUNDS):
            for entry in listing:
                keys[entry.name] = entry.key
                if entry.name not in reports:
                    reports[entry.name] = store.verify(entry.name)
                    bar.advance()
            listing = store.manifests()
            present = {entry.name: entry for entry in listing}
            keys.update((entry.name, entry.key) for entry in listing)
            if present.keys() <= reports.keys():
                break
    sound, unchecked = [], []
    for name in sorted(present.keys() | reports.keys(), key=keys.__getitem__):
        report = reports.get(name)
        index, term = keys[name]
        if name not in present:
            found.add({"check": "snapshot", "id": name, "pruned": True},
                      f"snapshot {name}: pruned by the writer while verify ran (not counted)")
        elif report is None:
            unchecked.append((name, index))
            found.add({"check": "snapshot", "id": name, "unchecked": True},
                      f"snapshot {name}: committed while verify ran (not checked)")
        elif report.ok:
            info = present[name].info
            sound.append((name, index, term, info.meta if info is not None else None))
            found.add({"check": "snapshot", "id": name, "chunks": report.chunks_checked,
                       "bytes": report.bytes_checked},
                      f"snapshot {name}: ok ({report.chunks_checked} chunks, {human_bytes(report.bytes_checked)})",
                      ok=True)
        else:
            found.add({"check": "snapshot", "id": name,
                       "problems": [{"chunk": d.chunk, "reason": d.reason} for d in report.damage]},
                      f"snapshot {name}: DAMAGED",
                      *(f"  DAMAGED {'chunk ' + d.chunk if d.chunk else 'manifest'}: {d.reason}" for d in report.damage),
                      damage=True)
    if not present and not reports:
        found.add({"check": "snapshots", "count": 0}, "snapshots: none")
    return sound, unchecked


def _check_meeting(log: EventLog, first: int, sound: list, unchecked: list, found: _Findings) -> None:
    """Invariant 4: a sound snapshot covers the compaction boundary, none is ahead of the
    log, each carries the term the log has at its index, each was written by a Journal.

    The boundary is what was really deleted (`first`, the first *readable* entry): entries
    LMDB dropped into the archive are still readable, so a snapshot anywhere from
    first - 1 on can start recovery.

    `first` was read before the snapshots were listed; `last` is read now, after. An
    unchecked snapshot (committed during the run) may be the one that covers."""
    last = log.last_index
    for name, index, term, meta in sound:
        if journal_index(meta) != index:
            found.add({"check": "snapshot_meta", "id": name, "reason": "not written by a replay Journal"},
                      f"snapshot {name}: DAMAGED: its meta does not record a Journal index ({meta!r})", damage=True)
        if index > last:
            found.add({"check": "snapshot_ahead", "id": name, "last_index": last},
                      f"snapshot {name}: DAMAGED: it is ahead of the log's last entry {last}", damage=True)
        elif index >= first - 1:
            try:
                log_term = log.term_at(index)
            except LogError:
                continue  # compacted since `first` was read, or damaged: already reported with the log
            if log_term != term:
                found.add({"check": "snapshot_term", "id": name, "log_term": log_term},
                          f"snapshot {name}: DAMAGED: the log has term {log_term} at index {index}; "
                          "the snapshot belongs to another history", damage=True)
    candidates = [index for _, index, _, _ in sound] + [index for _, index in unchecked]
    if first > 1 and not any(first - 1 <= index <= last for index in candidates):
        found.add({"check": "recoverable", "first_index": first,
                   "reason": "no sound snapshot covers the compaction boundary"},
                  f"journal: DAMAGED: the log was compacted through {first - 1} but no sound snapshot "
                  f"at index {first - 1}..{last} exists; it cannot be recovered", damage=True)
    elif sound or first == 1:
        found.add({"check": "recoverable"}, "journal: snapshots and log meet; recovery can proceed", ok=True)


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
