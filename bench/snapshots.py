"""Snapshot store vs torch.save, safetensors and torch.distributed.checkpoint.

    python -m bench snapshots [--mb 256] [--dir DIR] [--chunk-mb 4] [--level 1] [--out PATH]
    python -m bench snapshots --hot [--mb 256] [--repeat 9]   # the hot load_into row only
    python -m bench snapshots --cold [--mb 1024] [--repeat 5] # the same, files evicted first

One process, one state, every peer in the same run. The state is transformer-like:
bf16 weight matrices, fp32 weight matrices (as master weights) and their fp32 Adam
moments, plus the small fp32 norms, biases and step counters a model carries. Values
are drawn like trained tensors rather than uniformly random bytes: weights normal with
std 0.02, first moments normal with std 1e-4, second moments the square of a normal
with std 1e-4 (positive, small). Random normal data is the hard case for compression:
real checkpoints usually compress a little better.

Every save is made durable (fsync) before its clock stops, as ours is. Loads read from
the page cache for every peer alike (this benchmark does not drop caches), into fresh
memory: before each timed load the previous result is dropped and freed memory handed
back to the OS (malloc_trim), as a restarting process has none to reuse.

Other processes share the machine, so the peers are timed interleaved: each round runs
every save (then every load) once, in the same order, and a row reports the median over
`--repeat` rounds (its best and every run are in the JSON); ratios compare medians.
Results go to bench/results/snapshots.json. Benchmarks are not tests: nothing here
asserts.

`--hot` measures one thing, a reload into a live state (issue 22's first row): the same
live tensors receive the snapshot again and again, as a trainer that rolls back does.
Ours is `load_into` from a store that wrote the snapshot (its chunks are known good, so
they decode straight into the live tensors); the peer is safetensors `load_file` with
`copy_` into the same live tensors. Rounds alternate the two; the row reports the median
of the per-round ratios and their spread, plus each side's median wall and CPU time. It
is written under the key "hot_load_into" of the results file ("hot_load_into_none" with
`--compression none`; "_packs" added with `--packs`, a store that writes one pack file
per save, "_loose" with `--loose`, one file per chunk; neither: the store's default),
the rest kept. On a busy 2-core machine run it with
OMP_NUM_THREADS=1: the peer's `copy_` otherwise splits across two OpenMP threads that
spin-wait for a core, and its time jumps between ~25 and ~200 ms from one process to
the next (measured); one thread gives the peer its best, steady time.

`--cold` is the same row with the files read from the disk: before every timed call,
the snapshot's chunk files and the safetensors file are evicted from the page cache
(fsync, then posix_fadvise(POSIX_FADV_DONTNEED) on each), so each side reads its bytes
from the device, as a process restarting after its cache was recycled would. Written
under "cold_load_into" ("cold_load_into_none" with `--compression none`); a size other
than 256 MiB adds "_<mb>mib" to the key (for --hot too).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import snapshots
from snapshots.chunkfile import COMPRESSIONS

from ._common import Workdir, finish, machine_info

RESULTS = Path(__file__).parent / "results" / "snapshots.json"
D_MODEL = 512
# One block of matrices: qkv, attention out, mlp in, mlp out = 12 * d^2 elements.
BLOCK = [(3 * D_MODEL, D_MODEL), (D_MODEL, D_MODEL), (4 * D_MODEL, D_MODEL), (D_MODEL, 4 * D_MODEL)]


def build_state(mb: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    block_elems = sum(a * b for a, b in BLOCK)
    per_bf16_block = block_elems * 2
    per_fp32_block = block_elems * 4 * 3  # weights + exp_avg + exp_avg_sq
    target = mb << 20
    n32 = max(1, round(target * 0.55 / per_fp32_block))
    n16 = max(1, round((target - n32 * per_fp32_block) / per_bf16_block))

    def normal(shape, std):
        return torch.randn(shape, generator=g).mul_(std)

    model, master, optim_state = {}, {}, {}
    for i in range(n16):
        for j, shape in enumerate(BLOCK):
            model[f"layers.{i}.w{j}"] = normal(shape, 0.02).to(torch.bfloat16)
        model[f"layers.{i}.norm.weight"] = 1 + normal((D_MODEL,), 0.01)
        model[f"layers.{i}.norm.bias"] = normal((D_MODEL,), 0.01)
        model[f"layers.{i}.mlp.bias"] = normal((4 * D_MODEL,), 0.01)
    for i in range(n32):
        for j, shape in enumerate(BLOCK):
            key = f"master.{i}.w{j}"
            master[key] = normal(shape, 0.02)
            optim_state[key] = {
                "step": torch.tensor(1000.0),
                "exp_avg": normal(shape, 1e-4),
                "exp_avg_sq": normal(shape, 1e-4).square_(),
            }
    return {"model": model, "master": master, "optim": {"state": optim_state, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999)}]}}


def tensors_of(state, prefix=""):
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for k, v in state.items():
            yield from tensors_of(v, f"{prefix}.{k}" if prefix else str(k))


def classes(state) -> dict[str, dict]:
    """The state's tensors split by kind, for per-dtype compression ratios."""
    out = {"bf16 weights": {}, "fp32 weights": {}, "fp32 adam moments": {}}
    for key, t in tensors_of(state):
        if t.dtype == torch.bfloat16:
            out["bf16 weights"][key] = t
        elif "exp_avg" in key:
            out["fp32 adam moments"][key] = t
        elif t.dim() == 2:
            out["fp32 weights"][key] = t
    return out


def fsync_path(path: str) -> None:
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for f in files:
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            fd = os.open(root, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    else:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def disk_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


DEFAULT_REPEAT = 5


def _load_malloc_trim():
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    fn.argtypes, fn.restype = (ctypes.c_size_t,), ctypes.c_int
    return lambda: fn(0)


malloc_trim = _load_malloc_trim()


def interleaved(cases: list, rounds: int) -> dict[str, list[float]]:
    """Time each `(name, fn, setup)` once per round, in order, for `rounds` rounds:
    machine load then hits every case alike. `setup()` runs untimed before each call;
    each result is dropped (and freed memory returned to the OS) before the next call."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(rounds):
        for name, fn, setup in cases:
            if setup is not None:
                setup()
            malloc_trim()
            t = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t)
            del out
    return times


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench snapshots", description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=256, help="approximate state size in MiB (default 256)")
    p.add_argument("--dir", default=None, help="where the scratch directory goes (default: the system temp dir); removed after")
    p.add_argument("--chunk-mb", type=float, default=4, help="snapshot chunk size in MiB")
    p.add_argument("--level", type=int, default=1, help="zstd level")
    p.add_argument("--change", type=float, default=0.02, help="fraction of tensors changed for the incremental save")
    p.add_argument("--out", default=str(RESULTS), help="JSON results path")
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help=f"interleaved rounds; rows report the median (default {DEFAULT_REPEAT})")
    p.add_argument("--compression", default="zstd", choices=COMPRESSIONS, help="the store's compression (--hot)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--packs", dest="packs", action="store_const", const=True, default=None,
                      help="the store writes packs, one file per save (--hot, --cold; default: the store's default)")
    kind.add_argument("--loose", dest="packs", action="store_const", const=False, help="the store writes loose chunk files")
    p.add_argument("--hot", action="store_true", help="only the hot load_into row (merged into the results file)")
    p.add_argument("--cold", action="store_true", help="only the load_into row with the files evicted before each call")
    args = p.parse_args(argv)
    args.repeat = max(1, args.repeat)
    if args.hot or args.cold:
        return hot_main(args)

    started = time.perf_counter()
    work = Workdir(args.dir or tempfile.gettempdir(), "bench-snapshots-")
    try:
        machine = machine_info(work.root, ("snapshots",), torch=torch.__version__)
        results = {**run(args, work), "machine": machine}
    finally:
        work.close()
    out = Path(args.out)
    finish(results, out, started, time.perf_counter())
    report(results)
    print(f"\nwrote {out}")
    return 0


def run(args, work: Workdir) -> dict:
    print(f"building a ~{args.mb} MiB transformer-like state ...", flush=True)
    state = build_state(args.mb)
    flat = {k: t for k, t in tensors_of(state)}
    logical = sum(t.numel() * t.element_size() for t in flat.values())
    rows: dict[str, dict] = {}

    def record(name, kind, runs, nbytes=None, extra=None):
        runs = runs if isinstance(runs, list) else [runs]
        seconds = statistics.median(runs)
        rate_bytes = (extra or {}).get("logical_bytes_read", logical)  # a partial load's rate is of what it read
        rows[name] = {"kind": kind, "seconds": seconds, "mib_per_s": rate_bytes / seconds / 2**20, "bytes_on_disk": nbytes,
                      "best_seconds": min(runs), "runs": runs, **(extra or {})}
        print(f"  {name:<34} {seconds:8.3f} s (median of {len(runs)}; best {min(runs):.3f})", flush=True)

    # -- saves, interleaved: peers and our full save -----------------------------------
    path = str(work.new("torch.pt"))

    def torch_save():
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(os.path.dirname(path))

    st_path = str(work.new("model.safetensors"))
    try:
        from safetensors.torch import load_file, save_file
    except ImportError:
        load_file = save_file = None
        print("  safetensors not installed: skipped (pip install '.[bench]')")

    def st_save():
        save_file(flat, st_path)
        fsync_path(st_path)

    dcp_dir = str(work.new("dcp"))
    import torch.distributed.checkpoint as dcp

    store_dir = str(work.new("store"))
    chunk = int(args.chunk_mb * 2**20) // 64 * 64
    stores, infos = [], []

    def fresh_store():
        # A full save needs an empty store, or it would deduplicate. The store is opened
        # by a tiny save first: creating its 256 chunk directories happens once per store,
        # not per save. The deletes are synced out, as for DCP's directory.
        for s in stores:
            s.close()
        work.drop(store_dir)
        stores[:] = [snapshots.SnapshotStore(store_dir, chunk_size=chunk, level=args.level, keep_last=10)]
        stores[0].save({"opened": True}, index=0, term=0)
        os.sync()

    def fresh_dcp_dir():
        work.drop(dcp_dir)
        os.sync()

    def ours_save():
        infos[:] = [stores[0].save(state, index=1, term=1)]

    saves = [("torch.save + fsync", torch_save, None)]
    if save_file is not None:
        saves.append(("safetensors save_file + fsync", st_save, None))
    saves += [
        ("torch.distributed.checkpoint.save",
         lambda: dcp.save(state, storage_writer=dcp.FileSystemWriter(dcp_dir, sync_files=True), no_dist=True),
         fresh_dcp_dir),
        ("ours: save (full)", ours_save, fresh_store),
    ]
    times = interleaved(saves, args.repeat)
    store, full = stores[0], infos[0]
    record("torch.save + fsync", "save", times["torch.save + fsync"], disk_bytes(path))
    if save_file is not None:
        record("safetensors save_file + fsync", "save", times["safetensors save_file + fsync"], disk_bytes(st_path))
    record("torch.distributed.checkpoint.save", "save", times["torch.distributed.checkpoint.save"], disk_bytes(dcp_dir))
    record("ours: save (full)", "save", times["ours: save (full)"], full.bytes_written, {"bytes_written": full.bytes_written})

    keys = sorted(flat)
    step = max(1, round(1 / args.change))
    changed = keys[::step]
    changed_bytes = sum(flat[k].numel() * flat[k].element_size() for k in changed)
    for k in changed:
        flat[k].add_(flat[k].abs().mean().to(flat[k].dtype) * 0.01)  # in place: state sees it
    t0 = time.perf_counter()
    inc = store.save(state, index=2, term=1)
    t = time.perf_counter() - t0
    record(f"ours: save (incremental, {len(changed)}/{len(keys)} tensors)", "save", t, inc.bytes_written,
           {"bytes_written": inc.bytes_written, "tensors_changed": len(changed), "tensors": len(keys),
            "changed_logical_bytes": changed_bytes, "written_vs_full": inc.bytes_written / full.bytes_written})

    for k in changed:
        flat[k].mul_(1.001)
    store.save_async(state, index=3, term=1).result()  # warm the staging arena, as steady state
    blocked_runs, total_runs = [], []
    for i in range(args.repeat):
        for k in changed:
            flat[k].mul_(1.001)
        t0 = time.perf_counter()
        pending = store.save_async(state, index=4 + i, term=1)
        blocked_runs.append(time.perf_counter() - t0)
        pending.result()
        total_runs.append(time.perf_counter() - t0)
    blocked, total = statistics.median(blocked_runs), statistics.median(total_runs)
    rows["ours: save_async (caller blocked)"] = {"kind": "save", "seconds": blocked, "mib_per_s": logical / blocked / 2**20,
                                                 "bytes_on_disk": None, "total_seconds": total, "best_seconds": min(blocked_runs),
                                                 "runs": blocked_runs, "total_runs": total_runs}
    print(f"  {'ours: save_async (caller blocked)':<34} {blocked:8.3f} s (median of {len(blocked_runs)}; commit after {total:.3f} s)", flush=True)

    # -- loads, interleaved ---------------------------------------------------------------
    template = build_state(args.mb, seed=1)
    loads = [("torch.load", lambda: torch.load(path, weights_only=True))]
    if load_file is not None:
        # load_file maps the file lazily; copying out reads every byte, as the others do.
        loads.append(("safetensors load_file + copy", lambda: {k: torch.empty_like(v).copy_(v) for k, v in load_file(st_path).items()}))
    loads += [
        ("torch.distributed.checkpoint.load", lambda: dcp.load(template, storage_reader=dcp.FileSystemReader(dcp_dir), no_dist=True)),
        ("ours: load", lambda: store.load(full)),
        ("ours: load_into (in place)", lambda: store.load_into(full, template)),
        # Fine-tuning from a run: the weights alone, reading only the chunks they use.
        ("ours: load only='model'", lambda: store.load(full, only="model")),
        ("ours: verify", lambda: store.verify(full)),
    ]
    times = interleaved([(name, fn, None) for name, fn in loads], args.repeat)
    model_bytes = sum(t.numel() * t.element_size() for _, t in tensors_of(state["model"]))
    for name, _ in loads:
        partial = name.startswith("ours: load only")
        record(name, "load", times[name], extra={"logical_bytes_read": model_bytes} if partial else None)
    store.close()

    # -- compression by kind ---------------------------------------------------------------
    ratios = {}
    for name, part in classes(build_state(args.mb)).items():
        d = work.new("ratio-" + name.replace(" ", "-"))
        with snapshots.SnapshotStore(d, chunk_size=chunk, level=args.level) as s:
            info = s.save(part, index=1, term=1)
        ratios[name] = {"logical": info.bytes_logical, "stored": info.bytes_stored, "ratio": info.bytes_stored / info.bytes_logical}
        work.drop(d)

    return {
        "benchmark": "snapshots",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {"mb": args.mb, "logical_bytes": logical, "tensors": len(flat), "chunk_size": chunk, "level": args.level,
                   "workers": store.workers, "repeat": args.repeat, "timing": "median of interleaved rounds, loads into fresh memory",
                   "values": "trained-like normals: weights std 0.02, exp_avg std 1e-4, exp_avg_sq = N(0,1e-4)^2"},
        "rows": rows,
        "compression": ratios,
        "ratios": derived(rows, full.bytes_written),
    }


def hot_main(args) -> int:
    started = time.perf_counter()
    work = Workdir(args.dir or tempfile.gettempdir(), "bench-snapshots-cold-" if args.cold else "bench-snapshots-hot-")
    try:
        machine = machine_info(work.root, ("snapshots",), torch=torch.__version__)
        hot = hot_load_into(args, work)
    finally:
        work.close()
    hot["machine"] = {**machine, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    hot["elapsed_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"benchmark": "snapshots"}
    key = ("cold" if args.cold else "hot") + "_load_into" + ("" if args.compression == "zstd" else f"_{args.compression}")
    key += {None: "", True: "_packs", False: "_loose"}[args.packs]
    if args.mb != 256:
        key += f"_{args.mb}mib"  # other sizes beside the 256 MiB row, not over it
    results[key] = hot
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out} (key {key})")
    return 0


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (written back first: DONTNEED skips dirty pages)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(paths: list[str]) -> float:
    """The share of the files' pages in the page cache (mincore over a read-only mapping)."""
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mmap.restype = ctypes.c_void_p
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    total = cached = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return float("nan")
            try:
                if libc.mincore(addr, size, vec) != 0:
                    return float("nan")
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
        total += pages
        cached += sum(v & 1 for v in bytes(vec))
    return cached / total if total else 0.0


def hot_load_into(args, work: Workdir) -> dict:
    """Reload a snapshot into the same live tensors, against safetensors into the same
    (args.cold: with both sides' files evicted from the page cache before each call)."""
    from safetensors.torch import load_file, save_file

    print(f"building a ~{args.mb} MiB transformer-like state ...", flush=True)
    state = build_state(args.mb)
    flat = dict(tensors_of(state))
    logical = sum(t.numel() * t.element_size() for t in flat.values())
    st_path = str(work.new("model.safetensors"))
    save_file(flat, st_path)
    chunk = int(args.chunk_mb * 2**20) // 64 * 64
    kind = {} if args.packs is None else {"packs": args.packs}
    store = snapshots.SnapshotStore(str(work.new("store")), chunk_size=chunk, level=args.level, compression=args.compression,
                                    **kind)
    info = store.save(state, index=1, term=1)
    del state, flat
    live = build_state(args.mb, seed=1)
    live_flat = dict(tensors_of(live))

    def peer():
        with torch.no_grad():
            for k, v in load_file(st_path).items():
                live_flat[k].copy_(v)

    def ours():
        store.load_into(info, live)

    mine = "ours: load_into (cold)" if args.cold else "ours: load_into (hot)"
    theirs = "safetensors load_file + copy_ into live"
    files = [st_path] + [os.path.join(r, f) for kind in ("chunks", "packs")
                         for r, _, fs in os.walk(os.path.join(store.path, kind)) for f in fs]
    cases = [(theirs, peer, [st_path]), (mine, ours, files[1:])]
    wall: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    left_cached: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    loads: list[float] = []
    peer()  # warm both: the page cache, and first-touch of anything lazily allocated
    ours()
    for _ in range(args.repeat):
        loads.append(os.getloadavg()[0])
        for name, fn, own in cases:
            if args.cold:
                evict(files)  # both sides' files, so neither evicts the other's mid-round
                left_cached[name].append(cached_fraction(own))
            malloc_trim()
            c, t = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    store.close()
    ratios = [o / p for o, p in zip(wall[mine], wall[theirs])]
    cpu_ratios = [o / p for o, p in zip(cpu[mine], cpu[theirs])]
    rows = {name: {"seconds": statistics.median(wall[name]), "cpu_seconds": statistics.median(cpu[name]),
                   "mib_per_s": logical / statistics.median(wall[name]) / 2**20, "runs": wall[name], "cpu_runs": cpu[name],
                   **({"cached_after_evict": left_cached[name]} if args.cold else {})}
            for name, _, _ in cases}
    for name, row in rows.items():
        print(f"  {name:<42} {row['seconds'] * 1e3:7.1f} ms wall, {row['cpu_seconds'] * 1e3:7.1f} ms CPU (medians of {args.repeat})")
    summary = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
               "cpu_median": statistics.median(cpu_ratios), "loadavg_per_round": [round(x, 2) for x in loads]}
    print(f"  ours / peer, per round: median {summary['median']:.2f} (spread {summary['min']:.2f}-{summary['max']:.2f}),"
          f" CPU {summary['cpu_median']:.2f}; load average {os.getloadavg()[0]:.1f}")
    return {"config": {"mb": args.mb, "logical_bytes": logical, "chunk_size": chunk, "level": args.level, "compression": args.compression,
                       "packs": args.packs,
                       "repeat": args.repeat, "workers": store.workers, "bytes_stored": info.bytes_stored,
                       "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                       "cold": args.cold,
                       "timing": "interleaved rounds into the same live tensors; ratio = median of per-round ratios"
                                 + ("; every file evicted (fsync + POSIX_FADV_DONTNEED) before each call" if args.cold else "")},
            "rows": rows, "ours_over_peer": summary}


def derived(rows: dict, full_bytes: int) -> dict:
    ours_save = rows["ours: save (full)"]["seconds"]
    ours_load = rows["ours: load"]["seconds"]
    out = {}
    for name, row in rows.items():
        if name.startswith("ours"):
            continue
        mine = ours_save if row["kind"] == "save" else ours_load
        out[f"ours vs {name} (speed)"] = row["seconds"] / mine
        if row.get("bytes_on_disk"):
            out[f"ours vs {name} (bytes on disk)"] = full_bytes / row["bytes_on_disk"]
    sync = rows["ours: save (full)"]["seconds"]
    out["save_async blocked / sync save"] = rows["ours: save_async (caller blocked)"]["seconds"] / sync
    inc = [r for n, r in rows.items() if n.startswith("ours: save (incremental")][0]
    out["incremental written / full written"] = inc["written_vs_full"]
    return out


def report(results: dict) -> None:
    rows = results["rows"]
    logical = results["config"]["logical_bytes"]
    header = ["", "seconds", "MiB/s", "on disk (MiB)", "disk/logical"]
    table = []
    for name, r in rows.items():
        disk = r.get("bytes_on_disk")
        table.append([name, f"{r['seconds']:.3f}", f"{r['mib_per_s']:.0f}",
                      f"{disk / 2**20:.1f}" if disk else "", f"{disk / logical:.3f}" if disk else ""])
    comp = [[k, f"{v['logical'] / 2**20:.1f}", f"{v['stored'] / 2**20:.1f}", f"{v['ratio']:.3f}"] for k, v in results["compression"].items()]
    ratio_rows = [[k, f"{v:.3f}"] for k, v in results["ratios"].items()]
    title = f"{logical / 2**20:.0f} MiB state, {results['config']['tensors']} tensors, {results['machine']['cpu_count']} CPUs"
    try:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        for cols, body, name in ((header, table, title), (["kind", "logical MiB", "stored MiB", "stored/logical"], comp, "compression by kind"),
                                 (["ratio", "value"], ratio_rows, "ratios (>1 means ours is faster/smaller)")):
            t = Table(title=name)
            for c in cols:
                t.add_column(c, justify="left" if c in ("", "kind", "ratio") else "right")
            for row in body:
                t.add_row(*row)
            console.print(t)
    except ImportError:
        for cols, body in ((header, table), (["kind", "logical", "stored", "ratio"], comp), (["ratio", "value"], ratio_rows)):
            print(" | ".join(cols))
            for row in body:
                print(" | ".join(row))
    print(results["config"]["values"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
