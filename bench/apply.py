"""The cost of "same bytes live and on replay" on the apply path.

``Journal.apply`` encodes the payload once, appends those bytes, and hands the handler
``decode(those bytes)`` so it sees exactly what replay will. The alternative it replaced
handed the handler the caller's own objects (cheaper, but not what replay gives). This
measures, per payload kind, the time of one apply of a no-op handler in group mode:

- ``log``: a bare ``EventLog.append`` of the same envelope (the log's own cost);
- ``journal``: ``Journal.apply`` as shipped (encode once, append, decode for the handler);
- ``decode``: the decode step alone, the price of the guarantee.

Part 2, ``--steps``: the overhead of ``journal.apply`` around a compute step (issue 22).
A handler runs a ``torch.mm`` sized to take ``--step-ms`` of CPU (5 ms by default, one
thread); the bare loop calls that handler directly, the journal loop calls
``journal.apply``. Each child process alternates a bare block and a journal block of
``--block`` steps (one round). The figure that decides is ``cpu_net``: the CPU time the
journal adds per step, on the caller's thread and on every other (the group flusher's
commits and fsyncs), over the handler's own CPU time per step. The handler times its own
thread CPU in both arms, and each arm's handler time is subtracted from that arm's CPU
before comparing, so the step's own variance cancels (on this shared machine one block's
mm takes several percent more or less CPU than the next, which swamped the plain ratios
``cpu`` = journal block CPU / bare block CPU - 1 and ``wall``, still reported). Note that
on the caller's thread the journal runs right after the step's mm, with its code and data
out of the CPU caches: that, not the warm per-call cost (``python -m bench apply``, part
1), is what a training loop pays. With ``--baseline TREE`` (a checkout such as
/work/main) the same child runs against that tree's code in alternation with this one, so
before and after share the machine's load. Children run a script given with ``-c`` that
uses only the public API, so either tree can run it.

Run: ``python -m bench apply [--n N] [--rounds R] [--steps [--baseline TREE]]``.
Results: bench/results/apply.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import replay
from eventlog import EventLog, decode_payload, encode_payload
from replay.envelope import wrap

from ._common import REPO, Workdir, finish, fmt, machine_info

PAYLOADS = {
    "scalars": lambda: {"lr": 0.1, "seed": 12345, "step": 7},
    "ids_256": lambda: {"ids": list(range(256)), "seed": 1},
    "tensor_64KiB": lambda: {"batch": torch.randn(16384)},
    "tensor_4MiB": lambda: {"batch": torch.randn(1 << 20)},
}


def _per_call_us(fn, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def _measure(work: Workdir, kind: str, n: int) -> dict:
    payload = PAYLOADS[kind]()
    envelope = wrap(1, payload)
    encoded = encode_payload(envelope)
    ops = replay.Ops()

    @ops.op
    def noop(state, **_):
        pass

    with EventLog.open(work.new(f"log-{kind}"), durability="group") as log:
        log_us = _per_call_us(lambda: log.append("noop", envelope), n)
    state = {"t": torch.zeros(1)}
    with replay.Journal.open(work.new(f"journal-{kind}"), state=state, ops=ops,
                             snapshot=replay.Every(), keep_log=True) as journal:
        journal_us = _per_call_us(lambda: journal.apply("noop", **payload), n)
    decode_us = _per_call_us(lambda: decode_payload(encoded), n)
    return {"payload_bytes": len(encoded), "log_append_us": round(log_us, 2),
            "journal_apply_us": round(journal_us, 2), "decode_us": round(decode_us, 2)}


STEP_CHILD = r"""
import json, sys, time
import torch
import replay
from replay.layout import log_dir
from eventlog.lmdbfile import last_txnid  # LMDB's transaction id, read from the file: commits since

work, modes, step_ms, block, rounds = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
pc, tt, cpu = time.perf_counter, time.thread_time, time.process_time

def sized(n):
    return torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)

n = 64
while True:  # the matrix size whose mm takes step_ms here and now
    A, B, C = sized(n)
    t = tt()  # CPU time: on a loaded machine wall time would size the step to the load
    for _ in range(5):
        torch.mm(A, B, out=C)
    took = (tt() - t) / 5 * 1e3
    if took >= step_ms or n >= 4096:
        break
    n = int(n * max(1.05, min(2.0, (step_ms / max(took, 1e-3)) ** (1 / 3))))

ops = replay.Ops()
inside = [0.0]  # the handler's own thread CPU, summed: what a step costs without any journal

def step(state, *, seed):
    t = tt()
    torch.mm(A, B, out=C)
    state["w"].add_(C[0, :4])
    inside[0] += tt() - t

ops.op(step)
state = {"w": torch.zeros(4)}
journals = {m: replay.Journal.open(f"{work}/{m}", state=state, ops=ops, durability=m, snapshot=replay.Every(),
                                   keep_log=True) for m in modes}

def timed(body, k):
    # wall, process CPU (every thread: the flusher's commits and fsyncs included), this
    # thread's CPU, and the handler's own CPU inside that
    inside[0] = 0.0
    t, c, m = pc(), cpu(), tt()
    body(k)
    return pc() - t, cpu() - c, tt() - m, inside[0]

def bare(k):
    for i in range(k):
        step(state, seed=i)

def journaled(j):
    def body(k):
        for i in range(k):
            j.apply("step", seed=i)
    return body

for m in modes:  # warm-up, past the rng check's first full comparisons of an op (replay/rng_check.py
    # FULL_CHECKS, 32): what a long job's steps cost; each of those first applies costs ~60 us more
    timed(bare, block // 4 or 1); timed(journaled(journals[m]), max(block // 4, 40))
out = {"matrix_n": n, "rounds": []}
logs = {m: log_dir(f"{work}/{m}") for m in modes}
for r in range(rounds):
    times = {}
    arms = ["bare", *modes]
    arms = arms[r % len(arms):] + arms[:r % len(arms)]
    txn = {m: last_txnid(logs[m]) for m in modes}
    for arm in arms:
        times[arm] = timed(bare, block) if arm == "bare" else timed(journaled(journals[arm]), block)
    times["commits"] = {m: last_txnid(logs[m]) - txn[m] for m in modes}
    out["rounds"].append(times)
for j in journals.values():
    j.close()
print("RESULT " + json.dumps(out))
"""


def _step_child(tree: str, work: Path, modes: list[str], step_ms: float, block: int, rounds: int) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    work.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", STEP_CHILD, str(work), ",".join(modes), str(step_ms), str(block),
                           str(rounds)], env=env, capture_output=True, text=True, timeout=1800)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"step child for {tree} failed: {done.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


KINDS = ("wall", "cpu", "cpu_net")
STEP_NOTE = (
    "Per round, one block of `block_steps` steps per arm (bare first or not in turn). wall, cpu: journal block / "
    "bare block - 1 (cpu = the process's CPU time, every thread: the flusher's commits and fsyncs too). "
    "cpu_net, the figure that decides: the CPU the journal adds per step, in every thread, over the handler's own "
    "CPU per step, where each arm's handler CPU (its thread CPU inside the handler, timed the same way in both "
    "arms) is subtracted from that arm's process CPU first. So the compute step's own variance, which the load of "
    "a shared machine makes several percent per block, cancels; the flusher's work is charged to the round that "
    "caused it (a commit of a journal block's last entries may run during the bare block after it, so the other "
    "threads' CPU of both blocks counts; the caller's is journal - bare). Meant for one mode at a time (--modes "
    "group): with two, one mode's flusher would be charged to the other too. commits_per_step: LMDB transactions per "
    "journal step in the round (the group flusher commits by the clock, so on a loaded machine, where a step takes "
    "longer in wall time, it commits more often per step); other_threads_us_per_commit: the flusher's CPU per "
    "commit. handler_slowdown: journal arm's handler CPU / bare arm's - 1 "
    "(a cache effect of the journal on the step itself would show here; it is noise-bound and not in cpu_net).")


def _round_figures(times: dict, mode: str, block: int) -> dict:
    """One round's overheads for `mode` (fractions) and its per-step figures (us)."""
    bw, bc, bt, bh = times["bare"]
    jw, jc, jt, jh = times[mode]
    handler_us = bh / block * 1e6
    # The caller's extra: each arm's own-thread CPU outside the handler, journal - bare.
    caller_us = ((jt - jh) - (bt - bh)) / block * 1e6
    # Other threads (the flusher) work only for the journal, but a commit of the journal
    # block's last entries may land in the next block, a bare one: both blocks' count.
    other_us = ((jc - jt) + (bc - bt)) / block * 1e6
    extra_us = caller_us + other_us
    commits = times.get("commits", {}).get(mode)  # LMDB transactions in the round (None: not counted)
    return {"wall": jw / bw - 1, "cpu": jc / bc - 1, "cpu_net": extra_us / handler_us,
            "extra_cpu_us": extra_us, "handler_us": handler_us, "caller_extra_us": caller_us,
            "other_threads_us": other_us, "handler_slowdown": jh / bh - 1,
            "commits_per_step": None if commits is None else commits / block,
            "other_threads_us_per_commit": other_us * block / commits if commits else None}


def _spread(values: list[float], scale: float = 1.0, digits: int = 2) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": round(statistics.median(values) * scale, digits), "q1": round(q[0] * scale, digits),
            "q3": round(q[2] * scale, digits), "rounds": len(values)}


def bench_steps(work: Workdir, trees: dict[str, str], modes: list[str], step_ms: float, block: int,
                rounds: int, runs: int) -> dict:
    """Per tree and mode: median and quartiles of per-round overheads (STEP_NOTE says which is which)."""
    figures = ("wall", "cpu", "cpu_net", "extra_cpu_us", "handler_us", "caller_extra_us", "other_threads_us",
               "handler_slowdown", "commits_per_step", "other_threads_us_per_commit")
    per = {tree: {m: {k: [] for k in figures} for m in modes} for tree in trees}
    load = []
    step_real = {tree: {k: [] for k in ("wall", "cpu")} for tree in trees}
    for run in range(runs):
        order = list(trees) if run % 2 == 0 else list(trees)[::-1]
        for tree in order:
            load.append(round(os.getloadavg()[0], 2))
            got = _step_child(trees[tree], work.new(f"steps-{tree}"), modes, step_ms, block, rounds)
            for times in got["rounds"]:
                step_real[tree]["wall"].append(times["bare"][0] / block * 1e3)
                step_real[tree]["cpu"].append(times["bare"][1] / block * 1e3)
                for m in modes:
                    for k, v in _round_figures(times, m, block).items():
                        if v is not None:
                            per[tree][m][k].append(v)
    out = {"step_ms_target": step_ms, "block_steps": block, "loadavg_1min_per_run": load, "trees": {},
           "note": STEP_NOTE}
    for tree, by_mode in per.items():
        row = {"tree": trees[tree],
               "bare_step_ms_median": {k: round(statistics.median(v), 3) for k, v in step_real[tree].items()}}
        for m, by in by_mode.items():
            row[m] = {}
            for kind in KINDS:
                s = _spread(by[kind], 100)
                row[m][kind] = {"overhead_median_pct": s["median"], "overhead_q1_pct": s["q1"],
                                "overhead_q3_pct": s["q3"], "rounds": s["rounds"]}
            row[m]["per_step_us"] = {k: _spread(by[k], 1, 1) for k in
                                     ("extra_cpu_us", "caller_extra_us", "other_threads_us", "handler_us")}
            row[m]["handler_slowdown_pct"] = _spread(by["handler_slowdown"], 100)
            if by["other_threads_us_per_commit"]:
                row[m]["commits_per_step"] = _spread(by["commits_per_step"], 1, 3)
                row[m]["other_threads_us_per_commit"] = _spread(by["other_threads_us_per_commit"], 1, 1)
        out["trees"][tree] = row
    return out


def say_step_rows(tree: str, mode: str, row: dict) -> None:
    """Print one tree's rows for `mode` (bench_steps' figures)."""
    for kind in KINDS:
        r = row[mode][kind]
        print(f"  {tree:<9} {mode:<6} {kind:<8} {r['overhead_median_pct']:+7.2f}% median (q1 {r['overhead_q1_pct']:+.2f}%, "
              f"q3 {r['overhead_q3_pct']:+.2f}%, {r['rounds']} rounds)")
    us = row[mode]["per_step_us"]
    print(f"  {tree:<9} {mode:<6} per step: journal adds {us['extra_cpu_us']['median']} us CPU (q1 "
          f"{us['extra_cpu_us']['q1']}, q3 {us['extra_cpu_us']['q3']}): caller {us['caller_extra_us']['median']}, other "
          f"threads {us['other_threads_us']['median']}; handler {us['handler_us']['median']} us, slowed "
          f"{row[mode]['handler_slowdown_pct']['median']:+.2f}%; bare step {row['bare_step_ms_median']} ms")
    if "commits_per_step" in row[mode]:
        print(f"  {tree:<9} {mode:<6} commits per step {row[mode]['commits_per_step']['median']} (the flusher's pace "
              f"follows wall time), other threads' CPU per commit {row[mode]['other_threads_us_per_commit']['median']} us")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench apply", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="applies per measurement (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--dir", default="/tmp/bench-apply")
    parser.add_argument("--steps", action="store_true", help="only part 2: apply overhead around a compute step")
    parser.add_argument("--baseline", default=None, help="part 2: another tree (e.g. /work/main) run alternately")
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--block", type=int, default=40, help="part 2: steps per block (a round = one block per arm)")
    parser.add_argument("--step-rounds", type=int, default=8, help="part 2: rounds per child process")
    parser.add_argument("--runs", type=int, default=2, help="part 2: child processes per tree")
    parser.add_argument("--modes", default="group", help="part 2: durability modes, comma-separated (cpu_net "
                        "is exact for one: see STEP_NOTE)")
    args = parser.parse_args(argv)
    started = time.time()
    work = Workdir(args.dir, "apply-")
    results = {"machine": machine_info(args.dir, ("eventlog", "replay"), torch=torch.__version__), "payloads": {}}
    if args.steps:
        trees = {"this": str(REPO)}
        if args.baseline:
            trees["baseline"] = str(Path(args.baseline).resolve())
        try:
            steps = bench_steps(work, trees, args.modes.split(","), args.step_ms, args.block, args.step_rounds, args.runs)
        finally:
            work.close()
        results = {"machine": results["machine"], "steps": steps}
        print(f"apply overhead around a {args.step_ms:g} ms compute step (load {steps['loadavg_1min_per_run']}):")
        for tree, row in steps["trees"].items():
            for m in args.modes.split(","):
                say_step_rows(tree, m, row)
        finish(results, REPO / "bench" / "results" / "apply_steps.json", started, time.time())
        return 0
    try:
        rounds = {kind: [] for kind in PAYLOADS}
        for _ in range(args.rounds):
            for kind in PAYLOADS:
                n = args.n if not kind.endswith("MiB") else max(50, args.n // 40)
                rounds[kind].append(_measure(work, kind, n))
        print(f"{'payload':<14} {'bytes':>10} {'log append us':>14} {'journal apply us':>17} "
              f"{'decode us':>10} {'decode share':>13}")
        for kind, runs in rounds.items():
            row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            row["decode_share_of_apply"] = round(row["decode_us"] / row["journal_apply_us"], 3)
            results["payloads"][kind] = row
            print(f"{kind:<14} {fmt(row['payload_bytes']):>10} {fmt(row['log_append_us']):>14} "
                  f"{fmt(row['journal_apply_us']):>17} {fmt(row['decode_us']):>10} {row['decode_share_of_apply']:>13.1%}")
    finally:
        work.close()
    finish(results, REPO / "bench" / "results" / "apply.json", started, time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
