"""`replay verify DIR`: every log checksum and the chain, the term sequence, the compaction
boundary, every snapshot's chunks, and whether snapshots and log still meet.

Exit 0 only when everything is sound; 1 on any damage, each damaged index, snapshot and
chunk named. Everything is read-only: the log through eventlog's `verify()` in short read
transactions, snapshots through `SnapshotStore.verify` (hash-checks every chunk).

A log that cannot be read at all (cut short, structurally corrupt, a damaged meta record)
is one damage finding naming the file; the snapshots are still verified and the verdict
still printed.

Beside a live writer, only real damage is reported. The writer commits snapshots, prunes
old ones and then compacts the log through the oldest it kept, so a listing taken before
a verification can name snapshots that are gone by the time they are read. Hence:
snapshots are listed again until every listed one has been verified (a few rounds at
most: a writer may commit faster than a slow reader verifies), one whose manifest has
vanished was pruned (said so, not damage), one committed after the last round is said
to be unchecked, and whether snapshots and log meet is judged with the log's first index
read *before* the listing and its last index read *after* it, counting unchecked
snapshots as possibly sound. The writer's invariant (the log is compacted only through
a retained snapshot; a snapshot is never ahead of the log) then holds between the two
reads, so a journal is called unrecoverable only when every snapshot that could cover
its compaction boundary was verified and found damaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pathlib import Path

import snapshots
from eventlog import EventLog, LogError

from replay.recovery import SNAPSHOT_META_KEY

from .errors import EXIT_DAMAGE, EXIT_OK, is_damage
from .manifests import index_term, manifest_ids
from .output import Output, human_bytes
from .source import log_dir

# Rounds of "list again, verify what is new" before giving up on a writer that commits
# snapshots faster than they can be verified (what is left is said to be unchecked).
_LISTING_ROUNDS = 3

HELP = "check every checksum, the chain, terms, compaction boundary and snapshot chunks (exit 1 on damage)"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("verify", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory (or a bare event log)")
    p.set_defaults(run=run)


@dataclass
class Findings:
    """Everything `verify` reports, in order; `problems` counts the damage among it."""

    out: Output
    problems: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    def ok(self, record: dict[str, Any], text: str) -> None:
        self._emit({**record, "ok": True}, text, "green")

    def damaged(self, record: dict[str, Any], text: str, *details: str) -> None:
        self.problems += 1
        self._emit({**record, "ok": False}, text, "bold red", details)

    def info(self, record: dict[str, Any], text: str) -> None:
        self._emit(record, text, None)

    def _emit(self, record, text, style, details=()) -> None:
        if self.out.as_json:
            self.out.record(record)
            return
        for line in (text, *details):
            self.out.line(line, style=style)


def run(args, out: Output) -> int:
    found = Findings(out)
    root = Path(args.dir)
    directory = log_dir(root)  # a path that is not a journal is bad input (exit 2), not damage
    log = _open_log(directory, found)
    try:
        first = _verify_log(log, found) if log is not None else None
        if directory != root:
            store = snapshots.SnapshotStore(root / "snapshots", workers=4)
            try:
                sound, unchecked = _verify_snapshots(store, found)
            finally:
                store.close()
            if first is not None:
                _guard(found, directory, lambda: _check_journal(log, first, sound, unchecked, found))
    finally:
        if log is not None:
            log.close()
    verdict = "sound" if not found.problems else f"DAMAGED: {found.problems} problem(s)"
    record = {"check": "verdict", "ok": not found.problems, "problems": found.problems}
    found._emit(record, f"verdict: {verdict}", "bold red" if found.problems else "bold green")
    return EXIT_DAMAGE if found.problems else EXIT_OK


def _open_log(directory: Path, found: Findings) -> EventLog | None:
    """The log opened readonly, or None after reporting why it cannot be (damage only)."""
    return _guard(found, directory, lambda: EventLog.open(directory, readonly=True))


def _guard(found: Findings, directory: Path, read):
    """read(); damage it raises becomes one finding naming the log file (None is returned).
    Anything else (bad input, a bug) propagates to the command boundary."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - classified just below
        if not is_damage(exc):
            raise
        path = directory / "data.mdb"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        found.damaged({"check": "log", "path": str(path), "reason": reason}, f"log {path}: DAMAGED: {reason}")
        return None


def _verify_log(log: EventLog, found: Findings) -> int | None:
    """Report the log's verification; return its first index as read now (None on damage)."""
    report = _guard(found, log.path, log.verify)
    if report is None:
        return None
    path = log.path
    found.info({"check": "log", "path": str(path), "first_index": report.first_index,
                "last_index": report.last_index, "entries_checked": report.checked,
                "payload_bytes": report.payload_bytes, "current_term": report.current_term},
               f"log {path}: entries {report.first_index}..{report.last_index}, {report.checked} checked "
               f"({human_bytes(report.payload_bytes)} of payload), current term {report.current_term}")
    terms = ", ".join(f"{t} from {i}" for t, i in report.terms) or "none"
    found.info({"check": "terms", "terms": [{"term": t, "first_index": i} for t, i in report.terms]},
               f"  terms: {terms}")
    if report.first_index > 1:
        boundary = (f"  compaction boundary: entries through {report.first_index - 1} compacted "
                    f"(boundary term {report.boundary_term}, its checksum seeds entry {report.first_index})")
    else:
        boundary = "  compaction boundary: none (the log starts at entry 1)"
    found.info({"check": "boundary", "compacted_through": report.first_index - 1,
                "boundary_term": report.boundary_term}, boundary)
    for damage in report.damage:
        found.damaged({"check": "entry", "index": damage.index, "reason": damage.reason},
                      f"  DAMAGED entry {damage.index}: {damage.reason}")
    if report.ok:
        found.ok({"check": "chain", "entries": report.checked},
                 f"  checksums and chain: ok ({report.checked} entries)")
    # Read before the snapshots are listed: see the module doc.
    return _guard(found, path, lambda: log.first_index)


def _verify_snapshots(store: snapshots.SnapshotStore, found: Findings) -> tuple[list, list]:
    """Verify every snapshot; return ([(id, meta) of the sound ones still in the store],
    [ids committed too late to be checked])."""
    reports: dict[str, Any] = {}
    metas: dict[str, Any] = {}
    present: set[str] = set()
    with found.out.progress(len(manifest_ids(store.path)), "verifying snapshots") as advance:
        for _ in range(_LISTING_ROUNDS):
            for sid in manifest_ids(store.path):
                if sid not in reports:
                    reports[sid] = store.verify(sid)
                    advance(1)
            metas = {info.manifest_id: info.meta for info in store.list()}
            present = set(manifest_ids(store.path))  # after list(): a name here was readable by it
            if present <= reports.keys():
                break
    sound, unchecked = [], []
    for sid in sorted(present | reports.keys(), key=index_term):
        report = reports.get(sid)
        if sid not in present:
            found.info({"check": "snapshot", "id": sid, "pruned": True},
                       f"snapshot {sid}: pruned by the writer while verify ran (not counted)")
        elif report is None:
            unchecked.append(sid)
            found.info({"check": "snapshot", "id": sid, "unchecked": True},
                       f"snapshot {sid}: committed while verify ran (not checked)")
        elif report.ok:
            sound.append((sid, metas.get(sid)))
            found.ok({"check": "snapshot", "id": sid, "chunks": report.chunks_checked,
                      "bytes": report.bytes_checked},
                     f"snapshot {sid}: ok ({report.chunks_checked} chunks, {human_bytes(report.bytes_checked)})")
        else:
            problems = [{"chunk": p.chunk, "reason": p.reason} for p in report.damage]
            found.damaged({"check": "snapshot", "id": sid, "problems": problems}, f"snapshot {sid}: DAMAGED",
                          *(f"  DAMAGED {'chunk ' + p.chunk if p.chunk else 'manifest'}: {p.reason}"
                            for p in report.damage))
    if not present and not reports:
        found.info({"check": "snapshots", "count": 0}, "snapshots: none")
    return sound, unchecked


def _check_journal(log: EventLog, first: int, sound: list, unchecked: list, found: Findings) -> None:
    """Snapshots and log must meet: a sound snapshot covers the compaction boundary, none is
    ahead of the log, each carries the term the log has at its index, each was written by a Journal.

    `first` was read before the snapshots were listed; `last` is read now, after. An
    unchecked snapshot (committed during the run) may be the one that covers."""
    last = log.last_index
    for sid, meta in sound:
        index, term = index_term(sid)
        replay_meta = meta.get(SNAPSHOT_META_KEY) if isinstance(meta, dict) else None
        if not isinstance(replay_meta, dict) or replay_meta.get("index") != index:
            found.damaged({"check": "snapshot_meta", "id": sid, "reason": "not written by a replay Journal"},
                          f"snapshot {sid}: DAMAGED: its meta does not record a Journal index ({meta!r})")
        if index > last:
            found.damaged({"check": "snapshot_ahead", "id": sid, "last_index": last},
                          f"snapshot {sid}: DAMAGED: it is ahead of the log's last entry {last}")
        elif index >= first - 1:
            try:
                log_term = log.term_at(index)
            except LogError:
                continue  # compacted since `first` was read, or damaged: already reported with the log
            if log_term != term:
                found.damaged({"check": "snapshot_term", "id": sid, "log_term": log_term},
                              f"snapshot {sid}: DAMAGED: the log has term {log_term} at index {index}; "
                              "the snapshot belongs to another history")
    candidates = [sid for sid, _ in sound] + unchecked
    if first > 1 and not any(first - 1 <= index_term(sid)[0] <= last for sid in candidates):
        found.damaged({"check": "recoverable", "first_index": first,
                       "reason": "no sound snapshot covers the compaction boundary"},
                      f"journal: DAMAGED: the log was compacted through {first - 1} but no sound snapshot "
                      f"at index {first - 1}..{last} exists; it cannot be recovered")
    elif sound or first == 1:
        found.ok({"check": "recoverable"}, "journal: snapshots and log meet; recovery can proceed")
