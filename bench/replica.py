"""Benchmark continuous replication (replay.replica): ``python -m bench replica [--quick]``.

One run starts moto's S3 server in a child process on 127.0.0.1 (its CPU is not this
process's) and measures, against that S3 endpoint and against a ``file://`` replica:

1. ``overhead``: shipping cost on the apply path. A training-like loop whose handler does
   real work (a chain of ``tanh(x @ W)`` matmuls on a 512x512 fp32 weight, the repeat count
   calibrated at start-up to ~5 ms and ~50 ms of CPU on one torch thread, then a
   ``W.mul_`` update so every snapshot is a new 1 MiB of chunks). Arms: no replica, file
   replica, S3 replica; same everything else (durability "group", ``Every(entries=100)``
   async snapshots, ``ship_interval`` 1 s). Arms run in rotating order, repeated; each
   repeat is a fresh journal and replica, a warm-up, then N timed ``apply`` calls. Per arm:
   median and mean per-step time (median over repeats), and replica/none ratios of the mean
   step (the cost of the shipper thread shows up as a slower mean, not only the median).
   Target (issue 14): <= 1.01.
2. ``throughput``: a backlog journal (16 KiB random payloads, snapshots every 500 entries,
   N MiB of log) is written without a replica; a copy is reopened with ``replica=`` and
   ``flush(replica=True)`` timed until the replica has caught up. Reported: the bytes
   shipped (``replica_status.bytes``: segments, chunks, manifests), MiB/s from open to
   caught up and from open's return to caught up, against a plain put of one object of the
   same byte count in the same run (obstore ``put``; for file://: write, fsync, rename).
3. ``restore``: restore time (``replay.replica.restore.restore`` into an empty directory,
   then ``Journal.open`` there) against local recovery (``Journal.open`` of a copy of the
   original directory), same state, same log, same tail of entries after the last
   snapshot; interleaved repeats; the recovered states are compared bit for bit. One
   ``Journal.open(empty, replica=URL)`` (the automatic path, which also takes the replica
   over) is timed once.
4. ``loss``: the loss window. A writer process applies a cheap op at a steady rate
   (``--rate`` entries/s, sleep-paced) with ``replica=`` and ``ship_interval`` in
   (0.1, 0.5, 1.0) s, printing each applied index; it is SIGKILLed at a random moment and
   the replica restored: entries lost = last index the writer reported - the restored head
   index; seconds lost = the time between those two entries' applies. Writers are forked
   from a pre-imported "zygote" process (importing torch takes seconds on this machine; the
   fork happens before any thread or store exists in it).

Results go to ``bench/results/replica.json`` and to a table on stdout. This is a
benchmark, not a test: nothing asserts time.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from ._common import REPO, Workdir, finish, fmt, machine_info, ms

RESULTS = Path(__file__).parent / "results" / "replica.json"
MIB = 2**20
CREDS = {"region": "us-east-1", "access_key_id": "bench", "secret_access_key": "bench"}
WIDTH, ROWS = 512, 32  # the work: tanh(x[ROWS, WIDTH] @ W[WIDTH, WIDTH]) chains
RECORD = 4096  # float32 values per backlog payload: 16 KiB
INTERVALS = (0.1, 0.5, 1.0)

pc = time.perf_counter
say = (lambda *a: print(*a, file=sys.stderr, flush=True))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench replica", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    p.add_argument("--repeats", type=int, default=3, help="overhead repeats per arm")
    p.add_argument("--backlog-mib", type=int, default=32, help="log MiB of the throughput/restore journal")
    p.add_argument("--kills", type=int, default=3, help="loss window: kills per ship_interval per backend")
    p.add_argument("--rate", type=float, default=100.0, help="loss window: entries per second of the writer")
    p.add_argument("--dir", type=Path, default=None, help="scratch directory (default: .bench-tmp/ in the repo)")
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--perf", action="store_true",
                   help="only issue 22's rows (catch-up vs copytree+fsync, restore+open vs local recovery, "
                        "peak memory of a large restore): bench/_replica_perf.py; merged into the results "
                        "file under 'issue22'")
    p.add_argument("--rounds", type=int, default=5, help="--perf: interleaved rounds per comparison")
    p.add_argument("--memory-mib", type=int, default=256, help="--perf: MiB of segments of the memory row (0: skip)")
    p.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------- workloads


def work_ops(torch, replay):
    """The training-like op: `reps` matmul rounds on the weight, then a whole-weight update."""
    ops = replay.Ops()

    @ops.op
    def step(state, *, reps, seed, x):
        w = state["w"]
        h = x
        for _ in range(reps):
            h = torch.tanh(h @ w)
        w.mul_(1.0 - 1e-6).add_(h.mean(0), alpha=1e-6)  # touches every row: a snapshot is all new chunks
        state["meta"]["steps"] += 1
        state["meta"]["seed"] = seed

    return ops


def work_state(torch):
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(WIDTH, WIDTH, generator=g) / WIDTH ** 0.5, "meta": {"steps": 0, "seed": 0}}


def calibrate(torch, target: float) -> int:
    """Matmul rounds that take ~`target` seconds in the handler on this machine now."""
    w, x = work_state(torch)["w"], torch.randn(ROWS, WIDTH)

    def run(reps):
        h = x
        for _ in range(reps):
            h = torch.tanh(h @ w)
        return h

    run(50)
    best = []
    for _ in range(5):
        t = pc()
        run(200)
        best.append((pc() - t) / 200)
    return max(1, round(target / statistics.median(best)))


def backlog_ops(replay):
    ops = replay.Ops()

    @ops.op
    def record(state, *, values):
        state["acc"].add_(values)
        state["meta"]["n"] += 1

    return ops


def backlog_state(torch):
    return {"acc": torch.zeros(RECORD), "meta": {"n": 0}}


def loss_ops(replay):
    ops = replay.Ops()

    @ops.op
    def tick(state, *, seed, values):
        state["v"].add_(values)
        state["meta"]["seed"] = seed

    return ops


# ---------------------------------------------------------------------- replicas


class Replicas:
    """Fresh replica URLs for both backends: file:// under the workdir, s3:// prefixes in one bucket."""

    def __init__(self, work: Workdir, endpoint: str):
        import boto3
        self.work, self.endpoint = work, endpoint
        self.bucket = f"bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, region_name=CREDS["region"], aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket=self.bucket)
        self.s3_options = {"endpoint_url": endpoint, **CREDS}

    def new(self, backend: str, name: str) -> tuple[str, dict]:
        if backend == "file":
            return self.work.new(f"replica-{name}").as_uri(), {}
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}", dict(self.s3_options)


# ---------------------------------------------------------------------- 1: overhead


def bench_overhead(work, replicas, targets, steps, repeats):
    import torch

    import replay
    out = {}
    for label, target in targets.items():
        reps = calibrate(torch, target)
        n = steps[label]
        arms = ["none", "file", "s3"]
        runs = {a: [] for a in arms}
        for r in range(repeats):
            for arm in arms[r % 3:] + arms[:r % 3]:
                say(f"[overhead {label}] repeat {r + 1}/{repeats} arm {arm}: {n} steps")
                path = work.new(f"over-{label}-{arm}")
                kw = {}
                if arm != "none":
                    url, options = replicas.new(arm, f"over-{label}")
                    kw = {"replica": url, "replica_options": options, "ship_interval": 1.0}
                journal = replay.Journal.open(path, state=work_state(torch), ops=work_ops(torch, replay),
                                              durability="group", snapshot=replay.Every(entries=100),
                                              progress=False, snapshot_on_close=False, **kw)
                g = torch.Generator().manual_seed(r)
                xs = [torch.randn(ROWS, WIDTH, generator=g) for _ in range(8)]
                for i in range(10):
                    journal.apply("step", reps=reps, seed=i, x=xs[i % 8])
                times = []
                started = pc()
                for i in range(10, 10 + n):
                    t = pc()
                    journal.apply("step", reps=reps, seed=i, x=xs[i % 8])
                    times.append(pc() - t)
                wall = pc() - started
                row = {"median_ms": ms(statistics.median(times)), "mean_ms": ms(wall / n)}
                if arm != "none":
                    status = journal.replica_status
                    row.update(lag_entries_at_end=status.lag_entries, uploads=status.uploads,
                               mib_shipped=round(status.bytes / MIB, 2), error=status.last_error)
                    journal.flush(replica=True, timeout=120)
                journal.close(snapshot=False)
                runs[arm].append(row)
                work.drop(path)
        res = {"target_step_ms": target * 1e3, "matmul_rounds": reps, "steps_per_repeat": n, "repeats": repeats}
        for arm in arms:
            res[arm] = {"median_ms": ms(statistics.median(x["median_ms"] for x in runs[arm]) / 1e3),
                        "mean_ms": ms(statistics.median(x["mean_ms"] for x in runs[arm]) / 1e3),
                        "runs": runs[arm]}
        for arm in ("file", "s3"):
            ratios = [a["mean_ms"] / b["mean_ms"] for a, b in zip(runs[arm], runs["none"])]
            res[arm]["mean_over_none"] = round(statistics.median(ratios), 4)
            res[arm]["median_over_none"] = round(res[arm]["median_ms"] / res["none"]["median_ms"], 4)
            res[arm]["overhead_pct"] = round(100 * (res[arm]["mean_over_none"] - 1), 2)
        out[label] = res
    return out


# ---------------------------------------------------------------------- 2 + 3: throughput, restore


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_backlog(path: Path, mib: int) -> dict:
    import torch

    import replay
    entries = mib * MIB // (RECORD * 4)
    tail = 300  # entries after the last snapshot: recovery and restore both replay them
    g = torch.Generator().manual_seed(7)
    started = pc()
    with replay.Journal.open(path, state=backlog_state(torch), ops=backlog_ops(replay), durability="group",
                             snapshot=replay.Every(entries=500), progress=False, snapshot_on_close=False) as journal:
        for _ in range(entries // 500 * 500 + tail):
            journal.apply("record", values=torch.randn(RECORD, generator=g))
        index = journal.index
    return {"entries": index, "payload_bytes": RECORD * 4, "log_mib": round(dir_bytes(path / "log") / MIB, 2),
            "snapshots_mib": round(dir_bytes(path / "snapshots") / MIB, 2), "write_s": round(pc() - started, 2)}


def plain_put(backend: str, replicas: Replicas, work: Workdir, data: bytes) -> float:
    if backend == "s3":
        import obstore
        from obstore.store import S3Store
        store = S3Store(replicas.bucket, prefix=f"plain-{uuid.uuid4().hex[:8]}", endpoint=replicas.endpoint,
                        client_options={"allow_http": True}, **CREDS)
        t = pc()
        obstore.put(store, "blob", data, use_multipart=False)
        return pc() - t
    root = work.new("plain")
    root.mkdir()
    t = pc()
    tmp = root / ".blob.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, root / "blob")
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    elapsed = pc() - t
    work.drop(root)
    return elapsed


def bench_throughput(work, replicas, source: Path, repeats: int):
    import torch

    import replay
    out, urls = {}, {}
    for backend in ("file", "s3"):
        ships, puts = [], []
        for r in range(repeats):
            say(f"[throughput {backend}] repeat {r + 1}/{repeats}")
            copy = work.new(f"ship-{backend}")
            shutil.copytree(source, copy)
            url, options = replicas.new(backend, "ship")
            t0 = pc()
            journal = replay.Journal.open(copy, state=backlog_state(torch), ops=backlog_ops(replay),
                                          durability="group", snapshot=replay.Every(entries=500), progress=False,
                                          snapshot_on_close=False, replica=url, replica_options=options)
            t1 = pc()
            journal.flush(replica=True, timeout=300)
            t2 = pc()
            status = journal.replica_status
            journal.close(snapshot=False)
            ships.append({"bytes": status.bytes, "uploads": status.uploads, "open_s": round(t1 - t0, 3),
                          "open_to_caught_up_s": round(t2 - t0, 3), "flush_s": round(t2 - t1, 3)})
            puts.append(plain_put(backend, replicas, work, os.urandom(status.bytes)))
            urls[backend] = (url, options)
            work.drop(copy)
        size = statistics.median(s["bytes"] for s in ships)
        total = statistics.median(s["open_to_caught_up_s"] for s in ships)
        flush = statistics.median(s["flush_s"] for s in ships)
        put = statistics.median(puts)
        out[backend] = {"mib_shipped": round(size / MIB, 2), "uploads": ships[0]["uploads"],
                        "open_to_caught_up_s": round(total, 3), "flush_s": round(flush, 3),
                        "mib_per_s": round(size / MIB / total, 1), "mib_per_s_after_open": round(size / MIB / flush, 1),
                        "plain_put_s": round(put, 3), "plain_put_mib_per_s": round(size / MIB / put, 1),
                        "shipper_over_plain_put": round(total / put, 2), "runs": ships,
                        "plain_put_runs_s": [round(p, 3) for p in puts]}
    return out, urls


def bench_restore(work, source: Path, urls: dict, repeats: int):
    import torch

    import replay
    from replay.determinism import fingerprint
    from replay.replica.restore import restore

    def open_plain(path):
        state = backlog_state(torch)
        t = pc()
        journal = replay.Journal.open(path, state=state, ops=backlog_ops(replay), progress=False,
                                      snapshot_on_close=False)
        elapsed = pc() - t
        rec = journal.recovery
        info = (journal.index, rec.entries_replayed, round(rec.load_seconds, 3), round(rec.replay_seconds, 3))
        journal.close(snapshot=False)
        return elapsed, info, fingerprint(state)

    out = {}
    local, local_info, local_fp = [], None, None
    for backend, (url, options) in urls.items():
        rows = []
        for r in range(repeats):
            say(f"[restore {backend}] repeat {r + 1}/{repeats}")
            copy = work.new("local")
            shutil.copytree(source, copy)
            elapsed, local_info, local_fp = open_plain(copy)
            local.append(elapsed)
            work.drop(copy)
            target = work.new(f"restored-{backend}")
            t = pc()
            report = restore(url, target, options)
            restore_s = pc() - t
            open_s, info, fp = open_plain(target)
            rows.append({"restore_s": round(restore_s, 3), "open_s": round(open_s, 3),
                         "total_s": round(restore_s + open_s, 3), "mib_read": round(report.bytes / MIB, 2),
                         "segments": report.segments, "snapshot_index": report.snapshot_index,
                         "head_index": report.head_index, "recovery": info, "identical": fp == local_fp})
            work.drop(target)
        auto = work.new(f"auto-{backend}")
        t = pc()
        journal = replay.Journal.open(auto, state=backlog_state(torch), ops=backlog_ops(replay), progress=False,
                                      snapshot_on_close=False, replica=url, replica_options=options)
        auto_s = pc() - t
        journal.close(snapshot=False)
        work.drop(auto)
        out[backend] = {"restore_s": statistics.median(x["restore_s"] for x in rows),
                        "restore_and_open_s": statistics.median(x["total_s"] for x in rows),
                        "auto_open_with_replica_s": round(auto_s, 3), "runs": rows}
    loc = statistics.median(local)
    out["local_recovery_s"] = round(loc, 3)
    out["local_recovery"] = {"index": local_info[0], "entries_replayed": local_info[1],
                             "load_s": local_info[2], "replay_s": local_info[3], "runs_s": [round(x, 3) for x in local]}
    for backend in urls:
        out[backend]["over_local_recovery"] = round(out[backend]["restore_and_open_s"] / loc, 2)
    return out


# ---------------------------------------------------------------------- 4: loss window


def zygote() -> int:
    """Import torch and replay once, then fork one writer per command line on stdin."""
    import torch  # noqa: F401 - imported before any fork: the point of the zygote

    import replay  # noqa: F401
    import replay.replica.objects  # noqa: F401
    print("zygote", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                writer(job)
            finally:
                os._exit(1)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"dead {pid} {status}", flush=True)
    return 0


def writer(job: dict) -> None:
    import torch

    import replay
    torch.set_num_threads(1)
    journal = replay.Journal.open(job["dir"], state={"v": torch.zeros(256), "meta": {"seed": 0}},
                                  ops=loss_ops(replay), durability="group", snapshot=replay.Every(entries=200),
                                  progress=False, replica=job["url"], replica_options=job["options"],
                                  ship_interval=job["interval"])
    sys.stdout.flush()
    os.write(1, b"ready\n")
    period = 1.0 / job["rate"]
    g = torch.Generator().manual_seed(job["seed"])
    values = [torch.randn(256, generator=g) for _ in range(16)]
    next_at = time.monotonic()
    i = 0
    while True:
        journal.apply("tick", seed=i, values=values[i % 16])
        os.write(1, f"{journal.index} {time.monotonic()}\n".encode())  # one write: a kill never splits a line
        i += 1
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Zygote:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench", "replica", "--zygote"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        self.other: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next(120) == "zygote", "the zygote did not start"

    def _read(self):
        for line in self.proc.stdout:
            if os.environ.get("BENCH_DEBUG"):
                say("zygote:", line.rstrip()[:200])
            self.lines.put(line.strip())
        self.lines.put(None)

    def next(self, timeout):
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise RuntimeError("the zygote exited")
        return line

    def cycle(self, job: dict, kill_after: float) -> list[tuple[int, float]]:
        """Start a writer, SIGKILL it `kill_after` s after it is ready; its (index, time) reports."""
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        pid = int(self.next(30).split()[1])
        while self.next(60) != "ready":
            pass
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
        reports = []
        while True:
            try:
                line = self.next(120)
            except queue.Empty:
                raise RuntimeError(f"writer {pid} SIGKILLed but the zygote never reported it dead "
                                   f"(last reports {reports[-3:]}, other output {self.other[-3:]})") from None
            if "dead " in line and not line.startswith("dead "):  # a writer's line cut short by the kill
                self.other.append(line[:line.index("dead ")])
                line = line[line.index("dead "):]
            if line.startswith("dead "):
                status = int(line.split()[2])
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, line
                return reports
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                reports.append((int(parts[0]), float(parts[1])))
            else:
                self.other.append(line)  # anything else the writer printed (a warning): kept for the report

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def bench_loss(work, replicas, kills: int, rate: float, rng: random.Random, quick: bool = False):
    from replay.replica.restore import restore
    out = {}
    zyg = Zygote()
    try:
        for backend in ("s3", "file"):
            out[backend] = {}
            for interval in INTERVALS:
                rows = []
                for k in range(kills):
                    url, options = replicas.new(backend, f"loss-{interval}")
                    path = work.new(f"loss-{backend}")
                    lo, hi = ((0.8, 1.5 * interval), (1.2, 2 * interval)) if quick else ((1.0, 2 * interval), (2.0, 3 * interval))
                    kill_after = rng.uniform(max(*lo), max(*hi))
                    say(f"[loss {backend} ship_interval {interval}] kill {k + 1}/{kills} after {kill_after:.2f} s")
                    reports = zyg.cycle({"dir": str(path), "url": url, "options": options, "interval": interval,
                                         "rate": rate, "seed": k}, kill_after)
                    work.drop(path)  # the machine is gone
                    target = work.new("loss-restored")
                    report = restore(url, target, options)
                    work.drop(target)
                    last, last_at = reports[-1]
                    at = dict(reports)
                    head = report.head_index
                    rows.append({"last_applied": last, "replica_index": head, "entries_lost": last - head,
                                 "seconds_lost": round(last_at - at[head], 3) if head in at else None,
                                 "kill_after_s": round(kill_after, 2)})
                lost = [r["entries_lost"] for r in rows]
                secs = [r["seconds_lost"] for r in rows if r["seconds_lost"] is not None]
                out[backend][str(interval)] = {
                    "kills": kills, "entries_lost_mean": round(statistics.mean(lost), 1),
                    "entries_lost_max": max(lost),
                    "seconds_lost_mean": round(statistics.mean(secs), 3) if secs else None,
                    "seconds_lost_max": max(secs) if secs else None, "runs": rows}
    finally:
        zyg.close()
    return out, zyg.other[:20]


# ---------------------------------------------------------------------- report


def print_report(res: dict) -> None:
    m = res["machine"]
    print(f"\nreplica bench (moto {m.get('moto')} on 127.0.0.1 in a child process; load "
          f"{m['loadavg_at_start']} -> {m.get('loadavg_at_end')}; {m['cpu_count']} CPUs)")
    print("\n1. apply-path overhead (per-step ms, median of repeats; ratio = mean step / no replica)")
    print(f"{'step':>6} {'none med/mean':>15} {'file med/mean':>15} {'file ratio':>10} {'s3 med/mean':>15} {'s3 ratio':>9}")
    for label, r in res["overhead"].items():
        cell = (lambda a: f"{fmt(r[a]['median_ms'])}/{fmt(r[a]['mean_ms'])}")
        print(f"{label:>6} {cell('none'):>15} {cell('file'):>15} {fmt(r['file']['mean_over_none']):>10} "
              f"{cell('s3'):>15} {fmt(r['s3']['mean_over_none']):>9}")
    t = res["throughput"]
    print(f"\n2. backlog upload ({res['backlog']['log_mib']} MiB log, {res['backlog']['snapshots_mib']} MiB snapshots)")
    print(f"{'backend':>8} {'MiB':>7} {'uploads':>8} {'s':>7} {'MiB/s':>7} {'after open':>10} {'plain put s':>11} "
          f"{'plain MiB/s':>11} {'ratio':>6}")
    for b, r in t.items():
        print(f"{b:>8} {fmt(r['mib_shipped']):>7} {r['uploads']:>8} {fmt(r['open_to_caught_up_s']):>7} "
              f"{fmt(r['mib_per_s']):>7} {fmt(r['mib_per_s_after_open']):>10} {fmt(r['plain_put_s']):>11} "
              f"{fmt(r['plain_put_mib_per_s']):>11} {fmt(r['shipper_over_plain_put']):>6}")
    r = res["restore"]
    print(f"\n3. restore vs local recovery ({r['local_recovery']['index']} entries, "
          f"{r['local_recovery']['entries_replayed']} replayed): local {fmt(r['local_recovery_s'])} s")
    for b in ("file", "s3"):
        x = r[b]
        print(f"{b:>8}: restore {fmt(x['restore_s'])} s + open = {fmt(x['restore_and_open_s'])} s "
              f"({fmt(x['over_local_recovery'])} x local); Journal.open(empty, replica=) {fmt(x['auto_open_with_replica_s'])} s; "
              f"identical {all(y['identical'] for y in x['runs'])}")
    print(f"\n4. loss window (writer at {res['config']['loss_rate']} entries/s, SIGKILL at a random moment)")
    print(f"{'backend':>8} {'interval':>8} {'kills':>5} {'lost mean':>9} {'max':>5} {'s mean':>7} {'s max':>6}")
    for b, rows in res["loss"].items():
        for interval, x in rows.items():
            print(f"{b:>8} {interval:>8} {x['kills']:>5} {fmt(x['entries_lost_mean']):>9} {x['entries_lost_max']:>5} "
                  f"{fmt(x['seconds_lost_mean']):>7} {fmt(x['seconds_lost_max']):>6}")


def main(argv) -> int:
    args = parse_args(argv)
    if args.zygote:
        return zygote()
    if args.perf:
        return perf(args)
    import moto
    import obstore
    import torch

    from .replica_client import MotoProcess
    torch.set_num_threads(1)
    quick = args.quick
    repeats = 1 if quick else args.repeats
    steps = {"5ms": 60, "50ms": 10} if quick else {"5ms": 400, "50ms": 50}
    mib = 4 if quick else args.backlog_mib
    kills = 1 if quick else args.kills
    work = Workdir(args.dir or REPO / ".bench-tmp", "bench-replica-")
    rng = random.Random(14)
    results = {
        "benchmark": "replica",
        "machine": machine_info(work.root, ("replay/replica", "replay/journal.py", "replay/assembly.py", "replay/group.py",
                                            "eventlog"), moto=moto.__version__, obstore=obstore.__version__,
                                torch=torch.__version__),
        "config": {"quick": quick, "overhead_repeats": repeats, "overhead_steps": steps, "backlog_mib": mib,
                   "loss_kills_per_interval": kills, "loss_rate": args.rate, "loss_intervals": list(INTERVALS),
                   "torch_threads": 1, "durability": "group",
                   "server": "moto.server in a child process on 127.0.0.1",
                   "work": f"handler: `reps` rounds of tanh(x[{ROWS},{WIDTH}] @ W[{WIDTH},{WIDTH}]) calibrated "
                           "to the step time, then a whole-W update (1 MiB state, all chunks new per snapshot)"},
    }
    started = pc()
    server = MotoProcess()
    try:
        replicas = Replicas(work, server.endpoint)
        results["overhead"] = bench_overhead(work, replicas, {"5ms": 0.005, "50ms": 0.05}, steps, repeats)
        source = work.new("backlog")
        say(f"[backlog] writing {mib} MiB of log")
        results["backlog"] = write_backlog(source, mib)
        results["throughput"], urls = bench_throughput(work, replicas, source, 1 if quick else 2)
        results["restore"] = bench_restore(work, source, urls, 1 if quick else 3)
        results["loss"], results["loss_writer_other_output"] = bench_loss(work, replicas, kills, args.rate, rng, quick)
    finally:
        server.close()
        work.close()
    finish(results, args.json, started, pc())
    print_report(results)
    return 0


def perf(args) -> int:
    """`--perf`: issue 22's rows only (bench/_replica_perf.py), merged into the results file."""
    import torch

    from . import _replica_perf
    torch.set_num_threads(1)
    work = Workdir(args.dir or REPO / ".bench-tmp", "bench-replica-perf-")
    started = pc()
    try:
        res = {"machine": machine_info(work.root, ("replay/replica", "eventlog")),
               "config": {"rounds": args.rounds, "backlog_mib": args.backlog_mib, "memory_mib": args.memory_mib,
                          "torch_threads": 1, "replica": "file://"}}
        res.update(_replica_perf.run(work, args.rounds, args.backlog_mib, args.memory_mib))
    finally:
        work.close()
    res["elapsed_s"] = round(pc() - started, 1)
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    merged = json.loads(args.json.read_text()) if args.json.exists() else {"benchmark": "replica"}
    merged["issue22"] = res
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(merged, indent=2) + "\n")
    _replica_perf.print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
