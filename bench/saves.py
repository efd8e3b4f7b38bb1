"""Full saves of a changed state into an existing store vs safetensors and torch.save (issue 22, the save rows).

    python -m bench saves [--sizes mlp,54,256] [--rounds N] [--cases ...] [--baseline COMMIT]
                          [--settle] [--dir DIR] [--out PATH]

Each size is one state, saved again and again after every tensor changed (each round
adds a small constant to every floating tensor and 1 to every integer one, outside the
clock), so every chunk is new each time, as in training between snapshots:

- ``mlp``: a 2-layer MLP (256 -> 384 -> 256) with its AdamW state, ~2.3 MiB;
- a number N: bench.snapshots' transformer-like state of ~N MiB (bf16 and fp32
  matrices, fp32 Adam moments, small norms, biases and step counters).

Peers, each made durable before its clock stops as ours is: safetensors ``save_file``
then fsync of the file and its directory; ``torch.save`` then the same fsyncs; and the
bytes alone (key ``bytes``): every tensor's bytes written straight from its memory into
one file (``os.writev``: no header, no hashing, no pickling) and the same fsyncs, what a
format with nothing to do would cost writing first and syncing at the end (ours can be
faster: its writeback hints set the disk going while it still copies). Each
peer keeps two files as our stores keep two snapshots: a save writes a new file, and
the one before the previous is deleted right before the save's clock starts. Ours:
``SnapshotStore.save`` into a store that already holds the previous snapshot (a prune
with ``keep_last=1`` right before each save, outside the clock, as the peers delete),
with packs and raw chunks (the defaults:
one pack file per save, hashing and writing only, as the peers do no compression; a
state of commit.DIRECT_AFTER bytes or more (512 MiB), here the 1 GiB one, writes its
pack with O_DIRECT: snapshots/directio.py), with
packs and ``compression="zstd"`` (level 1 where it pays), and, as the before row,
``packs=False`` (one loose file per chunk, zstd). ``--baseline COMMIT`` adds that
commit's ``snapshots`` package with its defaults (imported under another name, as
bench.snapload does), so a change to the save path is compared in the same run;
``--cases`` picks cases by key (st, torch, packs, zstd, loose, baseline).

Each case's row has its wall time and its process CPU time (all threads; far less
sensitive to the shared machine's load than wall time) per save, and the dirty page
cache (/proc/meminfo Dirty) when its clock started, and the memory a VM handed back to its
host from the case's deletion to the end of its save (``reported_mib_during``; where the
kernel does virtio free page reporting). ``--settle`` runs ``sync`` before
every case, outside the clock and the same for every case, so no case's clock pays for
writing back what an earlier one left dirty (or deleted: the disk is mounted with
online discard here, and the next journal commit pays for freed blocks).

The fixed cost of a save is counted too, where strace is installed: one save of the
2.3 MiB state into an existing store runs in a child under ``strace -f`` and the
fsyncs, renames, mkdirs and writeback hints between two markers are counted per case
(``syscalls_per_save``; the protocol's floor is 2 file + 2 directory fsyncs, 2 renames, waited
for in two rounds: the pack, packs/ and the manifest's temp file together, then manifests/).

The machine is shared, so rounds interleave every case, the order rotating; a row reports
the median time over rounds, and a ratio is the median of the per-round ratios with its
spread (min-max), for wall and for CPU time. The load average is recorded at the start and end of each size.
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
PEERS = ("safetensors save_file + fsync", "torch.save + fsync", "the bytes alone, writev + fsync")
# Our cases: the store options of each (every one into its own existing store).
OURS = {"ours: packs, raw chunks (defaults)": {}, "ours: packs, zstd": {"compression": "zstd"},
        "ours: loose chunks, zstd (before)": {"packs": False, "compression": "zstd"}}
CASE_KEYS = {"st": PEERS[0], "torch": PEERS[1], "bytes": PEERS[2], "packs": "ours: packs, raw chunks (defaults)",
             "zstd": "ours: packs, zstd", "loose": "ours: loose chunks, zstd (before)", "baseline": None}


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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: str) -> None:
    for target, flags in ((path, os.O_RDONLY), (os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)):
        fd = os.open(target, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dirty_kib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Dirty:"))
    except (OSError, StopIteration, ValueError):
        return None


_REPORTED = "/sys/module/page_reporting/parameters/reported_kib"


def _reported_kib() -> int | None:
    """KiB of freed memory this VM has handed back to its host so far (virtio free page
    reporting; measure's comment says why it matters), None where the kernel reports none."""
    try:
        with open(_REPORTED) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def measure(label: str, state: dict, rounds: int, work: Workdir, cases_wanted: set[str], baseline=None,
            settle: bool = False, changing: dict | None = None) -> dict:
    """Interleaved rounds of every case on `state`; the row per case and the ratios.
    `baseline`: (a case name, its snapshots module) compared with its own defaults.
    `changing`: the part of `state` each round changes (default: all of it)."""
    from safetensors.torch import save_file

    flat = {k: v for k, v in tensors_of(state)}
    logical = sum(t.numel() * t.element_size() for t in flat.values())
    peer_dir = work.new(f"{label}-peers")
    peer_dir.mkdir()
    ours = {name: (snapshots, options) for name, options in OURS.items() if name in cases_wanted}
    if baseline is not None:
        ours[baseline[0]] = (baseline[1], {})
    stores = {name: module.SnapshotStore(work.new(f"{label}-store"), keep_last=1, **options)
              for name, (module, options) in ours.items()}
    index = {name: 0 for name in ours}

    # A peer keeps two files, as our stores keep two snapshots while they save (the
    # previous one and the new one): each save writes a new file, and the one before the
    # previous is deleted right before the clock (as our prune with keep_last=1 deletes
    # our snapshot from two saves ago). Overwriting one file in place would charge the
    # freeing of the old file's blocks to the peer's clock (its directory fsync waits for the journal
    # commit that frees them: 76-180 ms for 256 MiB on this disk, mounted with discard).
    written = {name: 0 for name in PEERS}

    def peer_path(name: str, ext: str) -> str:
        return str(peer_dir / f"model.{written[name] % 2}.{ext}")

    def retire(name: str, ext: str) -> None:  # outside the clock
        path = peer_path(name, ext)
        if os.path.exists(path):
            os.unlink(path)
            _fsync_dir(str(peer_dir))

    def peer_safetensors():
        path = peer_path(PEERS[0], "safetensors")
        save_file(flat, path)
        _fsync(path)
        written[PEERS[0]] += 1

    def peer_torch():
        path = peer_path(PEERS[1], "pt")
        torch.save(flat, path)
        _fsync(path)
        written[PEERS[1]] += 1

    # The tensors change in place between rounds, so views made once see every round's bytes.
    byte_views = [memoryview(t.view(-1).view(torch.uint8).numpy()) for t in flat.values()]

    def peer_bytes():
        path = peer_path(PEERS[2], "bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for k in range(0, len(byte_views), _IOV_BATCH):
                batch = byte_views[k:k + _IOV_BATCH]
                if os.writev(fd, batch) != sum(len(v) for v in batch):
                    raise OSError(f"short writev into {path}")  # a full disk: the bench stops here
        finally:
            os.close(fd)
        _fsync(path)
        written[PEERS[2]] += 1

    def save(name):
        index[name] += 1
        stores[name].save(state, index=index[name], term=1)

    # (name, the deletion right before the clock, the timed save). Every case deletes its
    # file or snapshot from two saves ago at the same moment, right before its clock:
    # this VM hands memory a delete frees back to the host within about a second (virtio
    # free page reporting), and page cache later built on those pages faults on the
    # host, so a case that deleted a whole round earlier (as our prune once did, after
    # its save) copied into the page cache up to 5x slower in a third of its rounds
    # (perf: copy_folio_from_iter_atomic; each slow round followed a report of 64-128
    # MiB), while the peers, deleting just before, wrote onto pages still in the guest.
    cases = [case for case in ((PEERS[0], lambda: retire(PEERS[0], "safetensors"), peer_safetensors),
                               (PEERS[1], lambda: retire(PEERS[1], "pt"), peer_torch),
                               (PEERS[2], lambda: retire(PEERS[2], "bin"), peer_bytes))
             if case[0] in cases_wanted]
    cases += [(name, stores[name].prune, lambda name=name: save(name)) for name in ours]
    for _, before, fn in cases:  # warm: the store exists and holds a snapshot, the peers' files exist
        before()
        fn()
    times: dict[str, list[float]] = {case[0]: [] for case in cases}
    cpu: dict[str, list[float]] = {case[0]: [] for case in cases}
    dirty: dict[str, list[int | None]] = {case[0]: [] for case in cases}
    reported: dict[str, list[int | None]] = {case[0]: [] for case in cases}
    load_start = os.getloadavg()
    for r in range(rounds):
        # The order rotates each round: a case never always follows the same one (whose
        # writeback may still keep the disk busy for a while).
        for name, before, fn in cases[r % len(cases):] + cases[:r % len(cases)]:
            change(state if changing is None else changing)
            reported_before = _reported_kib()
            before()
            if settle:
                os.sync()  # outside the clock, before every case alike
            dirty[name].append(_dirty_kib())
            c, t = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            reported_after = _reported_kib()
            reported[name].append(None if reported_before is None or reported_after is None
                                  else (reported_after - reported_before) // 1024)
    load_end = os.getloadavg()
    sizes = {name: stores[name].list()[-1].bytes_written for name in ours}
    for store in stores.values():
        store.close()
    rows = {name: {"median_ms": round(statistics.median(ts) * 1e3, 2), "min_ms": round(min(ts) * 1e3, 2),
                   "max_ms": round(max(ts) * 1e3, 2), "cpu_median_ms": round(statistics.median(cpu[name]) * 1e3, 2),
                   "runs_ms": [round(t * 1e3, 2) for t in ts], "cpu_runs_ms": [round(t * 1e3, 2) for t in cpu[name]],
                   "dirty_kib_at_start": dirty[name],
                   # MiB handed back to the host from the deletion before the clock to the
                   # end of the save: a round with some wrote onto pages the host took back
                   "reported_mib_during": reported[name]}
            for name, ts in times.items()}
    ratios = {}
    peers = [p for p in PEERS if p in times] + ([baseline[0]] if baseline is not None else [])
    # The other peers against torch.save too: how close a save with nothing to do but write
    # comes to the "1.5x faster than torch.save" mark at this size, on this disk, today.
    pairs = [(o, p) for o in ours for p in peers if p != o]
    pairs += [(o, PEERS[1]) for o in (PEERS[0], PEERS[2]) if o in times and PEERS[1] in times]
    for name, peer in pairs:
        for kind, series in (("wall", times), ("cpu", cpu)):
            per_round = [o / p for o, p in zip(series[name], series[peer]) if p > 0]
            if per_round:
                ratios[f"{name} / {peer} ({kind})"] = {
                    "median": round(statistics.median(per_round), 3),
                    "min": round(min(per_round), 3), "max": round(max(per_round), 3)}
    return {"logical_bytes": logical, "tensors": len(flat), "rounds": rounds, "settle": settle,
            "bytes_written": sizes, "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in load_end], "rows": rows, "ratios": ratios}


_IOV_BATCH = 512  # buffers per writev, under every system's IOV_MAX (1024 on Linux)
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
    parser.add_argument("--sizes", default="mlp,54,256",
                        help="comma-separated: 'mlp', a size in MiB, or frozenB+C (a B MiB part no save "
                             "changes, a C MiB part every save changes: a fine-tune with a frozen base)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per size (default: by size)")
    parser.add_argument("--cases", default="st,torch,bytes,packs,zstd,loose,baseline",
                        help="comma-separated keys: " + ",".join(CASE_KEYS) + " (baseline needs --baseline)")
    parser.add_argument("--baseline", help="a commit whose snapshots package (its defaults) is compared too")
    parser.add_argument("--settle", action="store_true", help="sync before every case, outside the clock")
    parser.add_argument("--no-strace", action="store_true", help="skip the syscall count")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where stores and files are written")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    keys = args.cases.split(",")
    unknown = [k for k in keys if k not in CASE_KEYS]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; known: {', '.join(CASE_KEYS)}")
    wanted = {CASE_KEYS[k] for k in keys if CASE_KEYS[k] is not None}
    work = Workdir(args.dir, "bench-saves-")
    import safetensors

    results = {"benchmark": "saves",
               "machine": machine_info(args.dir, ("snapshots", "bench"), torch=torch.__version__,
                                       safetensors=safetensors.__version__),
               "sizes": {}}
    try:
        baseline = None
        if args.baseline and "baseline" in keys:
            from .snapload import _baseline  # one way to import another commit's package

            module, full = _baseline(args.baseline, work.root / "baseline")
            results["baseline_commit"] = full
            baseline = (f"baseline {full[:7]}: packs, raw chunks (its defaults)", module)
        if not args.no_strace:
            results["syscalls_per_save"] = count_syscalls(work)
        for name, counts in (results.get("syscalls_per_save") or {}).items():
            print(f"  one 2.3 MiB save, {name}: {counts}", flush=True)
        for size in args.sizes.split(","):
            changing = None
            if size == "mlp":
                state, label, rounds = mlp_state(), "mlp_adamw", 15
            elif size.startswith("frozen"):  # frozenB+C: a B MiB base no round changes, C MiB that each does
                base, _, changed = size[len("frozen"):].partition("+")
                changing = build_state(int(changed), seed=1)
                state, label, rounds = {"base": build_state(int(base)), "adapter": changing}, f"{size}mib", 5
            else:
                state, label, rounds = build_state(int(size)), f"{size}mib", 9 if int(size) <= 64 else 5
            rounds = args.rounds or rounds
            result = measure(label, state, rounds, work, wanted, baseline, args.settle, changing)
            results["sizes"][label] = result
            mib = result["logical_bytes"] / 2**20
            print(f"{label}: {mib:.1f} MiB, {rounds} rounds{', settled' if args.settle else ''}, load "
                  f"{result['loadavg_start'][0]:.1f} -> {result['loadavg_end'][0]:.1f}", flush=True)
            for name, row in result["rows"].items():
                print(f"  {name:<48} median {row['median_ms']:8.1f} ms ({row['min_ms']:.1f}-{row['max_ms']:.1f}), "
                      f"cpu {row['cpu_median_ms']:.1f} ms")
            for name, r in result["ratios"].items():
                print(f"  {name:<100} {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})")
            del state
    finally:
        work.close()
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
