"""`replay log/stats/verify DIR` on a multi-rank journal directory (replay/ranks/layout.py):
every rank, and the global picture. The cross-rank rules live in replay.ranks.audit; this
module only chooses what to show and how.

`rank_path(args)` is how the three commands accept ``--rank R``: R's directory is an
ordinary journal directory, shown exactly as a single-process journal is.

- log: the ranks' entries merged by index, one line per (index, rank); entries above the
  cut (held by a rank that got ahead; a recovery drops them) are marked.
- stats: a row per rank (terms, first/last index, snapshots, sizes, entries above the
  cut), then the cut, the common snapshot and rank 0's global records.
- verify: each rank's own verification (as `replay verify rank-<r>`), each line prefixed
  with its rank, then the cross-rank checks and one verdict.
"""

from __future__ import annotations

import heapq
from pathlib import Path

from eventlog import EventLog

from replay.audit import human_bytes, is_damage, locate
from replay.ranks import audit, layout
from replay.ranks import cut as cut_rule

from .entries import Row, rows
from .errors import EXIT_DAMAGE, EXIT_OK, CliError
from .output import Column, Output
from .summary import iso_time, local_time

RANK_HELP = ("with a multi-rank journal DIR, only rank R (its rank-R directory, shown as a single journal); "
             "without it every rank and the group")


def add_rank_option(parser) -> None:
    parser.add_argument("--rank", type=int, metavar="R", help=RANK_HELP)


def rank_path(args) -> str | None:
    """The directory a command shows as one journal: DIR itself, or rank R's with ``--rank R``.
    None when DIR is a multi-rank journal shown whole. CliError for --rank on a single
    journal, or a rank DIR does not hold. With --rank, `args.dir` becomes rank R's
    directory, so a damage report names that rank's files (main._damaged_file)."""
    rank = getattr(args, "rank", None)
    multi = layout.is_multirank(args.dir)
    if rank is None:
        return None if multi else args.dir
    if not multi:
        raise CliError(f"--rank {rank}: {args.dir} is not a multi-rank journal (no rank-<r> directory)")
    on_disk = layout.ranks_on_disk(args.dir)
    if rank not in on_disk:
        raise CliError(f"--rank {rank}: {layout.rank_dir(args.dir, rank)} does not exist "
                       f"(ranks on disk: {', '.join(map(str, on_disk))})")
    args.dir = str(layout.rank_dir(args.dir, rank))
    return args.dir


# -- log ---------------------------------------------------------------------------------

def run_log(args, out: Output, keep) -> int:
    """Every rank's entries merged by index (rank order within an index). Exit 1 when a rank's
    log cannot be opened or a listed entry is damaged; the other ranks are still listed."""
    root = Path(args.dir)
    logs: dict[int, EventLog] = {}
    unreadable: dict[int, str] = {}
    try:
        for r in layout.ranks_on_disk(root):
            try:
                log_dir, _ = locate(layout.rank_dir(root, r))
                logs[r] = EventLog.open(log_dir, readonly=True)
            except Exception as exc:  # noqa: BLE001 - damage is shown in place, the rest is not ours to hide
                if not (isinstance(exc, FileNotFoundError) or is_damage(exc)):
                    raise
                unreadable[r] = f"{layout.rank_dir(root, r)}: {' '.join(str(exc).split())}"
        status = EXIT_DAMAGE if unreadable else EXIT_OK
        cut = _cut(logs) if logs and not unreadable else None
        if not out.as_json:
            ranks = ", ".join(map(str, logs)) or "none readable"
            out.line(f"multi-rank journal {root}: ranks {ranks}; cut {cut if cut is not None else 'unknown'}"
                     " (entries above it are marked: a recovery drops them)")
        for r, reason in unreadable.items():
            _damaged_rank(out, r, reason)
        if args.start == 0:
            raise CliError("index 0 names no entry (indexes start at 1)")
        if args.end is not None and args.start is not None and args.end < args.start:
            return status
        stop = None if args.end is None else args.end + 1
        streams = [_ranked(r, rows(log, _start(log, args.start), stop, keep)) for r, log in logs.items()]
        for index, r, row in heapq.merge(*streams, key=lambda t: (t[0], t[1])):
            status = EXIT_DAMAGE if row.damaged is not None else status
            _print_row(out, r, row, cut is not None and index > cut)
    finally:
        for log in logs.values():
            log.close()
    return status


def _cut(logs: dict[int, EventLog]) -> int | None:
    """The cut by recovery's rule (replay.ranks.cut); None when a rank's last entry cannot be read."""
    try:
        return min(cut_rule.counted_last(log) for log in logs.values())
    except Exception as exc:  # noqa: BLE001 - a damaged last entry is listed as damage in place
        if not is_damage(exc):
            raise
        return None


def _ranked(rank: int, listing):
    for row in listing:
        yield row.index, rank, row


def _start(log: EventLog, start: int | None) -> int | None:
    """A rank whose log was compacted past `start` lists from its first retained entry."""
    return None if start is None else max(start, log.first_index)


def _print_row(out: Output, rank: int, row: Row, above: bool) -> None:
    if out.as_json:
        record = {"rank": rank, **row.as_record()}
        if above:
            record["above_cut"] = True
        out.record(record)
    elif row.damaged is not None:
        out.line(f"{row.index:>8}  r{rank:<3} DAMAGED: {row.damaged}", style="bold red")
    else:
        mark = "  [above the cut]" if above else ""
        out.line(f"{row.index:>8}  r{rank:<3} t{row.term:<3} {local_time(row.time_ns)}  {row.op:<16} "
                 f"{human_bytes(row.payload_bytes):>9}  {row.summary}{mark}", style="yellow" if above else None)


def _damaged_rank(out: Output, rank: int, reason: str) -> None:
    if out.as_json:
        out.record({"rank": rank, "damaged": reason})
    else:
        out.line(f"rank {rank}: DAMAGED: {reason}", style="bold red")


# -- stats -------------------------------------------------------------------------------

RANK_COLUMNS = [
    Column("rank", "rank", right=True),
    Column("world_size", "world", lambda n: "-" if n is None else str(n), right=True),
    Column("first_index", "first", lambda n: "-" if n is None else str(n), right=True),
    Column("last_index", "last", lambda n: "-" if n is None else str(n), right=True),
    Column("entries", "entries", right=True),
    Column("terms", "terms (term@first index)", lambda ts: " ".join(f"{t['term']}@{t['first_index']}" for t in ts)),
    Column("snapshots", "snapshots at", lambda ix: " ".join(map(str, ix)) or "-"),
    Column("payload_bytes", "payload", human_bytes, right=True),
    Column("log_bytes", "data.mdb", human_bytes, right=True),
    Column("above_cut", "above cut", right=True),
]


def run_stats(args, out: Output) -> int:
    """The per-rank table and the global picture; exit 1 when the audit found damage."""
    report = audit.multirank_report(args.dir)
    group = group_record(report)
    if out.as_json:
        for view in report.ranks:
            out.record({"section": "rank", **view.as_record(report.cut)})
        out.record({"section": "group", **group})
        for record in report.records:
            out.record({"section": "global_record", **_global_record(record)})
        for problem in report.problems:
            out.record({"section": "problem", **problem.as_record()})
        return EXIT_OK if report.ok else EXIT_DAMAGE
    out.line(f"multi-rank journal {report.root}: {_world_words(report)}")
    out.table(RANK_COLUMNS, [v.as_record(report.cut) for v in report.ranks], title="ranks")
    for _, line, _ in _picture(report):
        out.line(line)
    if report.records:
        out.table([Column("index", "index", right=True), Column("world_size", "world", right=True),
                   Column("time", "written", lambda t: local_time(int(t * 1e9))),
                   Column("manifests", "manifests (rank 0, 1, ...)", lambda ms: " ".join(ms))],
                  [_global_record(r) for r in report.records], title="global records (rank 0's group/snapshots/)")
    else:
        out.line("global records: none")
    for problem in report.problems:
        out.line(f"DAMAGED: {problem.text}", style="bold red")
    if report.problems:
        out.line(f"{len(report.problems)} problem(s): run `replay verify {report.root}`", style="bold red")
    out.line(f"per rank: `replay stats {report.root} --rank R` (ops, environment, replay estimate)")
    return EXIT_OK if report.ok else EXIT_DAMAGE


def group_record(report: audit.MultiRankReport) -> dict:
    """The global picture as one JSON-able record."""
    common = report.common
    return {"path": str(report.root), "world_size": report.world_size, "ranks": [v.rank for v in report.ranks],
            "cut": report.cut, "acknowledged": report.acknowledged, "common_snapshot": common[0] if common else None,
            "common_manifests": list(common[1]) if common else None,
            "above_cut": {str(v.rank): v.above(report.cut) for v in report.ranks},
            "passed_over": [{"index": i, "rank": r, "id": name, "reason": why}
                            for i, r, name, why in report.passed_over],
            "ops_compared": list(report.compared) if report.compared else None,
            "global_records": [r.index for r in report.records],
            "pruned": [{"index": i, "rank": r, "id": name} for i, r, name in report.pruned],
            "problems": len(report.problems)}


def _global_record(record: layout.GlobalRecord) -> dict:
    return {"index": record.index, "world_size": record.world_size, "manifests": list(record.manifests),
            "time": record.time, "time_iso": iso_time(int(record.time * 1e9)), "path": str(record.path)}


def _world_words(report: audit.MultiRankReport) -> str:
    ranks = ", ".join(f"rank-{v.rank}" for v in report.ranks)
    world = report.world_size
    if world is None:
        world = "unknown (the rank records disagree or are unreadable)"
    return f"world size {world}; directories {ranks}"


def _picture(report: audit.MultiRankReport) -> list[tuple[str, str, dict]]:
    """(check, line, fields) for the cut, what lies above it, the common snapshot, the newer
    candidates passed over on the way to it, and manifests retention pruned under older
    global records."""
    group = group_record(report)
    lines = []
    if report.cut is None:
        lines.append(("cut", "cut: unknown (some rank's log cannot be read)", {"cut": None}))
    else:
        above = [f"rank {v.rank} holds {v.above(report.cut)} ({report.cut + 1}..{v.last_index})"
                 for v in report.ranks if v.above(report.cut)]
        lines.append(("cut", f"cut: {report.cut} (the newest index every rank holds; a recovery keeps entries "
                      "through it)", {"cut": report.cut}))
        if report.acknowledged is not None:
            lines.append(("acknowledged", f"acknowledged: {report.acknowledged} (the highest index the ranks record "
                          "as durable on every rank; a recovery never cuts below it)",
                          {"acknowledged": report.acknowledged}))
        lines.append(("above_cut", "entries above the cut (never acknowledged; a recovery drops them): "
                      + ("; ".join(above) if above else "none"), {"above_cut": group["above_cut"]}))
        common = {"index": group["common_snapshot"], "manifests": group["common_manifests"]}
        if report.common is not None:
            index, names = report.common
            lines.append(("common_snapshot", f"common snapshot: index {index} ("
                          + ", ".join(f"rank {v.rank} {n}" for v, n in zip(report.ranks, names))
                          + "): a recovery loads it and replays to the cut", common))
        else:
            lines.append(("common_snapshot", "common snapshot: none (a recovery replays every rank from entry 1)",
                          common))
    lines.extend(("passed_over", f"  passed over index {index}: rank {r} snapshot {name}: {why}",
                  {"index": index, "rank": r, "id": name, "reason": why})
                 for index, r, name, why in report.passed_over)
    lines.extend(("pruned", f"global record {index}: manifest {name} on rank {r} was pruned by that rank's "
                  "retention (rank 0 drops the record at its next snapshot)", {"index": index, "rank": r, "id": name})
                 for index, r, name in report.pruned)
    return lines


# -- verify ------------------------------------------------------------------------------

def run_verify(args, out: Output, verify_one, emit) -> int:
    """Each rank's own verification (`verify_one(out, path, rank)` prints it and returns its
    JournalReport), then the cross-rank checks, printed with `emit(out, record, lines, style)`.
    Exit 0 only when every rank and the group are sound."""
    root = Path(args.dir)
    verified: dict[tuple[int, str], bool] = {}
    problems = 0
    for r in layout.ranks_on_disk(root):
        path = layout.rank_dir(root, r)
        try:
            locate(path)
        except FileNotFoundError:
            continue  # not a journal at all: the cross-rank audit names it
        report = verify_one(out, path, r)
        for finding in report.findings:
            record = finding.record
            if record.get("check") == "snapshot" and "ok" in record:
                verified[(r, record["id"])] = bool(record["ok"])
        problems += len(report.damage)
    group = audit.multirank_report(root, sound=lambda r, name: verified.get((r, name)))
    for record, line, ok in _cross_rank(group):
        emit(out, record, (line,), "green" if ok else None)
    for problem in group.problems:
        emit(out, problem.as_record(), (f"DAMAGED: {problem.text}",), "bold red")
    problems += len(group.problems)
    ok = problems == 0
    verdict = "sound" if ok else f"DAMAGED: {problems} problem(s)"
    emit(out, {"check": "verdict", "ok": ok, "problems": problems}, (f"verdict: {verdict}",),
         "bold green" if ok else "bold red")
    return EXIT_OK if ok else EXIT_DAMAGE


def _cross_rank(report: audit.MultiRankReport):
    """(record, line, ok) for each cross-rank check that found no damage of its own kind."""
    failed = {p.check for p in report.problems}
    group = group_record(report)
    if not failed & {"rank_record", "world_size", "ranks"}:
        yield ({"check": "ranks", "ok": True, "world_size": report.world_size, "ranks": group["ranks"]},
               f"ranks: {_world_words(report)}; every rank.json agrees", True)
    if "ops" not in failed and report.compared is not None:
        lo, hi = report.compared
        yield ({"check": "ops", "ok": True, "first_index": lo, "last_index": hi},
               f"ops: identical on every rank at indexes {lo}..{hi}", True)
    for check, line, fields in _picture(report):
        record = {"check": check, "text": line, **fields}
        if check in ("common_snapshot", "acknowledged"):
            record["ok"] = check not in failed
        yield record, line, record.get("ok", False)
    if "global_record" not in failed:
        indexes = ", ".join(map(str, group["global_records"])) or "none"
        every = [v.rank for v in report.ranks] == list(report.records_checked_on)
        on = "every rank" if every else "rank(s) " + (", ".join(map(str, report.records_checked_on)) or "none")
        yield ({"check": "global_records", "ok": True, "indexes": group["global_records"],
                "ranks_checked": list(report.records_checked_on)},
               f"global records: {indexes}; each names a readable manifest at its index on {on}"
               + (" (but the pruned ones above)" if report.pruned else ""), True)
