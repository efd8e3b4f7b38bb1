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
  block of steps and a journaled block (bench/apply.py, `bench_steps`); overhead =
  journal block / bare block - 1, in wall time and in process CPU time. Target <= 2%.

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
    p.add_argument("--quick", action="store_true", help="a smoke run: a few rounds of everything")
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.sync_n, args.sync_rounds, args.burst_n, args.burst_rounds = 20, 2, 3000, 1
        args.runs, args.block, args.step_rounds = 1, 10, 2
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
                          "step_ms": args.step_ms, "block": args.block, "step_rounds": args.step_rounds,
                          "trees": {k: str(v) for k, v in trees.items()}},
               "targets": {"sync_vs_raw_lmdb": f">= {SYNC_TARGET}",
                           "group_burst_vs_sqlite": f">= {GROUP_VS_SQLITE_TARGET}",
                           "apply_overhead_group_pct": f"<= {APPLY_TARGET_PCT}"},
               "log_rows": {name: [] for name in trees}}
    work = Workdir(args.dir or default_dir(), "bench-commit-")
    try:
        for run in range(args.runs):
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
