"""`replay snapshots DIR` (list them) and `replay prune DIR` (apply retention).

Listing only reads manifests. Pruning deletes snapshots and unreferenced chunks, so it
refuses while a writer has the journal open: the journal prunes after its own snapshots,
and a second process taking the store's writer lock would make the journal's next
snapshot fail.
"""

from __future__ import annotations

from replay.layout import rank_file
from replay.operator import refuse_live_writer
from replay.audit import human_bytes

from .errors import CliError, EXIT_OK
from .output import Column, Output
from .source import locate_journal, open_source
from .summary import iso_time, local_time

LIST_HELP = "list snapshots: index, term, sizes (logical, stored, written), compression ratio"
SIZES_NOTE = ("Sizes: logical = bytes of the tensors before deduplication and compression; stored = on-disk "
              "bytes of the chunk files it uses plus its manifest (shared chunks count in each snapshot); "
              "written = stored bytes this snapshot added when saved.")
PRUNE_HELP = "delete snapshots beyond the retention and chunks no snapshot uses"

SNAPSHOT_COLUMNS = [
    Column("id", "snapshot"),
    Column("index", "index", right=True),
    Column("term", "term", right=True),
    Column("created", "created", lambda ns: local_time(ns) if ns else "-"),
    Column("tensors", "tensors", right=True),
    Column("chunks", "chunks", right=True),
    Column("bytes_logical", "logical", human_bytes, right=True),
    Column("bytes_stored", "stored", human_bytes, right=True),
    Column("ratio", "ratio", lambda r: f"{r:.2f}x" if r else "-", right=True),
    Column("bytes_written", "written", human_bytes, right=True),
]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("snapshots", parents=parents, help=LIST_HELP, description=LIST_HELP + ". " + SIZES_NOTE)
    p.add_argument("dir", help="journal directory")
    p.add_argument("--verify", action="store_true", help="also hash-check every chunk of each snapshot")
    p.set_defaults(run=run_list)

    p = sub.add_parser("prune", parents=parents, help=PRUNE_HELP, description=PRUNE_HELP +
                       ". The newest snapshot that verifies is always kept; refuses while a writer has the journal open.")
    p.add_argument("dir", help="journal directory")
    p.add_argument("--keep-last", type=int, default=3, metavar="K", help="snapshots to keep (default 3, the Journal's default)")
    p.add_argument("--keep-every", type=int, metavar="M", help="also keep every snapshot whose index is a multiple of M")
    p.set_defaults(run=run_prune)


def size_words(info) -> str:
    """'logical 259.9 KiB, stored 140.5 KiB, written 12.0 KiB': the three sizes, one vocabulary."""
    return ", ".join(f"{word} {human_bytes(n)}" for word, n in info.sizes().items())


def snapshot_row(info) -> dict:
    """One snapshot's record, with its compression ratio."""
    return {
        "id": info.manifest_id, "index": info.index, "term": info.term,
        "created": int(info.created * 1e9), "created_iso": iso_time(int(info.created * 1e9)),
        "tensors": info.tensors, "chunks": info.chunks, "bytes_logical": info.bytes_logical,
        "bytes_stored": info.bytes_stored, "bytes_written": info.bytes_written,
        "ratio": info.bytes_logical / info.bytes_stored if info.bytes_stored else None,
    }


def snapshot_rows(store) -> list[dict]:
    """One record per readable snapshot (SnapshotStore.list)."""
    return [snapshot_row(info) for info in store.list()]


def run_list(args, out: Output) -> int:
    with open_source(args.dir) as src:
        if src.store is None:
            raise CliError(f"{args.dir} is a bare event log; it has no snapshots")
        # Manifests that no longer read back are listed too: an audit must show them.
        rows = [snapshot_row(entry.info) if entry.info is not None else
                {"id": entry.name, "index": entry.index, "term": entry.term, "status": "manifest unreadable"}
                for entry in src.store.manifests()]
        columns = list(SNAPSHOT_COLUMNS)
        if args.verify:
            with out.progress(len(rows), "verifying") as advance:
                for row in rows:
                    if "status" not in row:
                        report = src.store.verify(row["id"])
                        row["status"] = "ok" if report.ok else "DAMAGED: " + "; ".join(
                            f"{p.chunk or 'manifest'}: {p.reason}" for p in report.damage)
                    advance(1)
        if args.verify or any("status" in r for r in rows):
            columns.append(Column("status", "status", lambda s: s or "-"))
    if not rows and not out.as_json:
        out.line("no snapshots")
        return EXIT_OK
    out.table(columns, rows, title=f"snapshots of {args.dir}")
    damaged = any(str(r.get("status", "ok")) != "ok" for r in rows)
    return 1 if damaged else EXIT_OK


def run_prune(args, out: Output) -> int:
    import snapshots

    directory, store_dir = locate_journal(args.dir)
    if store_dir is None:
        raise CliError(f"{args.dir} is a bare event log; it has no snapshots to prune")
    refuse_live_writer(directory, "the journal prunes its own snapshots. Close it first")
    if rank_file(args.dir).exists():
        # Pruning one rank alone can delete the snapshot every rank holds in common.
        raise CliError(f"{args.dir} is one rank of a multi-rank journal: its snapshots are pruned by the "
                       "journal itself, which keeps the one every rank holds")
    from eventlog import EventLog

    from replay.retention import keep_oldest_snapshot

    store = snapshots.SnapshotStore(store_dir, keep_last=args.keep_last,
                                    keep_every=args.keep_every, workers=4)
    try:
        retained = store.list()
        with EventLog.open(directory, readonly=True) as log:
            store.keep_oldest = keep_oldest_snapshot(log, retained[0].index if retained else None)
        report = store.prune()
    except snapshots.LockedError as exc:
        raise CliError(f"{exc}; close the journal first") from exc
    finally:
        store.close()
    if out.as_json:
        out.record({"deleted": list(report.deleted), "kept": list(report.kept),
                    "chunks_deleted": report.chunks_deleted, "bytes_freed": report.bytes_freed,
                    "temp_files_deleted": report.temp_files_deleted,
                    "skipped_damaged": [r.manifest_id for r in report.skipped],
                    "sweep_skipped": report.sweep_skipped})
        return EXIT_OK
    out.line(f"deleted {len(report.deleted)} snapshot(s): {', '.join(report.deleted) or '-'}")
    out.line(f"kept {len(report.kept)}: {', '.join(report.kept) or '-'}")
    out.line(f"chunks deleted: {report.chunks_deleted} ({human_bytes(report.bytes_freed)} freed), "
             f"temp files removed: {report.temp_files_deleted}")
    for skipped in report.skipped:
        out.line(f"passed over damaged {skipped}", style="yellow")
    if report.sweep_skipped:
        out.line(f"no chunk deleted: {report.sweep_skipped}", style="yellow")
    return EXIT_OK
