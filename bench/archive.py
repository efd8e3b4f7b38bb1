"""Benchmark the tiered log's archive: ``python -m bench archive [--quick]``.

One run measures, for two payloads (256 random bytes: incompressible; a training step's
small dict of ids, a seed and a learning rate: what a journal logs):

- compaction cost: `compact_through(last)` of N committed entries with the default
  archive (seal into zstd segments, fsync, rename, directory fsync, then the LMDB drop)
  against the same compaction with ``archive=None`` (the LMDB drop alone), on fresh
  logs of the same entries, interleaved in rotating order for R rounds. Reported per
  compaction and per MiB of stored entry bytes (header + op + payload), the median round.
- scan rate: ``entries()`` (verified, decoded) and ``headers()`` (verified, no payload
  decode) over M entries while they are live in LMDB and again after they were all
  sealed into the archive (a fresh readonly handle, so no segment is cached), in
  entries/s and MiB/s of stored bytes, the median of 3 passes each.
- the archive's size on disk against the stored bytes (zstd's ratio).

Results go to ``bench/results/archive.json`` and to a table on stdout. This is a
benchmark, not a test: nothing asserts time.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import zstandard

from eventlog import Archive, EventLog
from eventlog.archive import list_segments
from eventlog.segment import TARGET_RAW, ZSTD_LEVEL

from ._common import Workdir, finish, fmt, machine_info, ms

RESULTS = Path(__file__).parent / "results" / "archive.json"
pc = time.perf_counter
MIB = 2**20


def payloads(kind: str, n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    if kind == "bytes256":
        return [{"data": rng.randbytes(256)} for _ in range(n)]
    return [{"ids": [rng.randrange(1_000_000) for _ in range(32)], "seed": rng.randrange(2**31), "lr": 1e-4}
            for _ in range(n)]


def make_log(path: Path, items: list, archive) -> tuple[EventLog, int]:
    """A sync log holding `items` (appended in batches, not timed); returns it and its stored bytes."""
    log = EventLog.open(path, durability="sync", archive=archive)
    for at in range(0, len(items), 5000):
        log.append_many([("step", p) for p in items[at:at + 5000]])
    stored = sum(h.payload_size + 32 + len(h.op) for h in log.headers(verify=False))
    return log, stored


def bench_compaction(work: Workdir, kind: str, n: int, rounds: int) -> dict:
    items = payloads(kind, n)
    times = {"archive": [], "none": []}
    stored = disk = segments = 0
    for r in range(rounds):
        order = ["archive", "none"] if r % 2 == 0 else ["none", "archive"]
        for mode in order:
            path = work.new(f"compact-{kind}-{mode}")
            log, stored = make_log(path, items, Archive() if mode == "archive" else None)
            try:
                started = pc()
                log.compact_through(log.last_index)
                times[mode].append(pc() - started)
                if mode == "archive":
                    names = list_segments(path / "archive")
                    segments = len(names)
                    disk = sum((path / "archive" / s.name).stat().st_size for s in names)
            finally:
                log.close()
                work.drop(path)
    med = {mode: sorted(t)[len(t) // 2] for mode, t in times.items()}
    return {
        "entries": n, "stored_bytes": stored, "segments": segments, "archive_disk_bytes": disk,
        "compression_ratio": round(stored / disk, 2) if disk else None,
        "archive_ms": ms(med["archive"]), "none_ms": ms(med["none"]),
        "archive_ms_per_mib": ms(med["archive"] / (stored / MIB)), "none_ms_per_mib": ms(med["none"] / (stored / MIB)),
        "archive_over_none": round(med["archive"] / med["none"], 2),
        "sealed_mib_per_s": round(stored / MIB / med["archive"], 1),
        "rounds_ms": {mode: [ms(t) for t in ts] for mode, ts in times.items()},
    }


def _median_scan(path: Path, how: str, passes: int) -> float:
    took = []
    for _ in range(passes):
        with EventLog.open(path, readonly=True) as log:  # fresh handle: nothing cached
            started = pc()
            count = sum(1 for _ in (log.entries() if how == "entries" else log.headers()))
            took.append(pc() - started)
    assert count > 0
    return sorted(took)[len(took) // 2]


def bench_scan(work: Workdir, kind: str, m: int, passes: int) -> dict:
    path = work.new(f"scan-{kind}")
    log, stored = make_log(path, payloads(kind, m, seed=1), Archive())
    log.close()
    out = {"entries": m, "stored_bytes": stored}
    for where in ("lmdb", "archive"):
        if where == "archive":
            with EventLog.open(path) as log:
                log.compact_through(log.last_index)
                assert log.live_first_index == m + 1 and log.first_index == 1
        for how in ("entries", "headers"):
            seconds = _median_scan(path, how, passes)
            out[f"{where}_{how}"] = {"entries_per_s": round(m / seconds), "mib_per_s": round(stored / MIB / seconds, 1),
                                     "ms": ms(seconds)}
    for how in ("entries", "headers"):
        out[f"archive_over_lmdb_{how}"] = round(out[f"archive_{how}"]["entries_per_s"]
                                                / out[f"lmdb_{how}"]["entries_per_s"], 2)
    work.drop(path)
    return out


def print_report(results: dict) -> None:
    print(f"\narchive benchmark ({results['machine']['cpu_count']} CPUs, {results['machine']['filesystem']}, "
          f"{results['machine']['date']})")
    print(f"{'payload':<10} {'entries':>8} {'MiB':>6} {'archive ms':>11} {'none ms':>8} {'ratio':>6} "
          f"{'ms/MiB':>7} {'MiB/s sealed':>12} {'zstd x':>7}")
    for kind, r in results["compaction"].items():
        print(f"{kind:<10} {fmt(r['entries']):>8} {r['stored_bytes'] / MIB:>6.1f} {fmt(r['archive_ms']):>11} "
              f"{fmt(r['none_ms']):>8} {fmt(r['archive_over_none']):>6} {fmt(r['archive_ms_per_mib']):>7} "
              f"{fmt(r['sealed_mib_per_s']):>12} {fmt(r['compression_ratio']):>7}")
    print(f"\n{'payload':<10} {'scan':<8} {'LMDB entries/s':>15} {'MiB/s':>7} {'archive entries/s':>18} {'MiB/s':>7} "
          f"{'archive/LMDB':>12}")
    for kind, r in results["scan"].items():
        for how in ("entries", "headers"):
            lm, ar = r[f"lmdb_{how}"], r[f"archive_{how}"]
            print(f"{kind:<10} {how:<8} {fmt(lm['entries_per_s']):>15} {fmt(lm['mib_per_s']):>7} "
                  f"{fmt(ar['entries_per_s']):>18} {fmt(ar['mib_per_s']):>7} {fmt(r[f'archive_over_lmdb_{how}']):>12}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench archive", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000, help="entries per compaction")
    p.add_argument("--rounds", type=int, default=5, help="interleaved compaction rounds (median reported)")
    p.add_argument("--scan-n", type=int, default=50000, help="entries in the scanned log")
    p.add_argument("--passes", type=int, default=3, help="scan passes per case (median reported)")
    p.add_argument("--quick", action="store_true", help="about 5x fewer operations (smoke run)")
    p.add_argument("--dir", type=Path, default=None, help="where temp logs go (the system temp dir by default)")
    p.add_argument("--json", type=Path, default=RESULTS, help="results file (default bench/results/archive.json)")
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.scan_n = max(2000, args.n // 5), 3, max(5000, args.scan_n // 5)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True))
    work = Workdir(args.dir or Path(os.environ.get("TMPDIR", "/tmp")), "bench-archive-")
    results = {
        "benchmark": "archive",
        "machine": machine_info(work.root, ("eventlog",), zstandard=zstandard.__version__),
        "config": {"n_compaction": args.n, "rounds": args.rounds, "n_scan": args.scan_n, "passes": args.passes,
                   "durability": "sync", "segment_target_bytes": TARGET_RAW, "zstd_level": ZSTD_LEVEL,
                   "payloads": {"bytes256": "{'data': 256 random bytes}",
                                "step": "{'ids': 32 ints < 1e6, 'seed': int, 'lr': 1e-4}"}},
        "compaction": {}, "scan": {},
    }
    started = pc()
    try:
        for kind in ("bytes256", "step"):
            say(f"[{kind}] compaction of {args.n} entries, archive vs none, {args.rounds} rounds")
            results["compaction"][kind] = bench_compaction(work, kind, args.n, args.rounds)
            say(f"[{kind}] scans of {args.scan_n} entries, LMDB vs archive")
            results["scan"][kind] = bench_scan(work, kind, args.scan_n, args.passes)
    finally:
        work.close()
    finish(results, args.json, started, pc())
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
