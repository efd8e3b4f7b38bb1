"""Snapshots and replay of a CUDA state, against safetensors-to-CUDA, torch.save and DCP.

    python -m bench gpu [--mb 1024] [--repeat 5] [--entries 400] [--dir DIR] [--out PATH]
    python -m bench gpu --device cpu --mb 16 --repeat 1     # a dry run of the code, no GPU

Without a CUDA device (and without --device cpu) it prints why and exits with status 2,
measuring nothing. bench/gpu_check.sh runs this and the CUDA tests as one script.

The state is bench/snapshots.py's transformer-like one (bf16 weights, fp32 master
weights and Adam moments, trained-like values), moved to the GPU. Three parts, each
timed in interleaved rounds (every case once per round, same order; rows report medians
and the per-round ratios to the named peer with their spread):

1. Saves of the GPU state, each made durable before its clock stops: ours (`save`, and
   `save_async` with the time the caller is blocked: staging into pinned host buffers
   on a side stream, fenced with an event), safetensors `save_file`, `torch.save`, and
   `torch.distributed.checkpoint.save`, each + fsync. Ours saves into a fresh store each
   round (else it would deduplicate).
2. Loads onto the GPU: ours `load_into` a live GPU state (each chunk read and decoded
   on a worker thread into its reusable page-locked buffer, hash-checked, then copied
   to the device; the threads overlap one chunk's copy with others' reads and decodes)
   and `load(map_location="cuda")` into fresh tensors, against safetensors
   `load_file(device="cuda")` with `copy_` into the same live state and into fresh
   tensors, and DCP `load` into the live state. Page cache hot, as after a save.
   Every timed call ends with `torch.cuda.synchronize()`.
3. Replay: a Journal over a GPU table takes `--entries` row updates (snapshots every
   half), is closed, and is reopened into a fresh GPU state; the row reports the
   recovery's snapshot-load and replay times, and the same updates applied with no
   journal as the reference.

Every load and the recovery are checked bit for bit against the saved state; a failed
check is recorded in the JSON ("checks") and makes the exit status 1. Results go to
bench/results/gpu.json (a --device cpu dry run writes only where --out says).
Benchmarks are not tests: nothing here asserts time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import replay
import snapshots

from ._common import Workdir, finish, machine_info
from .snapshots import build_state, fsync_path, malloc_trim, tensors_of

RESULTS = Path(__file__).parent / "results" / "gpu.json"
NO_CUDA = 2  # exit status: nothing was measured
TABLE_ROWS, TABLE_DIM, ROWS_PER_ENTRY = 65_536, 256, 8


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run of the code")
    p.add_argument("--mb", type=int, default=1024, help="approximate state size in MiB (default 1024)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--entries", type=int, default=400, help="journal entries for the replay part (default 400)")
    p.add_argument("--dir", default=None, help="scratch directory parent (default: the system temp dir)")
    p.add_argument("--out", default=None, help=f"JSON results path (default {RESULTS} on CUDA; none for a cpu dry run)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench gpu: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing measured. Run it on a GPU machine, or pass --device cpu for a dry run of the code.",
              file=sys.stderr)
        return NO_CUDA
    args.repeat = max(1, args.repeat)
    out = Path(args.out) if args.out else (RESULTS if device.type == "cuda" else None)

    started = time.perf_counter()
    work = Workdir(args.dir or tempfile.gettempdir(), "bench-gpu-")
    try:
        versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
        if device.type == "cuda":
            versions["gpu"] = torch.cuda.get_device_name(device)
        machine = machine_info(work.root, ("snapshots", "replay"), **versions)
        results = {"benchmark": "gpu", "device": str(device), **run(args, device, work), "machine": machine}
    finally:
        work.close()
    failed = [name for name, ok in results["checks"].items() if not ok]
    if out is not None:
        finish(results, out, started, time.perf_counter())
        print(f"\nwrote {out}")
    if failed:
        print(f"bench gpu: bit-exactness checks FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run(args, device: torch.device, work: Workdir) -> dict:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    print(f"building a ~{args.mb} MiB transformer-like state on {device} ...", flush=True)
    state = _to(build_state(args.mb), device)
    flat = dict(tensors_of(state))
    logical = sum(t.numel() * t.element_size() for t in flat.values())
    checks: dict[str, bool] = {}
    config = {"mb": args.mb, "logical_bytes": logical, "tensors": len(flat), "repeat": args.repeat,
              "entries": args.entries, "timing": "interleaved rounds; ratios are medians of per-round ratios"}

    # -- saves ----------------------------------------------------------------------------
    from safetensors.torch import load_file, save_file
    import torch.distributed.checkpoint as dcp

    st_path, pt_path, dcp_dir = (str(work.new(n)) for n in ("model.safetensors", "state.pt", "dcp"))
    store_dir, async_dir = str(work.new("store")), str(work.new("store-async"))
    stores: dict[str, snapshots.SnapshotStore] = {}
    infos: dict[str, snapshots.SnapshotInfo] = {}
    blocked: list[float] = []

    def fresh(key: str, path: str):
        def setup():
            if key in stores:
                stores.pop(key).close()
            work.drop(path)
            stores[key] = snapshots.SnapshotStore(path, keep_last=10)
            stores[key].save({"opened": True}, index=0, term=0)  # chunk directories, once per store
            os.sync()
        return setup

    def ours_save():
        infos["sync"] = stores["sync"].save(state, index=1, term=1)

    def ours_async():
        t = time.perf_counter()
        pending = stores["async"].save_async(state, index=1, term=1)
        blocked.append(time.perf_counter() - t)
        infos["async"] = pending.result()

    def st_save():
        save_file(flat, st_path)
        fsync_path(st_path)

    def pt_save():
        with open(pt_path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())

    def dcp_save():
        work.drop(dcp_dir)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(dcp_dir, sync_files=True), no_dist=True)

    saves = [("safetensors save_file + fsync", st_save, None), ("torch.save + fsync", pt_save, None),
             ("torch.distributed.checkpoint.save", dcp_save, None),
             ("ours: save", ours_save, fresh("sync", store_dir)),
             ("ours: save_async (until committed)", ours_async, fresh("async", async_dir))]
    print("saves ...", flush=True)
    for _, fn, setup in saves:  # warm, as the loads are: pinned staging memory, the CUDA context, first calls
        if setup is not None:
            setup()
        fn()
        sync()
    blocked.clear()
    save_times = _interleaved(saves, args.repeat, sync)
    save_rows = _rows(save_times, "safetensors save_file + fsync", logical)
    save_rows["ours: save_async (caller blocked)"] = _row(blocked, save_times["safetensors save_file + fsync"], logical)
    _say("saves", save_rows, logical)  # now: a run cut short by its time limit still shows them
    info, store = infos["sync"], stores["sync"]

    # -- loads ----------------------------------------------------------------------------
    live = _to(build_state(args.mb, seed=1), device)
    live_flat = dict(tensors_of(live))
    fresh_out: dict[str, object] = {}

    def ours_into():
        store.load_into(info, live)

    def ours_fresh():
        fresh_out["ours"] = store.load(info, map_location=device)

    def st_into():
        with torch.no_grad():
            for k, v in load_file(st_path, device=str(device)).items():
                live_flat[k].copy_(v)

    def st_fresh():
        fresh_out["safetensors"] = load_file(st_path, device=str(device))

    def dcp_into():
        dcp.load(live, storage_reader=dcp.FileSystemReader(dcp_dir), no_dist=True)

    loads = [("safetensors load_file(device) + copy_ into live", st_into, None),
             ("safetensors load_file(device) (fresh)", st_fresh, None),
             ("torch.distributed.checkpoint.load (into live)", dcp_into, None),
             ("ours: load_into (live GPU state)", ours_into, None),
             ("ours: load(map_location=device) (fresh)", ours_fresh, None)]
    print("loads ...", flush=True)
    for _, fn, _ in loads:  # warm: the page cache, pinned buffers, CUDA context and allocator
        fn()
        sync()
    load_times = _interleaved(loads, args.repeat, sync)
    load_rows = _rows(load_times, "safetensors load_file(device) + copy_ into live", logical)
    _say("loads", load_rows, logical)
    ours_into()
    sync()
    checks["load_into equals the saved state"] = _same(live, state)
    checks["load(map_location) equals the saved state"] = _same(fresh_out["ours"], state)
    checks["load_into kept tensors on the device"] = all(t.device == flat[k].device for k, t in live_flat.items())
    for s in stores.values():
        s.close()
    del fresh_out, live, live_flat

    # -- replay ---------------------------------------------------------------------------
    print("replay ...", flush=True)
    replay_row, replay_ok = _replay(args, device, work, sync)
    checks["recovered GPU state equals the live one"] = replay_ok

    results = {"config": config, "saves": save_rows, "loads": load_rows, "replay": replay_row, "checks": checks}
    _report(results)
    return results


def _to(state, device: torch.device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [_to(v, device) for v in state]
    return state


def _same(a, b) -> bool:
    fa, fb = dict(tensors_of(a)), dict(tensors_of(b))
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and fa[k].device == fb[k].device
        and torch.equal(fa[k].view(torch.uint8) if fa[k].dim() else fa[k], fb[k].view(torch.uint8) if fb[k].dim() else fb[k])
        for k in fa)


def _interleaved(cases: list, rounds: int, sync) -> dict[str, list[float]]:
    """Each `(name, fn, setup)` once per round, in order; setup untimed; every timed call
    ends when the device has finished (`sync`)."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(rounds):
        for name, fn, setup in cases:
            if setup is not None:
                setup()
            malloc_trim()
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def _row(runs: list[float], peer_runs: list[float], logical: int) -> dict:
    ratios = [r / p for r, p in zip(runs, peer_runs)]
    seconds = statistics.median(runs)
    return {"seconds": seconds, "mib_per_s": logical / seconds / 2**20, "runs": runs,
            "over_peer": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}


def _rows(times: dict[str, list[float]], peer: str, logical: int) -> dict:
    return {name: {**_row(runs, times[peer], logical), "peer": peer} for name, runs in times.items()}


def _replay(args, device: torch.device, work: Workdir, sync) -> tuple[dict, bool]:
    """Entries into a journaled GPU table, then a recovery into a fresh one (module doc)."""
    ops = replay.Ops()

    @ops.op
    def update_rows(state, *, rows, values):
        state["table"].index_copy_(0, torch.as_tensor(rows, dtype=torch.long, device=device), values)

    g = torch.Generator().manual_seed(7)
    payloads = [{"rows": torch.randint(0, TABLE_ROWS, (ROWS_PER_ENTRY,), generator=g).tolist(),
                 "values": torch.randn(ROWS_PER_ENTRY, TABLE_DIM, generator=g)} for _ in range(args.entries)]

    def table():
        return {"table": torch.zeros(TABLE_ROWS, TABLE_DIM, device=device)}

    # The reference: the same updates, no journal.
    plain = table()
    sync()
    t = time.perf_counter()
    for p in payloads:
        update_rows(plain, rows=p["rows"], values=p["values"].to(device))
    sync()
    plain_s = time.perf_counter() - t

    path = work.new("journal")
    live = table()
    policy = replay.Every(entries=max(1, args.entries // 2))
    t = time.perf_counter()
    with replay.Journal.open(path, state=live, ops=ops, snapshot=policy, snapshot_on_close=False) as journal:
        for p in payloads:
            journal.apply("update_rows", **p)
        journal.flush()
        sync()
        apply_s = time.perf_counter() - t
    again = table()
    sync()
    t = time.perf_counter()
    with replay.Journal.open(path, state=again, ops=ops, snapshot=policy, snapshot_on_close=False) as journal:
        sync()
        open_s = time.perf_counter() - t
        rec = journal.recovery
        ok = _same(again, live) and _same(again, plain)
    row = {"entries": args.entries, "table_bytes": TABLE_ROWS * TABLE_DIM * 4,
           "plain_apply_seconds": plain_s, "journal_apply_seconds": apply_s, "recovery_seconds": open_s,
           "snapshot_index": rec.snapshot_index, "replayed": len(rec.replayed),
           "snapshot_load_seconds": rec.load_seconds, "replay_seconds": rec.replay_seconds,
           "replay_entries_per_s": len(rec.replayed) / rec.replay_seconds if rec.replay_seconds else None}
    return row, ok


def _say(part: str, rows: dict, logical: int) -> None:
    print(f"\n{part} ({logical / 2**20:.0f} MiB; ratio = ours or peer / the first row, per round)")
    for name, row in rows.items():
        r = row["over_peer"]
        print(f"  {name:<50} {row['seconds'] * 1e3:9.1f} ms  {row['mib_per_s']:8.0f} MiB/s"
              f"  x{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})", flush=True)


def _report(results: dict) -> None:
    """The replay row and the checks (the save and load rows were printed as they were measured)."""
    rp = results["replay"]
    print(f"\nreplay: {rp['entries']} entries; recovery {rp['recovery_seconds'] * 1e3:.1f} ms (snapshot at "
          f"{rp['snapshot_index']} loaded in {rp['snapshot_load_seconds'] * 1e3:.1f} ms, {rp['replayed']} replayed in "
          f"{rp['replay_seconds'] * 1e3:.1f} ms); the same updates with no journal: {rp['plain_apply_seconds'] * 1e3:.1f} ms")
    print("checks: " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in results["checks"].items()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
