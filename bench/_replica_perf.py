"""Issue 22's replica rows, for ``python -m bench replica --perf``: each against its peer, in
interleaved rounds, reported as medians of per-round ratios with their spread.

1. ``catchup``: a journal with a backlog (16 KiB random payloads, a snapshot every 500
   entries, 300 entries after the last) is shipped to an empty ``file://`` replica by a
   bare Shipper (started on the open journal, timed until its index reaches the journal's)
   against ``copytree`` of the same journal directory followed by an fsync of every file
   and directory (what a careful copy to a shared filesystem costs). Ratio: copytree+fsync
   seconds / shipper seconds (the shipper's speed as a fraction of the copy's; issue 22
   asks >= 0.5).
2. ``restore``: ``restore`` of that replica into an empty directory then ``Journal.open``
   there, against ``Journal.open`` of a copy of the original directory (local recovery:
   same snapshot, same entries replayed); ratio restore+open / local (issue 22: <= 3).
3. ``memory``: a replica of MiB of segments well beyond 64 MiB is restored in a child
   process: peak RSS growth during the restore (VmHWM after, reset through
   /proc/self/clear_refs before, minus VmRSS before: page cache is not counted, mapped
   LMDB pages touched are) and the tracemalloc peak of a second restore in the same child.

Rounds alternate which arm runs first. Load averages are recorded with every round.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ._common import REPO

MIB = 2**20
RECORD = 4096  # float32 values per payload: 16 KiB
pc = time.perf_counter


def _ops(replay):
    ops = replay.Ops()

    @ops.op
    def record(state, *, values):
        state["acc"].add_(values)

    return ops


def _state(torch):
    return {"acc": torch.zeros(RECORD)}


def _open(path, **kw):
    import torch

    import replay
    return replay.Journal.open(path, state=_state(torch), ops=_ops(replay), durability="group",
                               snapshot=replay.Every(entries=10**9), progress=False, snapshot_on_close=False,
                               environment="ignore", **kw)


def write_journal(path: Path, entries: int, every: int | None = 500) -> dict:
    """A journal of `entries` entries of 16 KiB: an explicit snapshot after every `every`-th (each
    compacts the log into the archive; None: only the initial snapshot, nothing compacted).
    The last 300 entries (or fewer) come after the last snapshot, so recovery replays them."""
    import torch
    g = torch.Generator().manual_seed(11)
    last_snapshot = (entries - 300) // every * every if every else 0
    started = pc()
    with _open(path) as journal:
        for i in range(1, entries + 1):
            journal.apply("record", values=torch.randn(RECORD, generator=g))
            if every and i % every == 0 and i <= last_snapshot:
                journal.snapshot()
        index = journal.index
        segments = len(journal.log.segments())
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"entries": index, "archive_files": segments, "journal_mib": round(size / MIB, 1),
            "write_s": round(pc() - started, 1)}


def entries_for(mib: int, every: int = 500) -> int:
    """About `mib` MiB of entries: whole `every`s, plus 300 after the last snapshot."""
    return max(1, mib * MIB // (RECORD * 4) // every) * every + 300


def copytree_fsync(source: Path, target: Path) -> float:
    """Seconds to copy `source` to `target` and fsync every file and directory of the copy."""
    t = pc()
    shutil.copytree(source, target)
    for root, dirs, files in os.walk(target):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return pc() - t


def ship(journal_dir: Path, replica: Path) -> tuple[float, dict]:
    """Seconds for a fresh Shipper to bring an empty file:// replica up to the journal's index."""
    from replay.replica.objects import open_store
    from replay.replica.shipper import Shipper
    with _open(journal_dir) as journal:
        store = open_store(replica.as_uri())
        shipper = Shipper(store, journal.path, journal.log, journal.snapshots,
                          lambda: min(journal.log.durable_index, journal.index), interval=0.05,
                          term=journal.log.term, collect_every=None)
        t = pc()
        shipper.start()
        shipper.wait(journal.index, timeout=600)
        elapsed = pc() - t
        status = shipper.status()
        shipper.close(60)
    return elapsed, {"uploads": status.uploads, "mib": round(status.bytes / MIB, 1)}


def _ratios(rows, num, den):
    ratios = [r[num] / r[den] for r in rows]
    return {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
            "max": round(max(ratios), 3), "per_round": [round(x, 3) for x in ratios]}


def bench_catchup(work, source: Path, rounds: int) -> dict:
    rows = []
    for r in range(rounds):
        row = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
        arms = ["copy", "ship"] if r % 2 == 0 else ["ship", "copy"]
        for arm in arms:
            if arm == "copy":
                target = work.new("copytree")
                row["copytree_fsync_s"] = round(copytree_fsync(source, target), 4)
                work.drop(target)
            else:
                copy = work.new("ship-src")
                shutil.copytree(source, copy)
                replica = work.new("ship-replica")
                row["ship_s"], info = ship(copy, replica)
                row["ship_s"] = round(row["ship_s"], 4)
                row.update(info)
                work.drop(copy)
                work.drop(replica)
        rows.append(row)
        print(f"[catchup] round {r + 1}/{rounds}: {row}", file=sys.stderr, flush=True)
    return {"copytree_fsync_over_ship": _ratios(rows, "copytree_fsync_s", "ship_s"),
            "ship_over_copytree_fsync": _ratios(rows, "ship_s", "copytree_fsync_s"),
            "ship_s_median": statistics.median(r["ship_s"] for r in rows),
            "copytree_fsync_s_median": statistics.median(r["copytree_fsync_s"] for r in rows),
            "rounds": rows}


def bench_restore(work, source: Path, rounds: int) -> dict:
    from replay.replica.restore import restore
    replica = work.new("restore-replica")
    copy = work.new("restore-src")
    shutil.copytree(source, copy)
    ship(copy, replica)
    rows = []
    for r in range(rounds):
        row = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
        for arm in (["local", "restore"] if r % 2 == 0 else ["restore", "local"]):
            if arm == "local":
                local = work.new("local")
                shutil.copytree(source, local)
                t = pc()
                with _open(local) as journal:
                    row["local_open_s"] = round(pc() - t, 4)
                    row["local_replayed"] = journal.recovery.entries_replayed
                work.drop(local)
            else:
                target = work.new("restored")
                t = pc()
                report = restore(replica.as_uri(), target)
                row["restore_s"] = round(pc() - t, 4)
                t = pc()
                with _open(target) as journal:
                    row["open_s"] = round(pc() - t, 4)
                    row["restored_replayed"] = journal.recovery.entries_replayed
                row["restore_and_open_s"] = round(row["restore_s"] + row["open_s"], 4)
                row["segments"], row["mib_read"] = report.segments, round(report.bytes / MIB, 2)
                work.drop(target)
        rows.append(row)
        print(f"[restore] round {r + 1}/{rounds}: {row}", file=sys.stderr, flush=True)
    work.drop(replica)
    work.drop(copy)
    return {"restore_and_open_over_local": _ratios(rows, "restore_and_open_s", "local_open_s"),
            "restore_over_local": _ratios(rows, "restore_s", "local_open_s"), "rounds": rows}


_CHILD = r"""
import json, sys, tracemalloc, shutil
from replay.replica.restore import restore

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

url, target = sys.argv[1], sys.argv[2]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets this process's peak RSS (VmHWM) to its current RSS: the imports' peak is forgotten
before = status("VmRSS")
report = restore(url, target)
after = status("VmHWM")
shutil.rmtree(target)
tracemalloc.start()
restore(url, target)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
shutil.rmtree(target)
print(json.dumps({"rss_before_kib": before, "rss_peak_kib": after, "tracemalloc_peak": peak,
                  "segments": report.segments, "bytes_read": report.bytes}))
"""


def bench_memory(work, mib: int) -> dict:
    """Peak memory of restoring a replica of ~`mib` MiB of segments, in a child process."""
    source = work.new("memory-src")
    print(f"[memory] writing a {mib} MiB journal", file=sys.stderr, flush=True)
    # One snapshot (index 0) and no compaction: every entry is in the restore's segments.
    written = write_journal(source, entries_for(mib, 1), every=None)
    replica = work.new("memory-replica")
    ship_s, info = ship(source, replica)
    segments = sorted((replica / "segments").iterdir())
    sizes = [p.stat().st_size for p in segments]
    target = work.new("memory-restored")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _CHILD, replica.as_uri(), str(target)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed: {out.stderr[-2000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    work.drop(source)
    work.drop(replica)
    return {"journal": written, "ship_s": round(ship_s, 2), "replica_segments": len(sizes),
            "replica_segment_mib": round(sum(sizes) / MIB, 1), "largest_segment_mib": round(max(sizes) / MIB, 1),
            "rss_growth_mib": round((got["rss_peak_kib"] - got["rss_before_kib"]) / 1024, 1),
            "tracemalloc_peak_mib": round(got["tracemalloc_peak"] / MIB, 2), "child": got,
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def run(work, rounds: int, backlog_mib: int, memory_mib: int) -> dict:
    """Every section; the dict that goes under "issue22" in bench/results/replica.json."""
    source = work.new("backlog")
    print(f"[perf] writing a {backlog_mib} MiB journal", file=sys.stderr, flush=True)
    out = {"journal": write_journal(source, entries_for(backlog_mib)), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    out["catchup"] = bench_catchup(work, source, rounds)
    out["restore"] = bench_restore(work, source, rounds)
    if memory_mib:
        out["memory"] = bench_memory(work, memory_mib)
    out["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["maxrss_parent_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def print_report(res: dict) -> None:
    c, r = res["catchup"], res["restore"]
    print(f"\nissue 22, replica rows (journal {res['journal']}; load {res['loadavg_at_start']} -> "
          f"{res['loadavg_at_end']})")
    print(f"catch-up: shipper {c['ship_s_median']:.3f} s vs copytree+fsync {c['copytree_fsync_s_median']:.3f} s; "
          f"copytree/ship per round median {c['copytree_fsync_over_ship']['median']} "
          f"[{c['copytree_fsync_over_ship']['min']}, {c['copytree_fsync_over_ship']['max']}] (target >= 0.5)")
    x = r["restore_and_open_over_local"]
    print(f"restore+open / local recovery open: median {x['median']} [{x['min']}, {x['max']}] (target <= 3)")
    if "memory" in res:
        m = res["memory"]
        print(f"memory: restore of {m['replica_segment_mib']} MiB in {m['replica_segments']} segments: RSS growth "
              f"{m['rss_growth_mib']} MiB, tracemalloc peak {m['tracemalloc_peak_mib']} MiB")
