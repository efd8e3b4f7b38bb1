"""Benchmark recovery and the live cost of a Journal: ``python -m bench recovery [--quick]``.

One run measures:

1. Recovery time (``Journal.open`` of an existing directory) against the number of
   entries since the newest snapshot, for two workloads:
   *rows*: ``update_rows(state, *, rows, values)`` writing 4 rows of an
   ``nn.Embedding(50_000, 64)`` fp32 table (0 / 1k / 10k / 100k entries), and
   *train*: logical ``train_step(state, *, ids, seed, lr)`` ops of a small MLP with
   AdamW and a DataCursor (0 / 100 / 1k / 5k entries).
   Each point reports the snapshot-load part and the replay part separately (from
   ``journal.recovery``), the replay rate in ops/s, and checks that the recovered state
   is bit-identical to the live state that wrote the log.
2. The peer: a ``torch.save`` checkpoint user. Time to ``torch.load`` +
   ``load_state_dict`` the same state (and to save it), and the work such a user loses
   when the process dies N entries after the checkpoint: N entries, i.e. N times the
   measured step time without any journal. The journal loses none of them (in
   ``group`` mode at most the entries of one group commit that was not yet durable).
3. Per-step overhead of ``journal.apply`` around a real training step: the same loop
   with no journal, with a journal in ``group`` mode with async snapshots every 50
   entries, and with a journal that never snapshots (to separate log from snapshot
   cost). The model is sized at run time to ~50 ms per step (and ~5 ms, for
   information) on this CPU with ``torch.set_num_threads`` fixed; the arms run in
   rotating order, repeated, and the report gives median and mean per-step times.
   Target: journal median <= 1.03 x plain median at 50 ms steps.
4. Profiles (``--no-profile`` skips): cProfile of the journal loop at ~5 ms steps, and a
   decomposition of replay (log scan + envelope decode alone, handlers alone, full replay).

Directories live under ``.bench-tmp/`` in the repository and are removed afterwards.
Recovery reads a page-cache-hot log and snapshot (a process restart, not a reboot).
Results go to ``bench/results/recovery.json`` and to a table on stdout. This is a
benchmark, not a test: nothing asserts time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

import replay
from replay.determinism import fingerprint
from replay.envelope import unwrap

from ._common import REPO, Workdir, finish, fmt, machine_info, ms, pct

RESULTS = Path(__file__).parent / "results" / "recovery.json"
OVERHEAD_TARGET = 0.03  # journal / plain - 1 at 50 ms steps, group mode

EMB_ROWS, EMB_DIM, ROWS_PER_OP = 50_000, 64, 4
TRAIN_IN, TRAIN_CLASSES, TRAIN_SAMPLES = 256, 10, 4096

pc = time.perf_counter
say = (lambda *a: print(*a, file=sys.stderr, flush=True))


# ---------------------------------------------------------------------- helpers


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return fingerprint({"t": a}) == fingerprint({"t": b})


def tensors_of(obj, prefix=""):
    """Flatten tensors (and ints) of a nested state_dict for comparison."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(tensors_of(v, f"{prefix}.{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(tensors_of(v, f"{prefix}.{i}"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = torch.tensor(obj)
    return out


def same_state(a: dict, b: dict) -> bool:
    fa = tensors_of({k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in a.items()})
    fb = tensors_of({k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in b.items()})
    return fa.keys() == fb.keys() and all(bit_equal(fa[k], fb[k]) for k in fa)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fsync_save(obj, path: Path) -> None:
    torch.save(obj, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- workloads


class RowsJob:
    """An embedding table updated a few rows at a time: ``update_rows(state, *, rows, values)``."""

    def __init__(self, init=0):
        torch.manual_seed(init)
        self.emb = torch.nn.Embedding(EMB_ROWS, EMB_DIM)
        self.state = {"emb": self.emb}
        self.ops = replay.Ops()
        self.ops.op(self.update_rows)
        g = torch.Generator().manual_seed(1234)
        self._values = [torch.randn(ROWS_PER_OP, EMB_DIM, generator=g) for _ in range(256)]

    @staticmethod
    def update_rows(state, *, rows, values):
        with torch.no_grad():
            state["emb"].weight.index_copy_(0, torch.as_tensor(rows, dtype=torch.long), values)

    def payload(self, i: int) -> dict:
        return {"rows": [(i * 7919 + k * 104_729) % EMB_ROWS for k in range(ROWS_PER_OP)],
                "values": self._values[i % len(self._values)]}

    def checkpoint(self):
        return self.emb.state_dict()

    def load_checkpoint(self, sd):
        self.emb.load_state_dict(sd)


class MLP(torch.nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.inp = torch.nn.Linear(TRAIN_IN, width)
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth - 1))
        self.out = torch.nn.Linear(width, TRAIN_CLASSES)

    def forward(self, x, generator):
        h = torch.relu(self.inp(x))
        for layer in self.hidden:
            h = torch.relu(layer(h))
        keep = torch.rand(h.shape, generator=generator) >= 0.1  # payload-seeded dropout
        return self.out(h * keep / 0.9)


class TrainJob:
    """An MLP + AdamW + DataCursor trained by ``train_step(state, *, ids, seed, lr)`` ops."""

    def __init__(self, width: int, depth: int, batch: int, seed=0, init=None):
        g = replay.seeded_generator(seed, 1)  # the dataset and data order: part of the job
        torch.manual_seed(seed if init is None else init)  # the model's initial weights
        self.x = torch.randn(TRAIN_SAMPLES, TRAIN_IN, generator=g)
        self.y = torch.randint(0, TRAIN_CLASSES, (TRAIN_SAMPLES,), generator=g)
        self.width, self.depth, self.batch, self.seed = width, depth, batch, seed
        self.model = MLP(width, depth)
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)
        self.cursor = replay.DataCursor(TRAIN_SAMPLES, seed)
        self.state = {"model": self.model, "optim": self.optim, "data": self.cursor}
        self.ops = replay.Ops()
        self.ops.op(self.train_step)
        self.handler_seconds: list[float] | None = None  # set to a list to time every handler call

    def train_step(self, state, *, ids, seed, lr):
        started = pc()
        state["data"].consume(ids)
        index = torch.as_tensor(ids, dtype=torch.long)
        optim = state["optim"]
        for group in optim.param_groups:
            group["lr"] = lr
        optim.zero_grad(set_to_none=True)
        logits = state["model"](self.x[index], replay.seeded_generator(seed))
        torch.nn.functional.cross_entropy(logits, self.y[index]).backward()
        optim.step()
        if self.handler_seconds is not None:
            self.handler_seconds.append(pc() - started)

    def payload(self, step: int) -> dict:
        return {"ids": self.cursor.peek(self.batch), "seed": self.seed * 1_000_003 + step,
                "lr": 1e-3 * min(1.0, (step + 1) / 100)}

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def checkpoint(self):
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict(), "data": self.cursor.state_dict()}

    def load_checkpoint(self, sd):
        self.model.load_state_dict(sd["model"])
        self.optim.load_state_dict(sd["optim"])
        self.cursor.load_state_dict(sd["data"])


def plain_rate(make_job, n: int) -> float:
    """Seconds per op of the handler called directly (no journal): the user's own step time."""
    job = make_job()
    handler = job.update_rows if isinstance(job, RowsJob) else job.train_step
    for i in range(min(5, n)):
        handler(job.state, **job.payload(i))
    started = pc()
    for i in range(5, 5 + n):
        handler(job.state, **job.payload(i))
    return (pc() - started) / n


# ---------------------------------------------------------------------- 1+2: recovery vs torch.save


def bench_recovery(work: Workdir, label: str, make_job, op: str, counts, repeats: int, step_seconds: float):
    points = []
    for n in counts:
        path = work.new(f"{label}-{n}")
        live = make_job()
        started = pc()
        journal = replay.Journal.open(path, state=live.state, ops=live.ops, snapshot=replay.Every(), progress=False, snapshot_on_close=False)
        open_fresh = pc() - started
        started = pc()
        for i in range(n):
            journal.apply(op, **live.payload(i))
        apply_s = pc() - started
        journal.close()
        log_bytes, snap_bytes = dir_bytes(path / "log"), dir_bytes(path / "snapshots")

        rec = []
        identical = None
        reps = repeats if n * step_seconds < 1.5 else 1  # long replays: one recovery
        for r in range(reps):
            fresh = make_job(init=1 + r)  # another init: recovery must overwrite all of it
            gc.collect()
            started = pc()
            journal = replay.Journal.open(path, state=fresh.state, ops=fresh.ops, snapshot=replay.Every(), progress=False, snapshot_on_close=False)
            open_s = pc() - started
            report = journal.recovery
            assert report.entries_replayed == n, (report, n)
            journal.close()
            rec.append({"open_s": open_s, "load_s": report.load_seconds, "replay_s": report.replay_seconds})
            if identical is None:
                identical = same_state(live.state, fresh.state)
        ckpt = path / "checkpoint.pt"
        started = pc()
        fsync_save(live.checkpoint(), ckpt)
        save_s = pc() - started
        loads = []
        for r in range(repeats):
            fresh = make_job(init=1 + r)
            started = pc()
            fresh.load_checkpoint(torch.load(ckpt, map_location="cpu", weights_only=True))
            loads.append(pc() - started)
        ckpt_bytes = ckpt.stat().st_size
        work.drop(path)

        med = {k: statistics.median(x[k] for x in rec) for k in ("open_s", "load_s", "replay_s")}
        load_ckpt = statistics.median(loads)
        points.append({
            "entries_since_snapshot": n,
            "recover_open_ms": ms(med["open_s"]),
            "snapshot_load_ms": ms(med["load_s"]),
            "replay_ms": ms(med["replay_s"]),
            "other_open_ms": ms(med["open_s"] - med["load_s"] - med["replay_s"]),
            "replay_ops_per_s": round(n / med["replay_s"]) if n and med["replay_s"] > 0 else None,
            "replay_us_per_op": round(med["replay_s"] / n * 1e6, 2) if n else None,
            "recover_open_all_ms": [ms(x["open_s"]) for x in rec],
            "bit_identical_to_live": identical,
            "live_apply_ops_per_s": round(n / apply_s) if n else None,
            "fresh_open_ms": ms(open_fresh),
            "log_bytes": log_bytes,
            "snapshot_dir_bytes": snap_bytes,
            "torch_save": {
                "save_fsync_ms": ms(save_s),
                "load_ms": ms(load_ckpt),
                "load_all_ms": [ms(x) for x in loads],
                "file_bytes": ckpt_bytes,
                "entries_lost": n,
                "work_lost_s": round(n * step_seconds, 4),
            },
            "recover_over_torch_load": round(med["open_s"] / load_ckpt, 2),
        })
        p = points[-1]
        say(f"  [{label}] {n:>7} entries: open {p['recover_open_ms']:.1f} ms (load {p['snapshot_load_ms']:.1f}, "
            f"replay {p['replay_ms']:.1f}), torch.load {p['torch_save']['load_ms']:.1f} ms, "
            f"identical={identical}")
    return points


# ---------------------------------------------------------------------- 3: per-step overhead


def step_time(width, depth, batch, steps=20):
    """Median main-thread CPU seconds of a plain step (CPU time: robust to other tenants of the machine)."""
    job = TrainJob(width, depth, batch)
    times = []
    for i in range(steps + 3):
        payload = job.payload(i)
        started = time.thread_time()
        job.train_step(job.state, **payload)
        times.append(time.thread_time() - started)
    return statistics.median(times[3:])


def calibrate(target_s: float, depth: int, batch: int):
    """Width (multiple of 32) whose plain step costs about target_s of CPU on this machine."""
    width, measured = 512, None
    for _ in range(6):
        measured = step_time(width, depth, batch)
        if abs(measured / target_s - 1) < 0.06:
            break
        scale = (target_s / measured) ** 0.6  # cost grows a little slower than width**2 at small widths
        new = int(max(64, min(4096, round(width * scale / 32) * 32)))
        if new == width:
            break
        width = new
    return width, measured


ARMS = ("plain", "journal", "journal_nosnap")


class Arm:
    """One arm of the overhead comparison: a training job, with or without a journal.

    The job (and its journal) lives for the whole comparison, so repeated runs continue
    the same training in steady state: snapshot arenas are reused, old snapshots pruned
    and the log compacted, as in a long job.
    """

    def __init__(self, work: Workdir, name: str, width, depth, batch, snapshot_every, durability, warmup=5):
        self.name = name
        self.job = TrainJob(width, depth, batch)
        self.journal = None
        self.step = 0
        self.snapshot_every = snapshot_every
        self.info = {}
        if name != "plain":
            self.path = work.new(f"overhead-{name}")
            policy = replay.Every(entries=snapshot_every) if name == "journal" else replay.Every()
            started = pc()
            self.journal = replay.Journal.open(self.path, state=self.job.state, ops=self.job.ops, snapshot=policy,
                                               durability=durability, progress=False)
            self.info["open_ms"] = ms(pc() - started)
            self.blocking = watch_snapshot_path(self.journal)
            apply = self.journal.apply
            self._step = lambda p: apply("train_step", **p)  # noqa: E731
        else:
            job = self.job
            self._step = lambda p: job.train_step(job.state, **p)  # noqa: E731
        for _ in range(warmup):
            self._step(self.job.payload(self.step))
            self.step += 1

    def run(self, steps: int) -> dict:
        """`steps` timed steps: per-step wall, main-thread CPU and time outside the handler."""
        job = self.job
        if self.journal is not None:
            for v in self.blocking.values():
                v.clear()
        gc.collect()
        job.handler_seconds = []
        wall, cpu = [], []
        loop_started, proc_started = pc(), time.process_time()
        for _ in range(steps):
            started, cpu_started = pc(), time.thread_time()
            self._step(job.payload(self.step))
            cpu.append(time.thread_time() - cpu_started)
            wall.append(pc() - started)
            self.step += 1
        loop_s, proc_s = pc() - loop_started, time.process_time() - proc_started
        own = [w - h for w, h in zip(wall, job.handler_seconds)]  # time in the step outside the handler
        job.handler_seconds = None
        extra = {}
        if self.journal is not None:
            extra["snapshot_main_thread_ms"] = {k: [ms(x) for x in v] for k, v in self.blocking.items()}
        return {"wall": wall, "cpu": cpu, "own": own, "loop_s": loop_s, "proc_s": proc_s, "extra": extra}

    def close(self, work: Workdir) -> dict:
        if self.journal is not None:
            started = pc()
            self.journal.close()
            self.info["close_ms"] = ms(pc() - started)
            self.info["steps_applied"] = self.step
            err = self.journal.last_snapshot_error
            self.info["snapshot_error"] = repr(err) if err else None
            work.drop(self.path)
        return self.info


def watch_snapshot_path(journal) -> dict[str, list[float]]:
    """Time, on the training thread, the journal's snapshot work: its start (durability
    wait, capture, staging copy) and its post-commit work (prune, log compaction).

    Observes by wrapping methods on these instances only (the packages' code is
    unchanged). Returns {name: [seconds per call]}, filled as the run goes.
    """
    seen: dict[str, list[float]] = {}
    for owner, name, label in ((journal, "_start_snapshot", "start_snapshot"),
                               (journal.log, "wait_durable", "  log.wait_durable"),
                               (journal.snapshots, "save_async", "  snapshots.save_async (staging copy)"),
                               (journal, "_after_commit", "after_commit"),
                               (journal.snapshots, "prune", "  snapshots.prune (verifies newest)"),
                               (journal.log, "compact_through", "  log.compact_through")):
        method = getattr(owner, name, None)
        if method is None:
            continue
        calls = seen[label] = []

        def timed(*a, _method=method, _calls=calls, **k):
            started = pc()
            try:
                return _method(*a, **k)
            finally:
                _calls.append(pc() - started)

        try:
            setattr(owner, name, timed)
        except AttributeError:  # __slots__ or a read-only attribute: not observable
            del seen[label]
    return seen


def bench_overhead(work: Workdir, target_ms: float, steps: int, repeats: int, depth: int, batch: int,
                   snapshot_every: int, durability: str):
    width, measured = calibrate(target_ms / 1e3, depth, batch)
    job = TrainJob(width, depth, batch)
    state_bytes = sum(t.numel() * t.element_size() for t in tensors_of(job.checkpoint()).values())
    params = job.params
    del job
    say(f"  [{target_ms:g} ms] width {width} x depth {depth}, batch {batch}: plain step {measured * 1e3:.1f} ms CPU, "
        f"{params / 1e6:.2f} M params, state {state_bytes / 2**20:.1f} MiB; {repeats} x {steps} steps per arm")
    runs = {a: [] for a in ARMS}
    arms = {a: Arm(work, a, width, depth, batch, snapshot_every, durability) for a in ARMS}
    try:
        for r in range(repeats):
            order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
            for arm in order:
                runs[arm].append(arms[arm].run(steps))
    finally:
        infos = {a: arm.close(work) for a, arm in arms.items()}
    out = {"target_step_ms": target_ms, "width": width, "depth": depth, "batch": batch, "params": params,
           "state_bytes": state_bytes, "calibrated_step_cpu_ms": ms(measured), "steps_per_run": steps,
           "repeats": repeats, "snapshot_every": snapshot_every, "durability": durability, "arms": {}}
    for arm, rs in runs.items():
        wall = [t for x in rs for t in x["wall"]]
        cpu = [t for x in rs for t in x["cpu"]]
        n = len(wall)
        out["arms"][arm] = {
            "median_ms": ms(statistics.median(wall)),
            "mean_ms": ms(sum(x["loop_s"] for x in rs) / n),
            "p90_ms": ms(pct(wall, 90)),
            "p99_ms": ms(pct(wall, 99)),
            "max_ms": ms(max(wall)),
            "cpu_main_median_ms": ms(statistics.median(cpu)),
            "cpu_main_mean_ms": ms(sum(cpu) / n),
            "cpu_process_mean_ms": ms(sum(x["proc_s"] for x in rs) / n),
            "own_median_ms": ms(statistics.median([t for x in rs for t in x["own"]])),
            "own_mean_ms": ms(sum(t for x in rs for t in x["own"]) / n),
            "handler_median_ms": ms(statistics.median([w - o for x in rs for w, o in zip(x["wall"], x["own"])])),
            **infos[arm],
            "runs": [{"median_ms": ms(statistics.median(x["wall"])), "mean_ms": ms(x["loop_s"] / len(x["wall"])),
                      "cpu_main_median_ms": ms(statistics.median(x["cpu"])), **x["extra"]} for x in rs],
        }
    plain = out["arms"]["plain"]
    rel = lambda a, b: round((a / b - 1) * 100, 2)  # noqa: E731
    for arm in ARMS[1:]:
        a = out["arms"][arm]
        a["overhead_median_pct"] = rel(a["median_ms"], plain["median_ms"])
        a["overhead_mean_pct"] = rel(a["mean_ms"], plain["mean_ms"])
        a["overhead_cpu_main_median_pct"] = rel(a["cpu_main_median_ms"], plain["cpu_main_median_ms"])
        a["overhead_cpu_process_mean_pct"] = rel(a["cpu_process_mean_ms"], plain["cpu_process_mean_ms"])
        paired = [statistics.median(j["wall"]) / statistics.median(p["wall"]) - 1 for j, p in zip(runs[arm], runs["plain"])]
        a["overhead_median_pct_per_repeat"] = [round(x * 100, 2) for x in paired]
        a["overhead_median_pct_paired"] = round(statistics.median(paired) * 100, 2)
        # In-step: the journal's own time inside apply (apply wall minus handler wall, same
        # step), beyond the plain loop's own time, relative to the plain step. Noise from
        # other processes slows the handler, which cancels out here.
        a["in_step_overhead_median_pct"] = round(
            (a["own_median_ms"] - plain["own_median_ms"]) / plain["handler_median_ms"] * 100, 2)
        a["in_step_overhead_mean_pct"] = round(
            (a["own_mean_ms"] - plain["own_mean_ms"]) / plain["handler_median_ms"] * 100, 2)
        snaps = {}
        for x in runs[arm]:
            for k, v in x["extra"].get("snapshot_main_thread_ms", {}).items():
                snaps.setdefault(k, []).extend(v)
        a["snapshot_main_thread_ms_median"] = {k: (round(statistics.median(v), 2) if v else None) for k, v in snaps.items()}
    j = out["arms"]["journal"]
    say(f"  [{target_ms:g} ms] plain {plain['median_ms']:.2f} ms, journal {j['median_ms']:.2f} ms "
        f"({j['overhead_median_pct']:+.2f}% median, {j['overhead_mean_pct']:+.2f}% mean, "
        f"{j['overhead_cpu_main_median_pct']:+.2f}% main-thread CPU; in-step {j['in_step_overhead_median_pct']:+.2f}% "
        f"median, {j['in_step_overhead_mean_pct']:+.2f}% mean), "
        f"no-snapshot journal {out['arms']['journal_nosnap']['overhead_median_pct']:+.2f}% median")
    return out


def bench_apply_cost(work: Workdir, n: int, durability: str, batch: int = 128):
    """Cost of journal.apply itself: a no-op handler with the train_step payload (128 ids, seed, lr).

    Noise-robust: thousands of applies; reported per apply as wall, main-thread CPU, and
    process CPU (adds the flusher thread). Beside it, the direct call of the same no-op.
    """
    job = TrainJob(64, 2, batch)
    ops = replay.Ops()

    @ops.op
    def train_step(state, *, ids, seed, lr):
        pass

    payload = job.payload(0)
    out = {"payload": f"ids: list of {batch} ints, seed: int, lr: float", "n": n}
    started = pc()
    for _ in range(n):
        train_step(job.state, **payload)
    out["direct_call_us"] = round((pc() - started) / n * 1e6, 3)
    path = work.new("apply-cost")
    journal = replay.Journal.open(path, state=job.state, ops=ops, snapshot=replay.Every(), durability=durability,
                                  progress=False)
    for _ in range(200):
        journal.apply("train_step", **payload)
    journal.flush()
    wall, cpu = [], []
    proc_started, loop_started = time.process_time(), pc()
    for _ in range(n):
        s, c = pc(), time.thread_time()
        journal.apply("train_step", **payload)
        cpu.append(time.thread_time() - c)
        wall.append(pc() - s)
    journal.flush()
    out["apply_wall_median_us"] = round(statistics.median(wall) * 1e6, 2)
    out["apply_wall_mean_us"] = round((pc() - loop_started) / n * 1e6, 2)
    out["apply_cpu_main_median_us"] = round(statistics.median(cpu) * 1e6, 2)
    out["process_cpu_per_apply_us"] = round((time.process_time() - proc_started) / n * 1e6, 2)
    journal.close()
    work.drop(path)
    say(f"  journal.apply of a no-op ({durability}): {out['apply_wall_median_us']:.1f} us median wall, "
        f"{out['apply_cpu_main_median_us']:.1f} us main-thread CPU, {out['process_cpu_per_apply_us']:.1f} us process CPU")
    return out


# ---------------------------------------------------------------------- 4: profiles


def _top(stats: pstats.Stats, n_ops: int, limit=14, only=None):
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in stats.stats.items():
        if only and not any(f"/{p}/" in file for p in only):
            continue
        short = file.replace(str(REPO) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        rows.append({"function": f"{short}:{line}({fn})", "calls": nc,
                     "self_us_per_op": round(tt / n_ops * 1e6, 2), "cum_us_per_op": round(ct / n_ops * 1e6, 2)})
    rows.sort(key=lambda r: -r["self_us_per_op"])
    return rows[:limit]


def _cum(stats: pstats.Stats, suffix: str, fn: str, calls=False):
    for (file, line, name), (cc, nc, tt, ct, _) in stats.stats.items():
        if name == fn and file.endswith(suffix):
            return (ct, nc) if calls else ct
    return (0.0, 0) if calls else 0.0


def _part(stats, suffix, fn, steps):
    ct, nc = _cum(stats, suffix, fn, calls=True)
    return {"calls": nc, "cum_us_per_step": round(ct / steps * 1e6, 1),
            "ms_per_call": round(ct / nc * 1e3, 3) if nc else None}


def profile_apply(work: Workdir, width, depth, batch, steps, snapshot_every):
    """cProfile of the journal loop (main thread only): where apply's own time goes."""
    job = TrainJob(width, depth, batch)
    path = work.new("profile-apply")
    journal = replay.Journal.open(path, state=job.state, ops=job.ops, snapshot=replay.Every(entries=snapshot_every),
                                  progress=False)
    for i in range(5):
        journal.apply("train_step", **job.payload(i))
    prof = cProfile.Profile()
    prof.enable()
    for i in range(5, 5 + steps):
        journal.apply("train_step", **job.payload(i))
    prof.disable()
    journal.close()
    work.drop(path)
    st = pstats.Stats(prof, stream=io.StringIO())
    apply_cum = _cum(st, "replay/journal.py", "apply")
    handler_cum = _cum(st, "bench/recovery.py", "train_step")
    return {
        "steps": steps, "width": width,
        "apply_cum_us_per_step": round(apply_cum / steps * 1e6, 1),
        "handler_cum_us_per_step": round(handler_cum / steps * 1e6, 1),
        "journal_own_us_per_step": round((apply_cum - handler_cum) / steps * 1e6, 1),
        "journal_parts": {
            name: _part(st, suffix, fn, steps) for name, suffix, fn in (
                ("ops.check_payload", "replay/ops.py", "check_payload"),
                ("log.append", "eventlog/log.py", "append"),
                ("_start_snapshot", "replay/journal.py", "_start_snapshot"),
                ("snapshots.save_async", "snapshots/store.py", "save_async"),
                ("log.wait_durable", "eventlog/log.py", "wait_durable"),
                ("snapshots.prune", "snapshots/store.py", "prune"),
                ("log.compact_through", "eventlog/log.py", "compact_through"),
                ("components.capture", "replay/components.py", "capture"),
                ("_collect_snapshot", "replay/journal.py", "_collect_snapshot"),
                ("_after_commit", "replay/journal.py", "_after_commit"),
                ("components.to_device (calls incl. recursion)", "replay/components.py", "to_device"),
            )},
        "top_self_in_eventlog_snapshots_replay": _top(st, steps, only=("eventlog", "snapshots", "replay")),
    }


def profile_load(work: Workdir, repeats: int = 5):
    """cProfile of recovering 0 entries (snapshot load + restore) of the embedding state."""
    live = RowsJob()
    path = work.new("profile-load")
    replay.Journal.open(path, state=live.state, ops=live.ops, snapshot=replay.Every(), progress=False, snapshot_on_close=False).close()
    prof = cProfile.Profile()
    for r in range(repeats):
        fresh = RowsJob(init=r + 1)
        prof.enable()
        replay.Journal.open(path, state=fresh.state, ops=fresh.ops, snapshot=replay.Every(), progress=False, snapshot_on_close=False).close()
        prof.disable()
    work.drop(path)
    st = pstats.Stats(prof, stream=io.StringIO())
    return {"state_bytes": EMB_ROWS * EMB_DIM * 4, "opens": repeats,
            "parts_ms_per_open": {name: round(_cum(st, suffix, fn) / repeats * 1e3, 2) for name, suffix, fn in (
                ("Journal.open", "replay/journal.py", "open"),
                ("EventLog.open", "eventlog/log.py", "open"),
                ("SnapshotStore.load_latest", "snapshots/store.py", "load_latest"),
                ("components.restore", "replay/components.py", "restore"),
                ("Journal.close", "replay/journal.py", "close"))},
            "top_self": [dict(r, ms_per_open=round(r["self_us_per_op"] / 1e3, 3)) for r in _top(st, repeats, limit=8)]}


def profile_replay(work: Workdir, n: int):
    """Replay of `n` update_rows entries, decomposed: log scan + decode, handlers alone, full replay."""
    live = RowsJob()
    path = work.new("profile-replay")
    journal = replay.Journal.open(path, state=live.state, ops=live.ops, snapshot=replay.Every(), progress=False, snapshot_on_close=False)
    for i in range(n):
        journal.apply("update_rows", **live.payload(i))
    journal.close()
    out = {"entries": n}
    # the read-ahead thread's work, alone: scan + verify + decode + unwrap
    from eventlog import EventLog

    log = EventLog.open(path / "log", readonly=True)
    try:
        started = pc()
        decoded = [(e.index, e.op, unwrap(e.index, e.op, e.payload)) for e in log.entries(1, n + 1)]
        out["scan_decode_us_per_op"] = round((pc() - started) / n * 1e6, 2)
        started = pc()
        for _ in log.headers(1, n + 1):
            pass
        out["headers_scan_us_per_op"] = round((pc() - started) / n * 1e6, 2)
    finally:
        log.close()
    fresh = RowsJob(init=2)
    started = pc()
    for _, _, (version, payload) in decoded:
        RowsJob.update_rows(fresh.state, **payload)
    out["handlers_alone_us_per_op"] = round((pc() - started) / n * 1e6, 2)
    started = pc()  # dispatch as the Replayer does it: upcast (a pass-through here), then the handler
    for index, op, (version, payload) in decoded:
        spec, p = fresh.ops.upcast(index, op, version, payload)
        spec.handler(fresh.state, **p)
    out["upcast_plus_handler_us_per_op"] = round((pc() - started) / n * 1e6, 2)
    fresh = RowsJob(init=3)
    prof = cProfile.Profile()
    prof.enable()
    journal = replay.Journal.open(path, state=fresh.state, ops=fresh.ops, snapshot=replay.Every(), progress=False, snapshot_on_close=False)
    prof.disable()
    rep = journal.recovery
    journal.close()
    work.drop(path)
    out["full_replay_us_per_op"] = round(rep.replay_seconds / n * 1e6, 2)
    st = pstats.Stats(prof, stream=io.StringIO())
    out["main_thread_top_self"] = _top(st, n, limit=10)
    return out


# ---------------------------------------------------------------------- machine and report


def tables(results):
    out = []
    for key, title, unit in (("rows", "recovery: update_rows on Embedding(50k, 64) fp32", "op"),
                             ("train", "recovery: train_step ops", "step")):
        r = results["recovery"][key]
        header = ["entries since snapshot", "recover (open) ms", "snapshot load ms", "replay ms", "replay ops/s",
                  "torch.load ms", "open / torch.load", "torch.save user loses", "bit-identical"]
        rows = []
        for p in r["points"]:
            t = p["torch_save"]
            rows.append([fmt(p["entries_since_snapshot"]), fmt(p["recover_open_ms"]), fmt(p["snapshot_load_ms"]),
                         fmt(p["replay_ms"]), fmt(p["replay_ops_per_s"]), fmt(t["load_ms"]),
                         fmt(p["recover_over_torch_load"]),
                         f"{t['entries_lost']:,} {unit}s = {t['work_lost_s']:.3g} s",
                         fmt(p["bit_identical_to_live"])])
        note = (f"{r['describe']}; plain {unit} (no journal) {r['plain_us_per_op']:.1f} us, live journal.apply "
                f"{r['live_apply_us_per_op']:.1f} us; torch.save+fsync {r['points'][0]['torch_save']['save_fsync_ms']:.1f} ms "
                f"({r['points'][0]['torch_save']['file_bytes'] / 2**20:.1f} MiB)")
        out.append((title, header, rows, note))
    header = ["step target", "arm", "median ms", "mean ms", "p99 ms", "max ms", "ovh median", "ovh mean",
              "in-step ovh median", "in-step ovh mean", "ovh main CPU", "ovh process CPU", "per-repeat median ovh %"]
    rows = []
    pc_ = lambda a, k: f"{a[k]:+.2f}%" if k in a else ""  # noqa: E731
    for o in results["overhead"]:
        for arm in ARMS:
            a = o["arms"][arm]
            rows.append([f"{o['target_step_ms']:g} ms (w{o['width']})" if arm == "plain" else "", arm,
                         fmt(a["median_ms"]), fmt(a["mean_ms"]), fmt(a["p99_ms"]), fmt(a["max_ms"]),
                         pc_(a, "overhead_median_pct"), pc_(a, "overhead_mean_pct"),
                         pc_(a, "in_step_overhead_median_pct"), pc_(a, "in_step_overhead_mean_pct"),
                         pc_(a, "overhead_cpu_main_median_pct"), pc_(a, "overhead_cpu_process_mean_pct"),
                         ", ".join(f"{x:+.1f}" for x in a.get("overhead_median_pct_per_repeat", []))])
    o0 = results["overhead"][0]
    c = results.get("apply_cost")
    cost = (f"; journal.apply of a no-op with the same payload: {c['apply_wall_median_us']:.0f} us wall median, "
            f"{c['apply_cpu_main_median_us']:.0f} us main-thread CPU, {c['process_cpu_per_apply_us']:.0f} us process CPU"
            if c else "")
    out.append((f"per-step overhead of journal.apply ({o0['durability']} mode)", header, rows,
                f"journal: async snapshot every {o0['snapshot_every']} entries; journal_nosnap: log only; "
                f"torch threads {results['machine']['torch_threads']}{cost}"))
    return out


def print_report(results):
    targets = results["targets"]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        console = Console()
        for title, header, rows, note in tables(results):
            t = Table(title=title, caption=note)
            for h in header:
                t.add_column(h, justify="right")
            for r in rows:
                t.add_row(*r)
            console.print(t)
        tt = Table(title="targets")
        for h in ("target", "value", "wanted", "met"):
            tt.add_column(h)
        for x in targets:
            tt.add_row(x["name"], fmt(x["value"]), x["target"], "[green]yes[/]" if x["met"] else "[red]NO[/]")
        console.print(tt)
    else:
        for title, header, rows, note in tables(results):
            print(f"\n{title}")
            widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
            line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
            print(line(header))
            print("  ".join("-" * w for w in widths))
            for r in rows:
                print(line(r))
            print(f"({note})")
        print("\ntargets")
        for x in targets:
            print(f"  {x['name']}: {fmt(x['value'])} (wanted {x['target']}) {'met' if x['met'] else 'NOT MET'}")
    m = results["machine"]
    print(f"\nload average at start/end: {m['loadavg_at_start'][0]} / {m.get('loadavg_at_end', ['?'])[0]} "
          f"(the machine's {m['cpu_count']} cores are shared with other processes)")
    print(f"{m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, torch {m['torch']}, "
          f"{m['filesystem']}, {m['date']}")


def evaluate(results):
    rows = []
    for o in results["overhead"]:
        j = o["arms"]["journal"]
        if o["target_step_ms"] >= 50:
            t, want = o["target_step_ms"], f"<= {OVERHEAD_TARGET * 100:g}"
            for key, what in (
                    ("overhead_median_pct", "median step, journal run vs plain run (noisy on a shared machine)"),
                    ("overhead_median_pct_paired", "median of per-repeat paired ratios of median steps"),
                    ("in_step_overhead_median_pct", "in-step: journal time inside apply, median step"),
                    ("in_step_overhead_mean_pct", "in-step: journal time inside apply, mean incl. snapshot stalls"),
                    ("overhead_mean_pct", "mean step incl. snapshot stalls, journal run vs plain run [info]")):
                rows.append({"name": f"journal overhead at {t:g} ms steps, {o['durability']}: {what} (%)",
                             "value": j[key], "target": want, "met": j[key] <= OVERHEAD_TARGET * 100})
    c = results.get("apply_cost")
    if c:
        est = c["apply_wall_median_us"] / 50_000 * 100
        rows.append({"name": "no-op journal.apply wall median as % of a 50 ms step [noise-robust estimate]",
                     "value": round(est, 3), "target": f"<= {OVERHEAD_TARGET * 100:g}", "met": est <= OVERHEAD_TARGET * 100})
    for key in ("rows", "train"):
        for p in results["recovery"][key]["points"]:
            if p["bit_identical_to_live"] is False:
                rows.append({"name": f"{key} recovery of {p['entries_since_snapshot']} entries bit-identical",
                             "value": False, "target": "yes", "met": False})
    return rows


# ---------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="about a minute: fewer entries, steps and repeats")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: the other core runs the journal's flusher and snapshot "
                        "threads, and other tenants of this 2-core machine)")
    p.add_argument("--rows-counts", default="0,1000,10000,100000")
    p.add_argument("--train-counts", default="0,100,1000,5000")
    p.add_argument("--train-small", default="256,3,64", help="width,depth,batch of the recovery train_step model")
    p.add_argument("--steps", type=int, default=75, help="timed steps per arm per repeat at the 50 ms target")
    p.add_argument("--repeats", type=int, default=6, help="repeats of every arm (rotating order)")
    p.add_argument("--targets", default="50,5", help="per-step time targets in ms")
    p.add_argument("--snapshot-every", type=int, default=50)
    p.add_argument("--durability", default="group", choices=["group", "sync", "os"])
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--dir", type=Path, default=REPO / ".bench-tmp")
    a = p.parse_args(argv)
    if a.quick:
        a.rows_counts, a.train_counts = "0,1000,10000", "0,100,1000"
        a.steps, a.repeats = 55, 2
    return a


def main(argv) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Workdir(args.dir, "bench-recovery-")
    results = {"benchmark": "recovery", "machine": machine_info(work.root, ("eventlog", "snapshots", "replay"), torch=torch.__version__, torch_threads=torch.get_num_threads()), "config": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    t0 = pc()
    try:
        rows_counts = [int(x) for x in args.rows_counts.split(",") if x]
        train_counts = [int(x) for x in args.train_counts.split(",") if x]
        w, d, b = (int(x) for x in args.train_small.split(","))
        repeats_rec = 2 if args.quick else 3

        say("recovery: update_rows on an embedding table")
        plain_rows = plain_rate(RowsJob, 20_000)
        pts = bench_recovery(work, "rows", RowsJob, "update_rows", rows_counts, repeats_rec, plain_rows)
        live = [p["live_apply_ops_per_s"] for p in pts if p["live_apply_ops_per_s"]]
        results["recovery"] = {"rows": {
            "describe": f"nn.Embedding({EMB_ROWS}, {EMB_DIM}) fp32, {ROWS_PER_OP} rows per op "
                        f"({ROWS_PER_OP * EMB_DIM * 4} B of values)",
            "plain_us_per_op": round(plain_rows * 1e6, 2),
            "live_apply_us_per_op": round(1e6 / statistics.median(live), 2) if live else None,
            "points": pts}}

        say(f"recovery: train_step of an MLP width {w}, depth {d}, batch {b}")
        make_train = lambda init=None: TrainJob(w, d, b, init=init)  # noqa: E731
        plain_train = plain_rate(make_train, 200)
        pts = bench_recovery(work, "train", make_train, "train_step", train_counts, repeats_rec, plain_train)
        live = [p["live_apply_ops_per_s"] for p in pts if p["live_apply_ops_per_s"]]
        results["recovery"]["train"] = {
            "describe": f"MLP {TRAIN_IN}->{w}x{d}->{TRAIN_CLASSES}, AdamW, batch {b}, "
                        f"{make_train().params / 1e6:.2f} M params",
            "plain_us_per_op": round(plain_train * 1e6, 2),
            "live_apply_us_per_op": round(1e6 / statistics.median(live), 2) if live else None,
            "points": pts}

        say("per-step overhead: journal.apply of a no-op handler")
        results["apply_cost"] = bench_apply_cost(work, 2000 if args.quick else 10000, args.durability)
        say("per-step overhead: plain loop vs journal.apply")
        results["overhead"] = []
        for target in [float(x) for x in args.targets.split(",") if x]:
            steps = args.steps if target >= 50 else int(args.steps * min(4.0, 50 / target))
            results["overhead"].append(bench_overhead(work, target, steps, args.repeats, depth=4, batch=128,
                                                      snapshot_every=args.snapshot_every,
                                                      durability=args.durability))
        if not args.no_profile:
            small = min(results["overhead"], key=lambda o: o["target_step_ms"])
            say(f"profile: journal loop at {small['target_step_ms']:g} ms steps (cProfile, main thread)")
            results["profile_apply"] = profile_apply(work, small["width"], small["depth"], small["batch"],
                                                     100 if args.quick else 300, args.snapshot_every)
            say("profile: replay decomposition (update_rows)")
            results["profile_replay"] = profile_replay(work, 5000 if args.quick else 20000)
            say("profile: snapshot load (0 entries)")
            results["profile_load"] = profile_load(work)
    finally:
        work.close()
    results["targets"] = evaluate(results)
    finish(results, args.json, t0, pc())
    print_report(results)
    say(f"wrote {args.json} ({results['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
