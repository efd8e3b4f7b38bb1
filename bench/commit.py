"""Issue 22's commit rows in one run: ``python -m bench commit [--baseline TREE] [--quick]``.

Three figures, each the median of per-round ratios with its quartiles and the load
average (1 min) at every round, because this machine is shared and its load moves:

- **sync append / raw py-lmdb**: one ``EventLog.append`` (durability="sync") against one
  ``put(append=True)`` + commit of a value as large as our framed entry, both with
  ``sync=True, metasync=True``; rounds of ``--sync-n`` writes, the two alternating which
  goes first (bench/log.py, `commit_rows`). Target >= 0.9.
- **group burst / SQLite WAL FULL**: ``--burst-n`` group appends then ``flush()``,
  against SQLite WAL ``synchronous=FULL`` inserting the same rows in transactions of the
  batch size our burst reached (``executemany``), per round. Target >= 1.0.
- **journal.apply around a 5 ms compute step** (group): a child process alternates a bare
  block of steps and a journaled block (bench/apply.py, `bench_steps`). Deciding figure:
  ``cpu_net``, the CPU the journal adds per step in every thread over the handler's own
  CPU per step (bench/apply.py's STEP_NOTE); journal block / bare block - 1 in wall and
  process CPU time are reported too. Also commits per step and the flusher's CPU per
  commit: the flusher commits by the clock, so its share per step grows with the wall
  time a step takes on a loaded machine. Target <= 2%.

- **sync append / raw py-lmdb, block-interleaved** (the figure that decides the sync row):
  a child process per tree alternates blocks of ``--sync-block`` appends (ours) and the
  same number of raw put+commits (same flags, same value size), which one goes first
  alternating per block, for ``--sync-blocks`` blocks. Per block: throughput ratio
  ours/raw in wall time (raw block time / ours) and in process CPU time (raw CPU / ours).
  Medians and quartiles of per-block ratios: fdatasync latency on a shared VM moves by
  several times within a second, so a round of 100 writes per peer compares two different
  disks; a block of a few writes each, many times over, compares the same one.

With ``--baseline TREE`` (another checkout, e.g. /work/main) every figure is taken for
that tree too, alternating with this one, so both share the machine's load: the apply
children run with ``PYTHONPATH=TREE``, and the log rows run as ``python -m bench log
--commit`` inside TREE. Results: bench/results/commit.json. A benchmark, not a test:
nothing here asserts time.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb

from ._common import REPO, Workdir, finish, machine_info
from .apply import bench_steps, say_step_rows
from .log import GROUP_VS_SQLITE_TARGET, SYNC_TARGET, commit_rows, default_dir

RESULTS = Path(__file__).parent / "results" / "commit.json"

# Run with PYTHONPATH=<tree>: that tree's EventLog against raw py-lmdb, public API only.
SYNC_CHILD = r"""
import json, os, sys, time
import lmdb
from eventlog import EventLog

work, size, value_size, block, blocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pc, cpu = time.perf_counter, time.process_time
payload = {"data": os.urandom(size)}  # bench/log.py make_payload
log = EventLog.open(os.path.join(work, "ours"), durability="sync")
env = lmdb.open(os.path.join(work, "raw"), subdir=True, max_dbs=2, map_size=256 * 2**20, sync=True, metasync=True,
                lock=True, readahead=False, meminit=False, max_spare_txns=2)  # the flags sync mode opens with
db = env.open_db(b"entries")
value = os.urandom(value_size)
state = {"raw": 0}

def ours(k):
    append = log.append
    for _ in range(k):
        append("op", payload)

def raw(k):
    i = state["raw"]
    for _ in range(k):
        i += 1
        with env.begin(write=True, db=db) as txn:
            txn.put(i.to_bytes(8, "big"), value, append=True)
    state["raw"] = i

def timed(fn, k):
    t, c = pc(), cpu()
    fn(k)
    return pc() - t, cpu() - c

ours(20); raw(20)
out = {"blocks": []}
for b in range(blocks):
    if b % 2:
        o = timed(ours, block); r = timed(raw, block)
    else:
        r = timed(raw, block); o = timed(ours, block)
    out["blocks"].append([o, r])
log.close(); env.close()
print("RESULT " + json.dumps(out))
"""
APPLY_TARGET_PCT = 2.0


def _uptime() -> str:
    """`uptime`'s line (what the machine was doing), or the load averages if it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _log_rows_in(tree: Path, size: int, args) -> dict:
    """The log rows measured by `tree`'s own code: ``python -m bench log --commit`` run there."""
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as scratch:
        out = Path(scratch) / "rows.json"
        cmd = [sys.executable, "-m", "bench", "log", "--commit", "--sizes", str(size),
               "--sync-n", str(args.sync_n), "--sync-rounds", str(args.sync_rounds),
               "--burst-n", str(args.burst_n), "--burst-rounds", str(args.burst_rounds),
               "--paced-steps", "0", "--dir", str(args.dir or default_dir()), "--json", str(out)]
        done = subprocess.run(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True,
                              text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"bench log --commit in {tree} failed: {done.stderr[-2000:]}")
        return json.loads(out.read_text())["sizes"][str(size)]


def _sync_child(tree: Path, work: Path, size: int, block: int, blocks: int) -> list:
    """[(ours (wall, cpu), raw (wall, cpu)), ...] per block, measured by `tree`'s code (SYNC_CHILD)."""
    from .log import framed_value_size, make_payload

    work.mkdir(parents=True)
    cmd = [sys.executable, "-c", SYNC_CHILD, str(work), str(size), str(framed_value_size(make_payload(size))),
           str(block), str(blocks)]
    done = subprocess.run(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True,
                          timeout=1800)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"sync child for {tree} failed: {done.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])["blocks"]


def _quartiles(values: list[float], digits: int = 3) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": round(statistics.median(values), digits), "q1": round(q[0], digits),
            "q3": round(q[2], digits), "n": len(values)}


def sync_blocks(work: Workdir, trees: dict[str, Path], size: int, block: int, blocks: int, runs: int) -> dict:
    """Per tree: the block-interleaved sync append figures (module doc), with the load at each child."""
    got = {name: [] for name in trees}
    load = []
    for run in range(runs):
        for name in (list(trees) if run % 2 == 0 else list(trees)[::-1]):
            load.append({"tree": name, "uptime": _uptime()})
            got[name] += _sync_child(trees[name], work.new(f"sync-{name}"), size, block, blocks)
    out = {"block": block, "blocks_per_child": blocks, "children_per_tree": runs, "load": load, "trees": {}}
    for name, rows in got.items():
        out["trees"][name] = {
            "wall_ratio": _quartiles([r[0] / o[0] for o, r in rows]),
            "cpu_ratio": _quartiles([r[1] / o[1] for o, r in rows]),
            "ours_us_per_append": {"wall": _quartiles([o[0] / block * 1e6 for o, _ in rows], 1),
                                   "cpu": _quartiles([o[1] / block * 1e6 for o, _ in rows], 1)},
            "raw_us_per_put": {"wall": _quartiles([r[0] / block * 1e6 for _, r in rows], 1),
                               "cpu": _quartiles([r[1] / block * 1e6 for _, r in rows], 1)}}
    return out


def _say_sync(size: int, figures: dict) -> None:
    print(f"sync append / raw py-lmdb, {size} B, blocks of {figures['block']} interleaved (target >= {SYNC_TARGET}):")
    for name, f in figures["trees"].items():
        w, c = f["wall_ratio"], f["cpu_ratio"]
        print(f"  {name:<9} wall {w['median']} (q1 {w['q1']}, q3 {w['q3']}, {w['n']} blocks)  cpu {c['median']} "
              f"(q1 {c['q1']}, q3 {c['q3']}); per append: ours {f['ours_us_per_append']['wall']['median']} us wall / "
              f"{f['ours_us_per_append']['cpu']['median']} us cpu, raw {f['raw_us_per_put']['wall']['median']} / "
              f"{f['raw_us_per_put']['cpu']['median']} us")
    print("  load: " + "; ".join(f"{x['tree']}: {x['uptime'].split('load average:')[-1].strip()}" for x in figures["load"]),
          flush=True)


def _say_rows(tree: str, size: int, rows: dict) -> None:
    s, g = rows["sync_vs_raw_lmdb"], rows["group_burst_vs_sqlite"]
    print(f"{tree:<9} [{size} B] sync append / raw lmdb: median {s['median']} (q1 {s['q1']}, q3 {s['q3']}, "
          f"min {s['min']}, max {s['max']}, {s['rounds']} rounds; target >= {SYNC_TARGET}; load {s['loadavg_1min']})")
    print(f"{tree:<9} [{size} B] group burst / SQLite WAL FULL @ batch: median {g['median']} (q1 {g['q1']}, "
          f"q3 {g['q3']}, {g['rounds']} rounds; ours {g['ours_per_s']}/s, sqlite {g['sqlite_per_s']}/s, batches "
          f"{g['avg_batch']}; target >= {GROUP_VS_SQLITE_TARGET}; load {g['loadavg_1min']})", flush=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench commit", description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="another tree (e.g. /work/main) measured alternately")
    p.add_argument("--size", type=int, default=256, help="payload bytes of the log rows")
    p.add_argument("--sync-n", type=int, default=100, help="sync writes per peer per round")
    p.add_argument("--sync-rounds", type=int, default=10)
    p.add_argument("--burst-n", type=int, default=30000)
    p.add_argument("--burst-rounds", type=int, default=4)
    p.add_argument("--runs", type=int, default=2, help="alternations of this tree and the baseline")
    p.add_argument("--step-ms", type=float, default=5.0)
    p.add_argument("--block", type=int, default=40, help="apply: steps per block")
    p.add_argument("--step-rounds", type=int, default=6, help="apply: rounds per child process")
    p.add_argument("--sync-block", type=int, default=5, help="sync blocks: appends per peer per block")
    p.add_argument("--sync-blocks", type=int, default=200, help="sync blocks: blocks per child process")
    p.add_argument("--no-log-rows", action="store_true",
                   help="skip the per-round log rows (bench log --commit): sync blocks and apply only")
    p.add_argument("--quick", action="store_true", help="a smoke run: a few rounds of everything")
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.sync_n, args.sync_rounds, args.burst_n, args.burst_rounds = 20, 2, 3000, 1
        args.runs, args.block, args.step_rounds, args.sync_blocks = 1, 10, 2, 10
    trees = {"this": REPO}
    if args.baseline:
        trees["baseline"] = Path(args.baseline).resolve()
    started = time.time()
    results = {"benchmark": "commit",
               "machine": machine_info(args.dir or default_dir(), ("eventlog", "replay"),
                                       lmdb=f"py-lmdb {lmdb.__version__}", sqlite=sqlite3.sqlite_version),
               "uptime_at_start": _uptime(),
               "config": {"size": args.size, "sync_n": args.sync_n, "sync_rounds": args.sync_rounds,
                          "burst_n": args.burst_n, "burst_rounds": args.burst_rounds, "runs": args.runs,
                          "sync_block": args.sync_block, "sync_blocks": args.sync_blocks,
                          "step_ms": args.step_ms, "block": args.block, "step_rounds": args.step_rounds,
                          "trees": {k: str(v) for k, v in trees.items()}},
               "targets": {"sync_vs_raw_lmdb": f">= {SYNC_TARGET}",
                           "group_burst_vs_sqlite": f">= {GROUP_VS_SQLITE_TARGET}",
                           "apply_overhead_group_pct": f"<= {APPLY_TARGET_PCT}"},
               "log_rows": {name: [] for name in trees}}
    work = Workdir(args.dir or default_dir(), "bench-commit-")
    try:
        results["sync_blocks"] = sync_blocks(work, trees, args.size, args.sync_block, args.sync_blocks, args.runs)
        _say_sync(args.size, results["sync_blocks"])
        for run in range(0 if args.no_log_rows else args.runs):
            for name in (list(trees) if run % 2 == 0 else list(trees)[::-1]):
                if name == "this":
                    rows = commit_rows(work, args.size, args.sync_n, args.sync_rounds, args.burst_n, args.burst_rounds)
                else:
                    rows = _log_rows_in(trees[name], args.size, args)
                results["log_rows"][name].append(rows)
                _say_rows(name, args.size, rows)
        steps = bench_steps(work, {k: str(v) for k, v in trees.items()}, ["group"], args.step_ms, args.block,
                            args.step_rounds, args.runs)
        results["apply_steps"] = steps
        print(f"journal.apply around a {args.step_ms:g} ms step, group (load per child {steps['loadavg_1min_per_run']}; "
              f"target <= {APPLY_TARGET_PCT}%, cpu_net decides):")
        for name, row in steps["trees"].items():
            say_step_rows(name, "group", row)
    finally:
        work.close()
    results["uptime_at_end"] = _uptime()
    print(f"uptime at start: {results['uptime_at_start']}\nuptime at end:   {results['uptime_at_end']}")
    finish(results, args.json, started, time.time())
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
