"""Benchmark multi-rank journals against single-rank ones: ``python -m bench ranks [--quick]``.

Every measurement runs real processes talking gloo over 127.0.0.1, forked from a
forkserver that has imported torch and replay once (so a group starts in well under a
second instead of paying the imports per process). Each rank holds the same state (an
``nn.Embedding`` table, ``--rows`` x 16 fp32) updated by ``update_rows(state, *, rows,
values)`` ops writing 4 rows; a rank's ops and payloads are its own.

1. The cut and the coordinated snapshot. N=2 ranks of a multi-rank journal apply the
   same steps as N=2 independent single-rank journals running at the same time (same
   process count, same state size per process, same CPU contention): the time of each
   ``flush()`` (multi-rank: the local flush plus one all_gather of small ints, the cut)
   and of each ``snapshot(wait=True)`` (multi-rank: plus the confirmation gather) per
   rank, and the whole loop's time.
2. Recovery vs ranks: N = 1 (a single-rank journal), 2, 3, 4 processes each write the
   same log length after the initial snapshot and close without a final snapshot; a
   new group then opens (recovers) them. Reported: the slowest rank's open time, its
   ``recovery.seconds`` (snapshot load + replay, in lockstep for N > 1) and the ratio to
   N = 1. With more processes than this machine's cores, the ratio includes contention.
3. Apply overhead: ``journal.apply`` per op, multi-rank vs single-rank (2 processes
   each, as in 1), at a policy with ``seconds=`` (each apply decides on the snapshot
   with one small all_gather: the ranks' clocks differ) and with ``entries=`` only
   (decided by index alone: no collective).

Directories live under ``.bench-tmp/`` and are removed afterwards. Results go to
``bench/results/ranks.json`` and a table on stdout. Not a test: nothing asserts time.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from ._common import REPO, Workdir, finish, fmt, machine_info, ms, pct

RESULTS = Path(__file__).parent / "results" / "ranks.json"
DIM, ROWS_PER_OP = 16, 4
say = (lambda *a: print(*a, file=sys.stderr, flush=True))


# ---------------------------------------------------------------------- in every rank


class Table:
    """One rank's state and op: an embedding table updated a few rows at a time."""

    def __init__(self, rows: int, rank: int):
        import replay

        torch.manual_seed(rank)
        self.rows = rows
        self.emb = torch.nn.Embedding(rows, DIM)
        self.state = {"emb": self.emb}
        self.ops = replay.Ops()
        self.ops.op(self.update_rows)
        g = torch.Generator().manual_seed(1000 + rank)
        self._values = [torch.randn(ROWS_PER_OP, DIM, generator=g) for _ in range(64)]
        self.rank = rank

    @staticmethod
    def update_rows(state, *, rows, values):
        with torch.no_grad():
            state["emb"].weight.index_copy_(0, torch.as_tensor(rows, dtype=torch.long), values)

    def payload(self, i: int) -> dict:
        return {"rows": [(i * 7919 + k * 104_729 + self.rank * 31) % self.rows for k in range(ROWS_PER_OP)],
                "values": self._values[i % len(self._values)]}


def _open(table: Table, root: Path, group, rank: int, **options):
    import replay

    path = root if group is not None else root / f"single-{rank}"
    return replay.Journal.open(path, state=table.state, ops=table.ops, group=group, progress=False, **options)


def task_work(rank, root, group, cfg) -> dict:
    """Part 1: apply `steps`, flush every `flush_every`, snapshot every `snapshot_every`; time them."""
    import replay

    table = Table(cfg["rows"], rank)
    journal = _open(table, root, group, rank, snapshot=replay.Every(entries=10**9), snapshot_on_close=False)
    flushes, snapshots = [], []
    _barrier(group)
    started = time.perf_counter()
    for i in range(cfg["steps"]):
        journal.apply("update_rows", **table.payload(i))
        if (i + 1) % cfg["flush_every"] == 0:
            t = time.perf_counter()
            journal.flush()
            flushes.append(time.perf_counter() - t)
        if (i + 1) % cfg["snapshot_every"] == 0:
            t = time.perf_counter()
            journal.snapshot(wait=True)
            snapshots.append(time.perf_counter() - t)
    total = time.perf_counter() - started
    journal.close()
    return {"flush_s": flushes, "snapshot_s": snapshots, "loop_s": total}


def task_fill(rank, root, group, cfg) -> dict:
    """Part 2, first group: the initial snapshot, then `entries` entries, closed without a snapshot."""
    import replay

    table = Table(cfg["rows"], rank)
    journal = _open(table, root, group, rank, snapshot=replay.Every(entries=10**9), snapshot_on_close=False)
    for i in range(cfg["entries"]):
        journal.apply("update_rows", **table.payload(i))
    journal.close()
    return {"index": journal.index}


def task_reopen(rank, root, group, cfg) -> dict:
    """Part 2, second group: open (recover) and report how long it took."""
    import replay

    table = Table(cfg["rows"], rank)
    _barrier(group)
    started, cpu = time.perf_counter(), time.process_time()
    journal = _open(table, root, group, rank, snapshot=replay.Every(entries=10**9), snapshot_on_close=False)
    opened, cpu = time.perf_counter() - started, time.process_time() - cpu
    r = journal.recovery
    journal.close()
    return {"open_s": opened, "open_cpu_s": cpu, "recovery_s": r.seconds, "load_s": r.load_seconds, "replay_s": r.replay_seconds,
            "replayed": len(r.replayed), "index": journal.index}


def task_apply(rank, root, group, cfg) -> dict:
    """Part 3: the per-apply time at a snapshot policy that never fires during the measurement."""
    import replay

    policy = replay.Every(seconds=3600) if cfg["policy"] == "seconds" else replay.Every(entries=10**9)
    table = Table(cfg["rows"], rank)
    journal = _open(table, root, group, rank, snapshot=policy, snapshot_on_close=False)
    for i in range(cfg["warmup"]):
        journal.apply("update_rows", **table.payload(i))
    _barrier(group)
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(cfg["warmup"], cfg["warmup"] + cfg["applies"]):
        journal.apply("update_rows", **table.payload(i))
    per_apply = (time.perf_counter() - started) / cfg["applies"]
    cpu_per_apply = (time.process_time() - cpu) / cfg["applies"]
    journal.close()
    return {"apply_s": per_apply, "apply_cpu_s": cpu_per_apply}


TASKS = {"work": task_work, "fill": task_fill, "reopen": task_reopen, "apply": task_apply}


def _barrier(group) -> None:
    if group is not None:
        import torch.distributed as dist

        dist.barrier(group=group)


def _rank_main(task: str, rank: int, world: int, multi: bool, port: int, root: str, cfg: dict, queue) -> None:
    """A forked process: join the gloo group (multi) or stay alone, run `task`, report on `queue`."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    group = None
    try:
        if multi:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=60))
            group = dist.group.WORLD
        queue.put((rank, TASKS[task](rank, Path(root), group, cfg), None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the run
        queue.put((rank, None, traceback.format_exc()))
    finally:
        if group is not None:
            dist.destroy_process_group()


# ---------------------------------------------------------------------- the parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(ctx, task: str, world: int, multi: bool, root: Path, cfg: dict) -> list[dict]:
    """Run `task` in `world` processes (one gloo group if `multi`, else independent ones); results by rank."""
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(task, r, world, multi, port, str(root), cfg, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    results, errors = {}, []
    for _ in procs:
        rank, result, error = queue.get(timeout=300)
        results[rank] = result
        if error:
            errors.append(f"rank {rank}: {error}")
    for p in procs:
        p.join(timeout=60)
    if errors:
        raise RuntimeError(f"{task} ({'multi' if multi else 'single'}, {world} processes) failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world)]


def _order(n: int) -> tuple[str, str]:
    """The arms' order in repeat n: alternating, so neither always runs first."""
    return ("single", "multi") if n % 2 == 0 else ("multi", "single")


def part_cut_and_snapshot(ctx, work: Workdir, cfg: dict, repeats: int) -> dict:
    arms = {"multi": [], "single": []}
    for n in range(repeats):
        for arm in _order(n):
            root = work.new(f"work-{arm}")
            arms[arm].extend(run_group(ctx, "work", 2, arm == "multi", root, cfg))
            work.drop(root)
    out = {}
    for arm, rows in arms.items():
        flushes = [t for row in rows for t in row["flush_s"]]
        snaps = [t for row in rows for t in row["snapshot_s"]]
        out[arm] = {"flush_ms_p50": ms(pct(flushes, 50)), "flush_ms_p90": ms(pct(flushes, 90)),
                    "snapshot_ms_p50": ms(pct(snaps, 50)), "snapshot_ms_p90": ms(pct(snaps, 90)),
                    "loop_s_median": round(statistics.median(row["loop_s"] for row in rows), 3),
                    "flushes": len(flushes), "snapshots": len(snaps)}
    out["ratio"] = {key: round(out["multi"][key] / out["single"][key], 2) if out["single"][key] else None
                    for key in ("flush_ms_p50", "snapshot_ms_p50", "loop_s_median")}
    return out


def part_recovery(ctx, work: Workdir, cfg: dict, worlds: list[int], repeats: int) -> dict:
    points = []
    for world in worlds:
        runs = []
        for _ in range(repeats):
            root = work.new(f"recover-{world}")
            multi = world > 1
            run_group(ctx, "fill", world, multi, root, cfg)
            rows = run_group(ctx, "reopen", world, multi, root, cfg)
            if len({row["index"] for row in rows}) != 1:
                raise RuntimeError(f"ranks recovered to different indexes: {[row['index'] for row in rows]}")
            runs.append({"open_s": max(r["open_s"] for r in rows), "open_cpu_s": max(r["open_cpu_s"] for r in rows),
                         "recovery_s": max(r["recovery_s"] for r in rows),
                         "load_s": max(r["load_s"] for r in rows), "replay_s": max(r["replay_s"] for r in rows),
                         "replayed": rows[0]["replayed"]})
            work.drop(root)
        point = {"ranks": world, **{k: round(statistics.median(run[k] for run in runs), 4)
                                    for k in ("open_s", "open_cpu_s", "recovery_s", "load_s", "replay_s")},
                 "entries_replayed": runs[0]["replayed"]}
        points.append(point)
    base = points[0]
    for point in points:
        point["open_ratio_vs_1"] = round(point["open_s"] / base["open_s"], 2)
        point["recovery_ratio_vs_1"] = round(point["recovery_s"] / base["recovery_s"], 2)
        point["open_cpu_ratio_vs_1"] = round(point["open_cpu_s"] / base["open_cpu_s"], 2)
    return {"entries": cfg["entries"], "points": points}


def part_apply(ctx, work: Workdir, cfg: dict, repeats: int) -> dict:
    out = {}
    for policy in ("seconds", "entries"):
        per = {"multi": [], "single": []}
        cpu = {"multi": [], "single": []}
        for n in range(repeats):
            for arm in _order(n):
                root = work.new(f"apply-{policy}-{arm}")
                rows = run_group(ctx, "apply", 2, arm == "multi", root, {**cfg, "policy": policy})
                per[arm].append(statistics.mean(r["apply_s"] for r in rows))
                cpu[arm].append(statistics.mean(r["apply_cpu_s"] for r in rows))
                work.drop(root)
        single, multi = statistics.median(per["single"]), statistics.median(per["multi"])
        single_cpu, multi_cpu = statistics.median(cpu["single"]), statistics.median(cpu["multi"])
        out[policy] = {"single_us": round(single * 1e6, 1), "multi_us": round(multi * 1e6, 1),
                       "ratio": round(multi / single, 2), "single_cpu_us": round(single_cpu * 1e6, 1),
                       "multi_cpu_us": round(multi_cpu * 1e6, 1), "cpu_ratio": round(multi_cpu / single_cpu, 2),
                       "collective_per_apply": policy == "seconds"}
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ranks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    parser.add_argument("--rows", type=int, default=262_144, help="embedding rows per rank (x16 fp32; 16 MiB)")
    parser.add_argument("--parts", default="cut,recovery,apply", help="which parts to run (comma-separated)")
    parser.add_argument("--dir", default=str(REPO / ".bench-tmp"))
    args = parser.parse_args(argv)
    quick = args.quick
    cfg = {"rows": args.rows, "steps": 300 if quick else 600, "flush_every": 10, "snapshot_every": 100 if quick else 150,
           "entries": 500 if quick else 2000, "applies": 500 if quick else 2000, "warmup": 100}
    repeats = 1 if quick else 3
    started = time.time()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "replay"])
    work = Workdir(args.dir, "ranks-")
    results = {"benchmark": "ranks",
               "machine": machine_info(args.dir, ("eventlog", "snapshots", "replay"), torch=torch.__version__,
                                       torch_threads=1),
               "config": {**cfg, "dim": DIM, "state_mib_per_rank": round(args.rows * DIM * 4 / 2**20, 1),
                          "repeats": repeats, "quick": quick, "backend": "gloo on 127.0.0.1",
                          "launch": "forkserver (torch and replay imported once)"}}
    parts = set(args.parts.split(","))
    try:
        if "cut" in parts:
            say("part 1: the cut (flush) and the coordinated snapshot, 2 ranks vs 2 single-rank journals ...")
            results["cut_and_snapshot"] = part_cut_and_snapshot(ctx, work, cfg, repeats)
        if "recovery" in parts:
            say("part 2: recovery vs ranks ...")
            results["recovery"] = part_recovery(ctx, work, cfg, [1, 2, 3, 4], max(1, repeats - 1))
        if "apply" in parts:
            say("part 3: apply overhead ...")
            results["apply"] = part_apply(ctx, work, cfg, repeats)
    finally:
        work.close()
    results["machine"]["loadavg_during"] = [round(x, 2) for x in os.getloadavg()]
    _print(results)
    finish(results, RESULTS if parts == {"cut", "recovery", "apply"} else Path(args.dir) / "ranks-partial.json",
           started, time.time())
    return 0


def _print(results: dict) -> None:
    print(f"state per rank {results['config']['state_mib_per_rank']} MiB; load average at start "
          f"{results['machine']['loadavg_at_start']} on {results['machine']['cpu_count']} cores")
    if "cut_and_snapshot" in results:
        _print_cut(results["cut_and_snapshot"])
    if "recovery" in results:
        _print_recovery(results["recovery"])
    if "apply" in results:
        _print_apply(results["apply"])


def _print_cut(c: dict) -> None:
    print(f"{'2 processes':<22} {'flush p50 ms':>13} {'flush p90 ms':>13} {'snapshot p50 ms':>16} "
          f"{'snapshot p90 ms':>16} {'loop s':>8}")
    for arm in ("single", "multi"):
        row = c[arm]
        print(f"{arm + '-rank journals':<22} {fmt(row['flush_ms_p50']):>13} {fmt(row['flush_ms_p90']):>13} "
              f"{fmt(row['snapshot_ms_p50']):>16} {fmt(row['snapshot_ms_p90']):>16} {fmt(row['loop_s_median']):>8}")
    r = c["ratio"]
    print(f"{'multi / single':<22} {fmt(r['flush_ms_p50']):>13} {'':>13} {fmt(r['snapshot_ms_p50']):>16} "
          f"{'':>16} {fmt(r['loop_s_median']):>8}")


def _print_recovery(rec: dict) -> None:
    print(f"\nrecovery of {rec['entries']} entries per rank after the snapshot (slowest rank, median)")
    print(f"{'ranks':>6} {'open s':>8} {'recovery s':>11} {'load s':>8} {'replay s':>9} {'open x':>7} "
          f"{'recovery x':>11} {'open cpu s':>11} {'cpu x':>6}")
    for p in rec["points"]:
        print(f"{p['ranks']:>6} {fmt(p['open_s']):>8} {fmt(p['recovery_s']):>11} {fmt(p['load_s']):>8} "
              f"{fmt(p['replay_s']):>9} {fmt(p['open_ratio_vs_1']):>7} {fmt(p['recovery_ratio_vs_1']):>11} "
              f"{fmt(p['open_cpu_s']):>11} {fmt(p['open_cpu_ratio_vs_1']):>6}")


def _print_apply(apply: dict) -> None:
    print(f"\n{'apply, 2 processes':<28} {'single us':>10} {'multi us':>9} {'ratio':>6} {'single cpu us':>14} "
          f"{'multi cpu us':>13} {'cpu ratio':>10}")
    for policy, row in apply.items():
        label = "Every(seconds=): a gather" if policy == "seconds" else "Every(entries=): none"
        print(f"{label:<28} {fmt(row['single_us']):>10} {fmt(row['multi_us']):>9} {fmt(row['ratio']):>6} "
              f"{fmt(row['single_cpu_us']):>14} {fmt(row['multi_cpu_us']):>13} {fmt(row['cpu_ratio']):>10}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
