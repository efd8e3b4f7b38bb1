"""Journal.apply in this tree against another commit of it: what a change costs on the hot path.

``bench apply`` measures one tree; a refactor of the apply path needs the same
measurement of the code before it, on the same loaded machine, at the same time. This
extracts `--baseline` (a commit; ``git archive`` of the packages) into a scratch
directory and, in interleaved rounds (the order of the two trees alternates each
round), runs one fresh process per tree that imports that tree's packages (PYTHONPATH)
and times ``Journal.apply`` of a no-op handler in group mode per payload kind: after a
warm-up, `--blocks` blocks of `--n` applies, the fastest block's per-call time kept
(the least disturbed by the other load on the machine). Each round gives a ratio per
kind (this tree / baseline); the report is the median ratio over rounds and its spread
(min, max), with the median per-call times and the load average around each round.
It also counts the Python-level calls per apply (sys.setprofile over 100 applies): a
count, not a time, so it compares the two apply paths however loaded the machine is.

Run: ``python -m bench apply_ab --baseline COMMIT [--rounds R] [--n N]``.
Results: bench/results/apply_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ._common import REPO, finish, machine_info

PACKAGES = ("eventlog", "snapshots", "replay", "torch_eventlog")
KINDS = ("scalars", "ids_256", "tensor_64KiB")

# Runs in a fresh interpreter with one tree first on sys.path; prints one JSON line.
# Only the public API, so the same text measures any commit.
_CHILD = r"""
import json, sys, tempfile, time
import torch, replay
kinds, n, blocks = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
payloads = {"scalars": lambda: {"lr": 0.1, "seed": 12345, "step": 7},
            "ids_256": lambda: {"ids": list(range(256)), "seed": 1},
            "tensor_64KiB": lambda: {"batch": torch.randn(16384)}}
ops = replay.Ops()

@ops.op
def noop(state, **_):
    pass

out = {"replay_file": replay.__file__, "us": {}, "calls": {}}
calls = [0]

def count(frame, event, arg):
    if event == "call":  # Python-level calls only: the call layers the apply path walks through
        calls[0] += 1

for kind in kinds:
    payload = payloads[kind]()
    with tempfile.TemporaryDirectory(dir=sys.argv[4]) as path:
        with replay.Journal.open(path, state={"t": torch.zeros(1)}, ops=ops, snapshot=replay.Every(),
                                 keep_log=True) as journal:
            for _ in range(min(n, 200)):
                journal.apply("noop", **payload)
            best = None
            for _ in range(blocks):
                started = time.perf_counter()
                for _ in range(n):
                    journal.apply("noop", **payload)
                per_call = (time.perf_counter() - started) / n * 1e6
                best = per_call if best is None else min(best, per_call)
            calls[0] = 0
            sys.setprofile(count)
            for _ in range(100):
                journal.apply("noop", **payload)
            sys.setprofile(None)
            out["calls"][kind] = calls[0] / 100
    out["us"][kind] = round(best, 3)
print(json.dumps(out))
"""


def _extract(commit: str, into: Path) -> str:
    """`commit`'s packages under `into`; the full commit id."""
    full = subprocess.run(["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", full, *PACKAGES], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tempfile.TemporaryFile() as tar_file:
        tar_file.write(archive)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file) as tar:
            tar.extractall(into, filter="data")
    return full


def _run(tree: Path, n: int, blocks: int, scratch: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-c", _CHILD, ",".join(KINDS), str(n), str(blocks), str(scratch)],
                          cwd=tree, env=env, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["replay_file"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the child imported {result['replay_file']}, not the tree {tree}")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench apply_ab", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare this tree against")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    # Many short blocks rather than a few long ones: on a loaded machine (load 11-18 on 2
    # cores) the fastest of 5 blocks of 1000 scalar applies ranged 24-141 us over rounds,
    # the fastest of 30 blocks of 200 stayed at 22-24 us in 13 of 18 runs.
    parser.add_argument("--n", type=int, default=200, help="applies per timed block (default 200)")
    parser.add_argument("--blocks", type=int, default=30, help="timed blocks per kind and process (default 30)")
    parser.add_argument("--dir", default="/tmp/bench-apply-ab")
    args = parser.parse_args(argv)
    started = time.time()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apply-ab-", dir=args.dir) as scratch:
        base_tree = Path(scratch) / "baseline"
        base_commit = _extract(args.baseline, base_tree)
        trees = {"this": REPO, "baseline": base_tree}
        results = {"machine": machine_info(args.dir, PACKAGES), "baseline_commit": base_commit,
                   "n": args.n, "blocks": args.blocks, "rounds": []}
        for r in range(args.rounds):
            order = ("baseline", "this") if r % 2 == 0 else ("this", "baseline")
            load = os.getloadavg()[0]
            row = {"order": list(order), "loadavg_1m_before": round(load, 2)}
            for name in order:
                measured = _run(trees[name], args.n, args.blocks, Path(scratch))
                row[name] = measured["us"]
                row[f"{name}_py_calls_per_apply"] = measured["calls"]
            row["ratio"] = {k: round(row["this"][k] / row["baseline"][k], 4) for k in KINDS}
            row["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            results["rounds"].append(row)
            print(f"round {r + 1}/{args.rounds} load {load:.1f}: "
                  + "  ".join(f"{k} {row['this'][k]:.1f}/{row['baseline'][k]:.1f} us" for k in KINDS), flush=True)
    summary = {}
    print(f"{'payload':<14} {'this us':>9} {'base us':>9} {'ratio (median)':>15} {'min':>7} {'max':>7} "
          f"{'py calls/apply this, base':>26}")
    for kind in KINDS:
        ratios = [row["ratio"][kind] for row in results["rounds"]]
        summary[kind] = {"this_us_median": statistics.median(row["this"][kind] for row in results["rounds"]),
                         "baseline_us_median": statistics.median(row["baseline"][kind] for row in results["rounds"]),
                         "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                         "ratio_max": max(ratios),
                         "this_py_calls_per_apply": results["rounds"][-1]["this_py_calls_per_apply"][kind],
                         "baseline_py_calls_per_apply": results["rounds"][-1]["baseline_py_calls_per_apply"][kind]}
        s = summary[kind]
        print(f"{kind:<14} {s['this_us_median']:>9.1f} {s['baseline_us_median']:>9.1f} {s['ratio_median']:>15.3f} "
              f"{s['ratio_min']:>7.3f} {s['ratio_max']:>7.3f} "
              f"{s['this_py_calls_per_apply']:>14.1f}, {s['baseline_py_calls_per_apply']:.1f}")
    results["summary"] = summary
    finish(results, REPO / "bench" / "results" / "apply_ab.json", started, time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
