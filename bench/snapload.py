"""Hot `load_into` of this tree and of a baseline commit against safetensors, in one process.

    python -m bench snapload [--baseline COMMIT] [--rounds 15] [--mb 256] [--configs zstd+loose,none+loose,zstd+packs,none+packs]
                             [--cold] [--cpus N]

Issue 22's first row, for a change to the load path: the same 256 MiB transformer-like
state (bench.snapshots.build_state) is saved once into a store of each tree, then loaded
again and again into the same live tensors (a trainer rolling back), against the peer:
safetensors `load_file` + `copy_` into those live tensors. `--baseline` (a commit) adds
that commit's `snapshots` package, extracted with `git archive` and imported under
another name (`snapshots_baseline`), so both trees run in the same process, on the
same live state, at the same load; without it only this tree runs.

Each config (a compression, then `+packs` for a store that writes one pack per save or
`+loose` for one file per chunk; neither: each tree's default) is one set of stores.
Rounds interleave every case: the peer first, then the two trees in an order that
alternates each round (whichever runs right after the peer is measured
under slightly different cache and scheduler conditions). A row reports the median
wall and CPU time (process CPU, all threads), and the median of the per-round ratios to
the peer with its spread (min-max); the load average is recorded per round, the bytes
each store holds once. Run it with OMP_NUM_THREADS=1 on a busy machine (the peer's
`copy_` is steadiest on one thread; see bench.snapshots). Results go to
bench/results/snapload.json. Benchmarks are not tests: nothing here asserts.

`--cpus N` pins the process to N of the CPUs it may use (sched_setaffinity) before
anything runs: with one, every case gets one core, as each does on a machine busy with
other work, so the ratios are those of the CPU each side spends (and steadier), not of
how many idle cores the threads of `load_into` happened to find that round.

`--cold` reads every side's bytes from the device instead: before every timed call the
safetensors file and every store's chunk and pack files are evicted from the page cache
(fsync, then POSIX_FADV_DONTNEED, as bench.snapshots --cold does; all of them, so no
case evicts another's mid-round), and each row records the share of its files still
cached after the eviction. Its results go to bench/results/snapload_cold.json unless
`--out` says otherwise (issue 22's cold row is 1 GiB: `--cold --mb 1024`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

import snapshots

from ._common import REPO, Workdir, finish, machine_info
from .snapshots import build_state, cached_fraction, evict, malloc_trim, tensors_of

RESULTS = Path(__file__).parent / "results" / "snapload.json"
COLD_RESULTS = Path(__file__).parent / "results" / "snapload_cold.json"
PEER = "safetensors load_file + copy_ into live"
THIS, BASE = "this tree: load_into", "baseline: load_into"


def _baseline(commit: str, into: Path):
    """`commit`'s snapshots package, imported as `snapshots_baseline`; (module, full commit id)."""
    full = subprocess.run(["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", full, "snapshots"], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tempfile.TemporaryFile() as tar_file:
        tar_file.write(archive)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file) as tar:
            tar.extractall(into, filter="data")
    (into / "snapshots").rename(into / "snapshots_baseline")  # its imports are relative
    sys.path.insert(0, str(into))
    return importlib.import_module("snapshots_baseline"), full


def run_config(config: str, args, work: Workdir, baseline) -> dict:
    from safetensors.torch import load_file, save_file

    compression, _, kind = config.partition("+")
    options = {"compression": compression} | ({"packs": kind == "packs"} if kind else {})
    state = build_state(args.mb)
    flat = dict(tensors_of(state))
    logical = sum(t.numel() * t.element_size() for t in flat.values())
    st_path = str(work.new("model.safetensors"))
    save_file(flat, st_path)
    trees = {THIS: snapshots} | ({BASE: baseline} if baseline is not None else {})
    stores = {}
    for name, module in trees.items():
        store = module.SnapshotStore(str(work.new("store")), **options)
        stores[name] = (store, store.save(state, index=1, term=1))
    del state, flat
    live = build_state(args.mb, seed=1)
    live_flat = dict(tensors_of(live))

    def peer():
        with torch.no_grad():
            for k, v in load_file(st_path).items():
                live_flat[k].copy_(v)

    cases = {PEER: peer} | {name: (lambda s=s, i=i: s.load_into(i, live)) for name, (s, i) in stores.items()}
    files = {PEER: [st_path]} | {name: _store_files(s.path) for name, (s, _) in stores.items()}
    every_file = [f for fs in files.values() for f in fs]
    for fn in cases.values():
        fn()  # warm: the page cache, first touch, the stores' known chunks
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    cached = {name: [] for name in cases}
    loads = []
    for r in range(args.rounds):
        loads.append(round(os.getloadavg()[0], 2))
        ours = [n for n in cases if n != PEER]
        for name in [PEER] + (ours if r % 2 == 0 else ours[::-1]):
            if args.cold:
                evict(every_file)
                cached[name].append(round(cached_fraction(files[name]), 4))
            malloc_trim()
            c, t = time.process_time(), time.perf_counter()
            cases[name]()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    rows = {}
    for name in cases:
        ratios = [a / b for a, b in zip(wall[name], wall[PEER])]
        cpu_ratios = [a / b for a, b in zip(cpu[name], cpu[PEER])]
        rows[name] = {"ms": round(statistics.median(wall[name]) * 1e3, 1), "cpu_ms": round(statistics.median(cpu[name]) * 1e3, 1),
                      "over_peer": {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                                    "max": round(max(ratios), 3), "cpu_median": round(statistics.median(cpu_ratios), 3)},
                      "runs_ms": [round(x * 1e3, 1) for x in wall[name]],
                      **({"cached_after_evict": cached[name]} if args.cold else {})}
        if name in stores:
            rows[name]["bytes_stored"] = stores[name][1].bytes_stored
            rows[name]["workers"] = stores[name][0].workers
    for store, _ in stores.values():
        store.close()
    print(f"{config}{' cold' if args.cold else ''} (load {min(loads)}-{max(loads)}):")
    for name, row in rows.items():
        o = row["over_peer"]
        print(f"  {name:<42} {row['ms']:7.1f} ms wall {row['cpu_ms']:7.1f} ms CPU   / peer {o['median']:.2f} "
              f"({o['min']:.2f}-{o['max']:.2f}), CPU {o['cpu_median']:.2f}", flush=True)
    return {"logical_bytes": logical, "loadavg_per_round": loads, "rows": rows}


def _store_files(root: str) -> list[str]:
    """Every chunk and pack file of the store at `root`."""
    return [os.path.join(d, f) for kind in ("chunks", "packs") for d, _, fs in os.walk(os.path.join(root, kind)) for f in fs]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench snapload", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=None, help="a commit whose snapshots package is measured beside this tree's")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per config (default 15)")
    p.add_argument("--mb", type=int, default=256, help="approximate state size in MiB (default 256)")
    p.add_argument("--configs", default="zstd+loose,none+loose,zstd+packs,none+packs",
                   help="comma-separated: a compression, then '+packs' or '+loose' (neither: each tree's default)")
    p.add_argument("--dir", default=None, help="where the scratch directory goes (default: the system temp dir)")
    p.add_argument("--cold", action="store_true", help="evict every file from the page cache before each timed call")
    p.add_argument("--cpus", type=int, default=None, help="pin the process to this many CPUs (1: as on a busy machine)")
    p.add_argument("--out", default=None, help=f"results file (default {RESULTS}, or {COLD_RESULTS} with --cold)")
    args = p.parse_args(argv)
    args.out = args.out or str(COLD_RESULTS if args.cold else RESULTS)
    args.rounds = max(1, args.rounds)
    if args.cpus is not None:
        allowed = sorted(os.sched_getaffinity(0))
        if not 1 <= args.cpus <= len(allowed):
            p.error(f"--cpus must be between 1 and {len(allowed)}, the CPUs this process may use")
        os.sched_setaffinity(0, allowed[-args.cpus:])  # the last ones: CPU 0 takes more interrupts
        # torch sizes its thread pool from the CPUs it saw at import: more threads than the
        # pinned CPUs spin-wait for each other in every copy_ (the peer took 1 s, not 38 ms,
        # pinned to one CPU with two threads)
        torch.set_num_threads(min(torch.get_num_threads(), args.cpus))
    started = time.perf_counter()
    work = Workdir(args.dir or tempfile.gettempdir(), "bench-snapload-")
    try:
        results = {"benchmark": "snapload", "machine": machine_info(work.root, ("snapshots",), torch=torch.__version__),
                   "config": {"mb": args.mb, "rounds": args.rounds, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                              "cold": args.cold, "cpus": sorted(os.sched_getaffinity(0)) if args.cpus else None,
                              "timing": "interleaved rounds into the same live tensors; ratio = median of per-round "
                                        "ratios to the peer; the two trees alternate order each round"}}
        baseline = None
        if args.baseline:
            baseline, results["baseline_commit"] = _baseline(args.baseline, work.root / "baseline")
        results["configs"] = {c: run_config(c, args, work, baseline) for c in args.configs.split(",") if c}
    finally:
        work.close()
    finish(results, Path(args.out), started, time.perf_counter())
    print(f"wrote {args.out}")
    return 0
