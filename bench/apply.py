"""The cost of "same bytes live and on replay" on the apply path.

``Journal.apply`` encodes the payload once, appends those bytes, and hands the handler
``decode(those bytes)`` so it sees exactly what replay will. The alternative it replaced
handed the handler the caller's own objects (cheaper, but not what replay gives). This
measures, per payload kind, the time of one apply of a no-op handler in group mode:

- ``log``: a bare ``EventLog.append`` of the same envelope (the log's own cost);
- ``journal``: ``Journal.apply`` as shipped (encode once, append, decode for the handler);
- ``decode``: the decode step alone, the price of the guarantee.

Part 2, ``--steps``: the overhead of ``journal.apply`` around a compute step (issue 22).
A handler runs a ``torch.mm`` sized to take ``--step-ms`` (5 ms by default, one thread);
the bare loop calls that handler directly, the journal loop calls ``journal.apply``.
Each child process alternates a bare block and a journal block of ``--block`` steps
(one round); the overhead of a round is journal block time / bare block time - 1, and
the median and spread over rounds is reported per durability mode. With ``--baseline
TREE`` (a checkout such as /work/main) the same child runs against that tree's code in
alternation with this one, so before and after share the machine's load. Children run
a script given with ``-c`` that uses only the public API, so either tree can run it.

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

work, modes, step_ms, block, rounds = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
pc = time.perf_counter

def sized(n):
    return torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)

n = 64
while True:  # the matrix size whose mm takes step_ms here and now
    A, B, C = sized(n)
    t = time.thread_time()  # CPU time: on a loaded machine wall time would size the step to the load
    for _ in range(5):
        torch.mm(A, B, out=C)
    took = (time.thread_time() - t) / 5 * 1e3
    if took >= step_ms or n >= 4096:
        break
    n = int(n * max(1.05, min(2.0, (step_ms / max(took, 1e-3)) ** (1 / 3))))

ops = replay.Ops()

def step(state, *, seed):
    torch.mm(A, B, out=C)
    state["w"].add_(C[0, :4])

ops.op(step)
state = {"w": torch.zeros(4)}
journals = {m: replay.Journal.open(f"{work}/{m}", state=state, ops=ops, durability=m, snapshot=replay.Every(),
                                   keep_log=True) for m in modes}

cpu = time.process_time  # every thread of the process: the flusher's commits and fsyncs included

def bare(k):
    t, c = pc(), cpu()
    for i in range(k):
        step(state, seed=i)
    return pc() - t, cpu() - c

def journaled(j, k):
    t, c = pc(), cpu()
    for i in range(k):
        j.apply("step", seed=i)
    wall = pc() - t
    # The flusher's work for this block is charged to it: wait (idle, no flush that would
    # add a sync) until the window has made the block durable.
    for _ in range(100):
        if j.durable_index >= j.index:
            break
        time.sleep(0.005)
    return wall, cpu() - c

for m in modes:  # warm-up
    bare(block // 4 or 1); journaled(journals[m], block // 4 or 1)
out = {"matrix_n": n, "rounds": []}
for r in range(rounds):
    times = {}
    arms = ["bare", *modes]
    arms = arms[r % len(arms):] + arms[:r % len(arms)]
    for arm in arms:
        times[arm] = bare(block) if arm == "bare" else journaled(journals[arm], block)
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


def bench_steps(work: Workdir, trees: dict[str, str], modes: list[str], step_ms: float, block: int,
                rounds: int, runs: int) -> dict:
    """Per tree and mode: median and spread of per-round overheads (journal / bare - 1)."""
    kinds = ("wall", "cpu")
    per = {tree: {m: {k: [] for k in kinds} for m in modes} for tree in trees}
    load = []
    step_real = {tree: {k: [] for k in kinds} for tree in trees}
    for run in range(runs):
        order = list(trees) if run % 2 == 0 else list(trees)[::-1]
        for tree in order:
            load.append(round(os.getloadavg()[0], 2))
            got = _step_child(trees[tree], work.new(f"steps-{tree}"), modes, step_ms, block, rounds)
            for times in got["rounds"]:
                for x, kind in enumerate(kinds):
                    step_real[tree][kind].append(times["bare"][x] / block * 1e3)
                    for m in modes:
                        per[tree][m][kind].append(times[m][x] / times["bare"][x] - 1)
    out = {"step_ms_target": step_ms, "block_steps": block, "loadavg_1min_per_run": load, "trees": {},
           "note": "overhead = journal block / bare block - 1 per round; wall is what the loop waits, "
                   "cpu is the process's CPU time (all threads: the flusher's commits and fsyncs too), "
                   "the figure that a loaded machine disturbs least"}
    for tree, by_mode in per.items():
        row = {"tree": trees[tree],
               "bare_step_ms_median": {k: round(statistics.median(v), 3) for k, v in step_real[tree].items()}}
        for m, by_kind in by_mode.items():
            row[m] = {}
            for kind, ratios in by_kind.items():
                q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
                row[m][kind] = {"overhead_median_pct": round(statistics.median(ratios) * 100, 2),
                                "overhead_q1_pct": round(q[0] * 100, 2), "overhead_q3_pct": round(q[2] * 100, 2),
                                "rounds": len(ratios)}
        out["trees"][tree] = row
    return out


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
    parser.add_argument("--modes", default="group,sync", help="part 2: durability modes, comma-separated")
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
                for kind, r in row[m].items():
                    print(f"  {tree:<9} {m:<6} {kind:<5} {r['overhead_median_pct']:+7.2f}% median "
                          f"(q1 {r['overhead_q1_pct']:+.2f}%, q3 {r['overhead_q3_pct']:+.2f}%, {r['rounds']} rounds; "
                          f"bare step {row['bare_step_ms_median'][kind]} ms)")
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
