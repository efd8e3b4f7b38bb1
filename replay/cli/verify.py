"""`replay verify DIR`: every log checksum and the chain, the term sequence, the compaction
boundary, every snapshot's chunks, and whether snapshots and log still meet.

Exit 0 only when everything is sound; 1 on any damage, each damaged index, snapshot and
chunk named. The checks, and how they stay truthful beside a live writer, are
`replay.verify_journal`'s (replay/audit.py); this command prints its findings and a verdict.
A sound snapshot's line gives its sizes in the words `replay snapshots` and `replay stats`
use (logical, stored, written: snapshots/reports.py defines them), from its manifest.

A multi-rank journal DIR: every rank verified as above (each line names its rank), then
the cross-rank checks of replay.ranks.audit (rank records and world size, the set of rank
directories, identical ops across ranks, the global records' manifests, a common snapshot
at or below the cut); ``--rank R`` verifies rank R alone.
"""

from __future__ import annotations

import sys

import snapshots
from replay.audit import locate, verify_journal

from .errors import EXIT_DAMAGE, EXIT_OK
from .multirank import add_rank_option, rank_path, run_verify
from .output import Output, isatty
from .retention import size_words
from .source import log_dir

HELP = ("check every checksum, the chain, terms, compaction boundary and snapshot chunks "
        "(a multi-rank journal: every rank, and their consistency; exit 1 on damage)")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("verify", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory, multi-rank journal directory (rank-<r>/...) or bare event log")
    add_rank_option(p)
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    path = rank_path(args)
    if path is None:
        return run_verify(args, out, verify_one, _emit)
    log_dir(path)  # a path that is not a journal is bad input (exit 2), not damage
    report = verify_one(out, path)
    problems = len(report.damage)
    verdict = "sound" if report.ok else f"DAMAGED: {problems} problem(s)"
    _emit(out, {"check": "verdict", "ok": report.ok, "problems": problems}, (f"verdict: {verdict}",),
          "bold green" if report.ok else "bold red")
    return EXIT_OK if report.ok else EXIT_DAMAGE


def verify_one(out: Output, path, rank: int | None = None):
    """Verify the journal at `path` and print its findings (of rank `rank` of a multi-rank
    journal: each record carries "rank", each line starts with it); return the JournalReport."""
    report = verify_journal(path, progress=not out.as_json and isatty(sys.stderr))
    infos = _snapshot_infos(path)
    for finding in report.findings:
        record, lines = _with_sizes(finding.record, finding.lines, infos)
        style = "bold red" if finding.damage else "green" if record.get("ok") else None
        if rank is not None:
            record, lines = {"rank": rank, **record}, tuple(f"rank {rank}: {line}" for line in lines)
        _emit(out, record, lines, style)
    return report


def _snapshot_infos(path) -> dict:
    """{manifest id: SnapshotInfo} of the snapshots whose manifests read back now."""
    store_dir = locate(path)[1]
    if store_dir is None:
        return {}
    with snapshots.SnapshotStore(store_dir, workers=1) as store:
        return {entry.name: entry.info for entry in store.manifests() if entry.info is not None}


def _with_sizes(record, lines, infos: dict) -> tuple[dict, tuple]:
    """A sound snapshot's finding in the size vocabulary: logical, stored and written (the
    raw bytes the check read are `bytes_checked`, work done rather than a size)."""
    record = dict(record)
    if record.get("check") != "snapshot" or "chunks" not in record:
        return record, lines
    record["bytes_checked"] = record.pop("bytes", None)
    info = infos.get(record.get("id"))
    if info is None:
        return record, lines
    record.update(bytes_logical=info.bytes_logical, bytes_stored=info.bytes_stored, bytes_written=info.bytes_written)
    return record, (f"snapshot {record['id']}: ok ({record['chunks']} chunks checked; {size_words(info)})",)


def _emit(out: Output, record, lines, style) -> None:
    if out.as_json:
        out.record(dict(record))
        return
    for line in lines:
        out.line(line, style=style)
