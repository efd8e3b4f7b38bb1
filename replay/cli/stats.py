"""`replay stats DIR`: entries, bytes, ops histogram, terms (each restart), snapshots, and an
estimate of how long recovery would replay from the newest sound snapshot.

The estimate is the library's (replay/estimate.py): the writer's median time between
consecutive entries of one term, times the entries after the snapshot recovery would
load (it verifies and belongs to the log's history; damaged or foreign newer ones are
named and passed over, which is why this reads that snapshot's chunks). Snapshot sizes
use the vocabulary of `replay snapshots`.

A multi-rank journal DIR gets a row per rank and the global picture: the recorded world
size, the cut, entries above it, the common snapshot, rank 0's global records
(cli.multirank); ``--rank R`` gives rank R's full stats as above.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from eventlog import HEADER_SIZE

from replay import environment, layout
from replay.audit import human_bytes
from replay.estimate import WriterPace, estimate_replay

from .entries import rows as entry_rows
from .errors import EXIT_DAMAGE, EXIT_OK
from .multirank import add_rank_option, rank_path, run_stats
from .output import Column, Output
from .replica import options as replica_options
from .retention import SNAPSHOT_COLUMNS, snapshot_rows
from .source import open_source
from .summary import iso_time, local_time

HELP = ("entries, bytes, ops histogram, terms, snapshots, recorded environment, estimated replay time "
        "(a multi-rank journal: per rank, the cut, the common snapshot, the global records)")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("stats", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory, multi-rank journal directory (rank-<r>/...) or bare event log")
    add_rank_option(p)
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    path = rank_path(args)
    if path is None:
        return run_stats(args, out)
    with open_source(path) as src:
        log = src.log
        first, last, live_first = log.first_index, log.last_index, log.live_first_index
        counts, op_bytes = Counter(), Counter()
        terms: dict[int, dict] = {}
        pace = WriterPace()
        damaged = []
        payload_total = header_total = 0
        for row in entry_rows(log, None, None, summaries=False):
            if row.damaged is not None:
                damaged.append(row.index)
                pace.broken()
                continue
            counts[row.op] += 1
            op_bytes[row.op] += row.payload_bytes
            payload_total += row.payload_bytes
            header_total += HEADER_SIZE + len(row.op.encode())
            term = terms.setdefault(row.term, {"term": row.term, "first_index": row.index,
                                               "time_ns": row.time_ns, "entries": 0})
            term["entries"] += 1
            pace.add(row.term, row.time_ns)
        snaps = snapshot_rows(src.store) if src.store is not None else []
        estimate = estimate_replay(log, src.store, pace, last).as_record()
        recorded = _recorded(src.root, log) if src.store is not None else None
    data_file = layout.lmdb_file(src.log_path)
    summary = {"section": "log", "path": str(src.log_path), "first_index": first, "live_first_index": live_first,
               "last_index": last,
               "entries": sum(counts.values()), "payload_bytes": payload_total, "header_bytes": header_total,
               "file_bytes": os.path.getsize(data_file), "damaged": damaged}
    env = _environment(src.root) if src.store is not None else None
    shipped = _replica(src.root, last, args) if src.store is not None else None
    runs = _runs(src.root) if src.store is not None else None
    status = EXIT_DAMAGE if damaged or (env is not None and env["damaged"]) else EXIT_OK
    if out.as_json:
        out.record(summary)
        for op, n in counts.most_common():
            out.record({"section": "op", "op": op, "count": n, "payload_bytes": op_bytes[op]})
        for term in terms.values():
            out.record({"section": "term", **term, "time": iso_time(term["time_ns"])})
        for snap in snaps:
            out.record({"section": "snapshot", **snap})
        if env is not None:
            out.record({"section": "environment", **env})
        if shipped is not None:
            out.record({"section": "replica", **shipped})
        if runs is not None:
            out.record({"section": "runs", **runs})
        for metric in recorded["metrics"] if recorded is not None else ():
            out.record({"section": "recorded", **metric})
        out.record({"section": "estimate", **estimate})
        return status

    out.line(f"log {src.log_path}: entries {first}..{last} ({summary['entries']} readable), "
             f"{human_bytes(payload_total)} payload + {human_bytes(header_total)} headers, "
             f"{human_bytes(summary['file_bytes'])} on disk (data.mdb, includes free pages)")
    if live_first > first:
        out.line(f"entries {first}..{live_first - 1} archived (sealed segments; compaction moved them out of LMDB)")
    if damaged:
        out.line(f"damaged entries: {', '.join(map(str, damaged))} (run `replay verify`)", style="bold red")
    total = sum(counts.values()) or 1
    out.table([Column("op", "op"), Column("count", "entries", right=True),
               Column("share", "share", lambda s: f"{s:.1%}", right=True),
               Column("payload_bytes", "payload", human_bytes, right=True)],
              [{"op": op, "count": n, "share": n / total, "payload_bytes": op_bytes[op]} for op, n in counts.most_common()],
              title="ops")
    out.table([Column("term", "term", right=True), Column("first_index", "first index", right=True),
               Column("time_ns", "started", local_time), Column("entries", "entries", right=True)],
              list(terms.values()), title="terms (each is a writer start)")
    if snaps:
        out.table(SNAPSHOT_COLUMNS, snaps, title="snapshots")
    elif src.store is not None:
        out.line("snapshots: none")
    if env is not None:
        _show_environment(env, out)
    if shipped is not None:
        _show_replica(shipped, out)
    if runs is not None:
        _show_runs(runs, out)
    if recorded is not None:
        _show_recorded(recorded, out)
    out.line(estimate["text"])
    return status


# ---- recorded scalars (replay/recorded.py): per metric count, first, last, min, max ----

def _recorded(root, log) -> dict | None:
    """The summary of the values ops recorded (None when none ever were); a file of another
    format is reported, not raised."""
    from replay.recorded import RecordedFileError, read_recorded

    try:
        found = read_recorded(root, log)
    except RecordedFileError as exc:
        return {"metrics": [], "skipped": 0, "stale": 0, "error": str(exc)}
    if not found.series and not found.stale:
        return None
    metrics = [{k: (None if isinstance(v, float) and v != v else v) for k, v in m.items()} for m in found.summary()]
    return {"metrics": metrics, "skipped": found.skipped, "stale": found.stale, "error": None}


def _show_recorded(recorded: dict, out: Output) -> None:
    if recorded["error"]:
        out.line(f"recorded values: cannot be read: {recorded['error']}", style="bold red")
        return
    value = lambda v: "nan" if v is None else f"{v:.6g}"  # noqa: E731
    out.table([Column("metric", "metric"), Column("count", "count", right=True),
               Column("first", "first", value, right=True), Column("last", "last", value, right=True),
               Column("min", "min", value, right=True), Column("max", "max", value, right=True),
               Column("last_index", "last index", right=True)],
              recorded["metrics"], title="recorded values (ops' record=; `replay report` plots them)")
    dropped = [f"{recorded['stale']} of entries no longer in the log"] if recorded["stale"] else []
    dropped += [f"{recorded['skipped']} unreadable line(s)"] if recorded["skipped"] else []
    if dropped:
        out.line(f"recorded values not shown: {', '.join(dropped)}")


def _runs(root) -> dict | None:
    """`replay run`'s attempts under root/supervisor/: the count per class and the last one (None without any)."""
    from replay.jsonfile import JsonFileError
    from replay.supervisor.records import read_attempts

    try:
        attempts, skipped = read_attempts(layout.supervisor_dir(root))
    except JsonFileError as exc:
        return {"attempts": 0, "classes": {}, "last": None, "skipped": 0, "error": str(exc)}
    if not attempts:
        return None
    return {"attempts": len(attempts), "classes": dict(Counter(str(a["class"]) for a in attempts)),
            "last": attempts[-1], "skipped": skipped, "error": None}


def _show_runs(runs: dict, out: Output) -> None:
    if runs["error"]:
        out.line(f"replay run attempts: cannot be read: {runs['error']}", style="bold red")
        return
    classes = ", ".join(f"{n} {name}" for name, n in sorted(runs["classes"].items(), key=lambda kv: -kv[1]))
    last = runs["last"]
    out.line(f"replay run: {runs['attempts']} attempt(s): {classes}; the last, attempt {last['attempt']}, "
             f"{last['class']} at durable index {last['index_end']} ({last['decision']}) - `replay runs` lists them")


def _replica(root, last: int, args) -> dict | None:
    """Where the journal replicates (DIR/replica.json) and how far its replica's head is
    behind the local log; None for a journal without a replica. The head is read from the
    store (``--replica-option`` gives S3 options); an unreachable one is said, not raised."""
    from replay.replica.head import ownership, read_head, read_record, recorded_url
    from replay.replica.objects import open_store

    try:
        url = recorded_url(Path(root))
    except ValueError as exc:
        return {"url": None, "error": str(exc)}
    if url is None:
        return None
    record = read_record(Path(root), url)
    try:
        with open_store(url, replica_options(args), readonly=True) as store:  # a reader creates nothing
            found = read_head(store)
    except Exception as exc:  # noqa: BLE001 - an unreachable or damaged replica is reported, the stats go on
        return {"url": url, "error": f"{type(exc).__name__}: {exc}"}
    if found is None:
        return {"url": url, "head_index": None, "lag_entries": last, "owned": False}
    head, etag = found
    holder = ownership(record, head, etag)
    return {"url": url, "head_index": head.index, "head_term": head.term, "lag_entries": max(0, last - head.index),
            "head_time": head.time, "writer": holder}


def _show_replica(shipped: dict, out: Output) -> None:
    if shipped.get("error"):
        out.line(f"replica {shipped.get('url')}: cannot read its head: {shipped['error']}", style="bold red")
    elif shipped["head_index"] is None:
        out.line(f"replica {shipped['url']}: nothing shipped yet ({shipped['lag_entries']} entries behind)")
    else:
        owner = {"this": "this journal writes it",
                 "claimed": "restored from it: this journal takes it over when it opens",
                 "another": "ANOTHER writer holds it (this journal is fenced)"}[shipped["writer"]]
        out.line(f"replica {shipped['url']}: head at index {shipped['head_index']} (term {shipped['head_term']}, "
                 f"written {local_time(int(shipped['head_time'] * 1e9))}), {shipped['lag_entries']} entries behind "
                 f"the local log; {owner}")


def _environment(root) -> dict:
    """The fingerprint the journal recorded when it was created, and where this machine differs
    (replay here may not be bit-exact there); a damaged or hostile file is reported as damage.
    Only the machine's fields are compared: this process's threads and flags are not the run's."""
    try:
        recorded = environment.recorded(root)
    except environment.EnvironmentFileError as exc:
        return {"recorded": None, "damaged": str(exc), "differs_here": []}
    if recorded is None:
        return {"recorded": None, "damaged": None, "differs_here": []}
    device = "cuda" if recorded.get("device_type") == "cuda" and _cuda_available() else "cpu"
    return {"recorded": recorded, "damaged": None,
            "differs_here": environment.machine_differences(recorded, environment.fingerprint(device))}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _show_environment(env: dict, out: Output) -> None:
    if env["damaged"]:
        out.line(f"environment: DAMAGED: {env['damaged']}", style="bold red")
        return
    if env["recorded"] is None:
        out.line("environment: none recorded (a journal created before fingerprints were kept)")
        return
    fields = ", ".join(f"{key}={value}" for key, value in env["recorded"].items() if key != "format")
    out.line(f"environment when created: {fields}")
    if env["differs_here"]:
        out.line("differs on this machine (replay here may not be bit-exact): " + "; ".join(env["differs_here"]),
                 style="yellow")
    else:
        out.line("this machine matches it")
    out.line("(threads and determinism flags are the training process's own: Journal.open compares those "
             "when the run resumes)")
