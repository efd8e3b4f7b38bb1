"""`replay verify DIR`: every log checksum and the chain, the term sequence, the compaction
boundary, every snapshot's chunks, and whether snapshots and log still meet.

Exit 0 only when everything is sound; 1 on any damage, each damaged index, snapshot and
chunk named. Everything is read-only: the log through eventlog's `verify()` in short read
transactions, snapshots through `SnapshotStore.verify` (hash-checks every chunk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eventlog import EventLog, LogError

from replay.recovery import SNAPSHOT_META_KEY

from .errors import EXIT_DAMAGE, EXIT_OK
from .manifests import index_term, manifest_ids
from .output import Output, human_bytes
from .source import open_source

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

    def damaged(self, record: dict[str, Any], text: str) -> None:
        self.problems += 1
        self._emit({**record, "ok": False}, text, "bold red")

    def info(self, record: dict[str, Any], text: str) -> None:
        self._emit(record, text, None)

    def _emit(self, record, text, style) -> None:
        if self.out.as_json:
            self.out.record(record)
        else:
            self.out.line(text, style=style)


def run(args, out: Output) -> int:
    found = Findings(out)
    with open_source(args.dir) as src:
        sound_snapshots = _verify_log_and_snapshots(src, found)
        if src.store is not None:
            _check_journal(src.log, sound_snapshots, found)
    verdict = "sound" if not found.problems else f"DAMAGED: {found.problems} problem(s)"
    record = {"check": "verdict", "ok": not found.problems, "problems": found.problems}
    if found.problems:
        found._emit(record, f"verdict: {verdict}", "bold red")
    else:
        found._emit(record, f"verdict: {verdict}", "bold green")
    return EXIT_DAMAGE if found.problems else EXIT_OK


def _verify_log_and_snapshots(src, found: Findings) -> list:
    report = src.log.verify()
    found.info({"check": "log", "path": str(src.log_path), "first_index": report.first_index,
                "last_index": report.last_index, "entries_checked": report.checked,
                "payload_bytes": report.payload_bytes, "current_term": report.current_term},
               f"log {src.log_path}: entries {report.first_index}..{report.last_index}, {report.checked} checked "
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
    for damage in report.damaged:
        found.damaged({"check": "entry", "index": damage.index, "reason": damage.reason},
                      f"  DAMAGED entry {damage.index}: {damage.reason}")
    if report.ok:
        found.ok({"check": "chain", "entries": report.checked},
                 f"  checksums and chain: ok ({report.checked} entries)")
    if src.store is None:
        return []
    return _verify_snapshots(src, found)


def _verify_snapshots(src, found: Findings) -> list:
    """Verify every snapshot; return (snapshot id, meta) of the sound ones."""
    ids = manifest_ids(src.store.path)
    metas = {info.manifest_id: info.meta for info in src.store.list()}
    sound = []
    with found.out.progress(len(ids), "verifying snapshots") as advance:
        for sid in ids:
            report = src.store.verify(sid)
            advance(1)
            if report.ok:
                sound.append((sid, metas.get(sid)))
                found.ok({"check": "snapshot", "id": sid, "chunks": report.chunks_checked,
                          "bytes": report.bytes_checked},
                         f"snapshot {sid}: ok ({report.chunks_checked} chunks, {human_bytes(report.bytes_checked)})")
                continue
            problems = [{"chunk": p.chunk, "reason": p.reason} for p in report.problems]
            details = "".join(f"\n  DAMAGED {'chunk ' + p.chunk if p.chunk else 'manifest'}: {p.reason}"
                              for p in report.problems)
            found.damaged({"check": "snapshot", "id": sid, "problems": problems}, f"snapshot {sid}: DAMAGED{details}")
    if not ids:
        found.info({"check": "snapshots", "count": 0}, "snapshots: none")
    return sound


def _check_journal(log: EventLog, sound: list, found: Findings) -> None:
    """Snapshots and log must meet: a sound snapshot covers the compaction boundary, none is
    ahead of the log, each carries the term the log has at its index, each was written by a Journal."""
    first, last = log.first_index, log.last_index
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
                continue  # the entry itself is damaged: already reported with the log
            if log_term != term:
                found.damaged({"check": "snapshot_term", "id": sid, "log_term": log_term},
                              f"snapshot {sid}: DAMAGED: the log has term {log_term} at index {index}; "
                              "the snapshot belongs to another history")
    if first > 1 and not any(first - 1 <= index_term(sid)[0] <= last for sid, _ in sound):
        found.damaged({"check": "recoverable", "first_index": first,
                       "reason": "no sound snapshot covers the compaction boundary"},
                      f"journal: DAMAGED: the log was compacted through {first - 1} but no sound snapshot "
                      f"at index {first - 1}..{last} exists; it cannot be recovered")
    elif sound or first == 1:
        found.ok({"check": "recoverable"}, "journal: snapshots and log meet; recovery can proceed")
