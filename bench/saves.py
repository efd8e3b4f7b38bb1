"""Full saves of a changed state into an existing store vs safetensors and torch.save (issue 22, the save rows).

    python -m bench saves [--sizes mlp,54,256] [--rounds N] [--dir DIR] [--out PATH]

Each size is one state, saved again and again after every tensor changed (each round
adds a small constant to every floating tensor and 1 to every integer one, outside the
clock), so every chunk is new each time, as in training between snapshots:

- ``mlp``: a 2-layer MLP (256 -> 384 -> 256) with its AdamW state, ~2.3 MiB;
- a number N: bench.snapshots' transformer-like state of ~N MiB (bf16 and fp32
  matrices, fp32 Adam moments, small norms, biases and step counters).

Peers, each made durable before its clock stops as ours is: safetensors ``save_file``
then fsync of the file and its directory; ``torch.save`` then the same fsyncs. Ours:
``SnapshotStore.save`` into a store that already holds the previous snapshots (a prune
after each save, outside the clock, keeps two), with packs (the default: one pack
file per save), with the default compression (zstd level 1 where it pays) and with
``compression="none"`` (chunks stored raw: hashing and writing only, as the peers do no
compression), and, as the before row, ``packs=False`` (one loose file per chunk, zstd).

The fixed cost of a save is counted too, where strace is installed: one save of the
2.3 MiB state into an existing store runs in a child under ``strace -f`` and the
fsyncs, renames, mkdirs and writeback hints between two markers are counted per case
(``syscalls_per_save``; the protocol's floor is 2 file + 2 directory fsyncs, 2 renames).

The machine is shared, so rounds interleave every case, the order rotating; a row reports
the median time over rounds, and a ratio is the median of the per-round ratios with its
spread (min-max). The load average is recorded at the start and end of each size.
Results go to bench/results/saves.json. Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import snapshots

from ._common import Workdir, machine_info
from .snapshots import build_state, tensors_of

RESULTS = Path(__file__).parent / "results" / "saves.json"
PEERS = ("safetensors save_file + fsync", "torch.save + fsync")
# Our cases: the store options of each (every one into its own existing store).
OURS = {"ours: packs, zstd": {"packs": True}, "ours: packs, no compression": {"packs": True, "compression": "none"},
        "ours: loose chunks, zstd (before)": {"packs": False}}


def mlp_state() -> dict:
    """A 2-layer MLP and its AdamW state after one step: ~2.3 MiB."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 384), torch.nn.ReLU(), torch.nn.Linear(384, 256))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 256)).square().mean().backward()
    optim.step()
    return {"model": model.state_dict(), "optim": optim.state_dict()}


def change(state) -> None:
    """Change every tensor of `state` in place (every chunk becomes new)."""
    with torch.no_grad():
        for _, t in tensors_of(state):
            if t.is_floating_point():
                t.add_(1e-3)
            else:
                t.add_(1)


def _fsync(path: str) -> None:
    for target, flags in ((path, os.O_RDONLY), (os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)):
        fd = os.open(target, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def measure(label: str, state: dict, rounds: int, work: Workdir) -> dict:
    """Interleaved rounds of every case on `state`; the row per case and the ratios."""
    from safetensors.torch import save_file

    flat = {k: v for k, v in tensors_of(state)}
    logical = sum(t.numel() * t.element_size() for t in flat.values())
    peer_dir = work.new(f"{label}-peers")
    peer_dir.mkdir()
    stores = {name: snapshots.SnapshotStore(work.new(f"{label}-store"), keep_last=2, **options)
              for name, options in OURS.items()}
    index = {name: 0 for name in OURS}

    def peer_safetensors(path):
        save_file(flat, path)
        _fsync(path)

    def peer_torch(path):
        torch.save(flat, path)
        _fsync(path)

    def ours(name):
        index[name] += 1
        stores[name].save(state, index=index[name], term=1)

    cases = [(PEERS[0], lambda: peer_safetensors(str(peer_dir / "model.safetensors"))),
             (PEERS[1], lambda: peer_torch(str(peer_dir / "model.pt"))),
             *[(name, lambda name=name: ours(name)) for name in OURS]]
    for _, fn in cases:  # warm: the store exists and holds a snapshot, the peers' files exist
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    load_start = os.getloadavg()
    for r in range(rounds):
        # The order rotates each round: a case never always follows the same one (whose
        # prune, outside the clock, still leaves the disk busy for a while).
        for name, fn in cases[r % len(cases):] + cases[:r % len(cases)]:
            change(state)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            if name in stores:
                stores[name].prune()  # outside the clock: the store keeps two snapshots
    load_end = os.getloadavg()
    sizes = {name: stores[name].list()[-1].bytes_written for name in OURS}
    for store in stores.values():
        store.close()
    rows = {name: {"median_ms": round(statistics.median(ts) * 1e3, 2), "min_ms": round(min(ts) * 1e3, 2),
                   "max_ms": round(max(ts) * 1e3, 2), "runs_ms": [round(t * 1e3, 2) for t in ts]}
            for name, ts in times.items()}
    ratios = {}
    for ours_name in OURS:
        for peer in PEERS:
            per_round = [o / p for o, p in zip(times[ours_name], times[peer])]
            ratios[f"{ours_name} / {peer}"] = {"median": round(statistics.median(per_round), 3),
                                               "min": round(min(per_round), 3), "max": round(max(per_round), 3)}
    return {"logical_bytes": logical, "tensors": len(flat), "rounds": rounds, "bytes_written": sizes,
            "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in load_end],
            "rows": rows, "ratios": ratios}


_COUNTED = ("fsync", "fdatasync", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "sync_file_range")
# The child: warm a store with two saves and a prune, then one more save between two
# sched_yield markers (a call nothing else in the save makes).
_CHILD = """
import os, sys, tempfile
import snapshots
from bench.saves import change, mlp_state
state = mlp_state()
with tempfile.TemporaryDirectory(dir=sys.argv[1]) as d:
    store = snapshots.SnapshotStore(os.path.join(d, "s"), keep_last=2, **eval(sys.argv[2]))
    for i in (1, 2):
        change(state)
        store.save(state, index=i, term=1)
    store.prune()
    change(state)
    os.sched_yield()
    store.save(state, index=3, term=1)
    os.sched_yield()
    store.close()
"""


def count_syscalls(work: Workdir) -> dict | None:
    """{case: {syscall: count}} for one save of the MLP state into an existing store, per
    case of OURS; None without strace."""
    import shutil
    import subprocess
    import sys

    if shutil.which("strace") is None:
        return None
    out = {}
    for name, options in OURS.items():
        trace = work.new("strace.txt")
        subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=" + ",".join(_COUNTED + ("sched_yield",)),
                        sys.executable, "-c", _CHILD, str(work.root), repr(options)],
                       check=True, cwd=Path(__file__).resolve().parent.parent, capture_output=True)
        counts, inside = {}, 0
        for line in trace.read_text().splitlines():
            call = line.split(None, 1)[-1]
            if call.startswith("sched_yield"):
                inside += 1
            elif inside == 1 and not call.startswith("<..."):  # a resumed call was counted where it began
                syscall = call.split("(", 1)[0]
                counts[syscall] = counts.get(syscall, 0) + 1
        out[name] = dict(sorted(counts.items()))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench saves", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="mlp,54,256", help="comma-separated: 'mlp' or a size in MiB")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per size (default: by size)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where stores and files are written")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    work = Workdir(args.dir, "bench-saves-")
    import safetensors

    results = {"benchmark": "saves",
               "machine": machine_info(args.dir, ("snapshots", "bench"), torch=torch.__version__,
                                       safetensors=safetensors.__version__),
               "sizes": {}}
    try:
        results["syscalls_per_save"] = count_syscalls(work)
        for name, counts in (results["syscalls_per_save"] or {}).items():
            print(f"  one 2.3 MiB save, {name}: {counts}", flush=True)
        for size in args.sizes.split(","):
            state = mlp_state() if size == "mlp" else build_state(int(size))
            label = "mlp_adamw" if size == "mlp" else f"{size}mib"
            rounds = args.rounds or (15 if size == "mlp" else 9 if int(size) <= 64 else 5)
            result = measure(label, state, rounds, work)
            results["sizes"][label] = result
            mib = result["logical_bytes"] / 2**20
            print(f"{label}: {mib:.1f} MiB, {rounds} rounds, load {result['loadavg_start'][0]:.1f} -> "
                  f"{result['loadavg_end'][0]:.1f}", flush=True)
            for name, row in result["rows"].items():
                print(f"  {name:<34} median {row['median_ms']:8.1f} ms ({row['min_ms']:.1f}-{row['max_ms']:.1f})")
            for name, r in result["ratios"].items():
                print(f"  {name:<70} {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})")
            del state
    finally:
        work.close()
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
